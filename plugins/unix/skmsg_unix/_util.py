"""Small pieces of the Unix plugin: addresses, its send error, statistics, probes."""

from __future__ import annotations

import errno
import os
import socket as stdsocket
import struct
from typing import Any, TypeAlias

import attrs
import trio

import skmsg_core as sk

__all__ = [
    "SUN_PATH_MAX",
    "SendError",
    "UnixAddress",
    "UnixDatagramStats",
    "UnixStreamStats",
    "abstract",
    "cookie_of",
    "unix_address",
]

SO_COOKIE = getattr(stdsocket, "SO_COOKIE", 57)
#: ``sizeof(sun_path)``: the longest path or abstract name (its leading NUL included).
SUN_PATH_MAX = 108
#: What the plugin takes as an AF_UNIX address: a filesystem path (``str``,
#: ``bytes`` or ``os.PathLike``), or an abstract name (``bytes`` or ``str``
#: starting with a NUL; :func:`abstract` makes one).
UnixAddress: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}

#: Sockets adopted from a user's fd (a map update by an fd nobody wrapped), by
#: that fd: the maps hold them, as the kernel's do.
adopted: dict[int, Any] = {}


def abstract(name: str | bytes) -> bytes:
    """The abstract-namespace address ``name`` (``b"\\0" + name``): no file in
    the filesystem, gone when the last socket bound to it closes.

    Raises:
        TypeError: ``name`` is neither ``str`` nor ``bytes``.
        ValueError: ``name`` is empty.
    """
    if isinstance(name, str):
        name = name.encode()
    if not isinstance(name, bytes):
        raise TypeError(f"an abstract name is str or bytes, not {type(name).__name__}")
    if not name:
        raise ValueError("an abstract name cannot be empty (an empty address means autobind)")
    return b"\0" + name


def unix_address(address: object, what: str) -> str | bytes:
    """``address`` as the socket module takes it, checked.

    Raises:
        TypeError: not a path, ``bytes`` or ``os.PathLike`` (``what`` names the call).
        OSError(EINVAL): longer than ``sun_path`` (108 bytes), as the kernel refuses it.
    """
    if isinstance(address, os.PathLike):
        address = os.fspath(address)
    if isinstance(address, (bytearray, memoryview)):
        address = bytes(address)
    if not isinstance(address, (str, bytes)):
        raise TypeError(
            f"{what}: an AF_UNIX address is a path (str, bytes or os.PathLike) or an "
            f"abstract name (b'\\0name'), not {type(address).__name__}"
        )
    size = len(os.fsencode(address)) if isinstance(address, str) else len(address)
    if size > SUN_PATH_MAX:
        raise sk.kernel_error(
            errno.EINVAL,
            f"{what}: AF_UNIX address of {size} bytes is too long (at most {SUN_PATH_MAX})",
        )
    return address


#: The core's send error: ``sent`` (the kernel's return value) and
#: ``accepted``, of the errno's own class (``PermissionError`` for a DROP).
SendError = sk.SendError


@attrs.frozen
class UnixStreamStats:
    """What a Unix stream did: bytes through its socket, and its psock's
    counters while it is in a map."""

    bytes_sent: int
    bytes_received: int
    psock: sk.PsockStats | None


@attrs.frozen
class UnixDatagramStats:
    """What a Unix datagram socket did.

    ``datagrams_*``/``bytes_*``: through its own socket; ``drops``: datagrams
    that found its receive queue full (``sk.drops``); ``tx_drops``: datagrams a
    redirect from a datagram receive loop could not send out of it without
    waiting; ``queued``/``queued_bytes``: on its receive queue now; ``psock``:
    the psock's counters while it is in a map.
    """

    datagrams_sent: int
    bytes_sent: int
    datagrams_received: int
    bytes_received: int
    drops: int
    tx_drops: int
    queued: int
    queued_bytes: int
    psock: sk.PsockStats | None


def cookie_of(sock: stdsocket.socket) -> int:
    """The kernel's socket cookie (``SO_COOKIE``), or a fresh one where unsupported."""
    try:
        raw = sock.getsockopt(stdsocket.SOL_SOCKET, SO_COOKIE, 8)
    except OSError:
        return sk.next_cookie()
    return int(struct.unpack("=Q", raw)[0])


def peer_name(sock: stdsocket.socket) -> Any:
    """``getpeername()``, or ``None`` when not connected (an unnamed peer is ``""``)."""
    try:
        return sock.getpeername()
    except OSError:
        return None


def sock_name(sock: stdsocket.socket) -> Any:
    """``getsockname()``, or ``None`` when the socket cannot say."""
    try:
        return sock.getsockname()
    except OSError:
        return None


def is_unix(sock: stdsocket.socket, stype: int) -> bool:
    return sock.family == stdsocket.AF_UNIX and sock.type == stype


def closed_error(exc: OSError, what: str) -> trio.ClosedResourceError | None:
    """trio's error for an OS error that means the socket was closed under us."""
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError(f"this {what} was closed")
    return None


class Conflict:
    """Raise ``trio.BusyResourceError`` when two tasks use one side at once."""

    __slots__ = ("_held", "_msg")

    def __init__(self, msg: str) -> None:
        self._msg = msg
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._msg)
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False
