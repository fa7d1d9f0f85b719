"""Small pieces of the UDP plugin: its error, its statistics, socket probes."""

from __future__ import annotations

import select
import socket as stdsocket
import struct
from typing import Any

import attrs

import skmsg_core as sk

__all__ = ["SO_COOKIE", "SendError", "UdpStats", "cookie_of"]

SO_COOKIE = getattr(stdsocket, "SO_COOKIE", 57)


#: A datagram ``send``/``sendto`` the SK_MSG program ended: a DROP (a
#: ``PermissionError``, EACCES) or a redirect whose target failed (a
#: ``BrokenPipeError``, EPIPE). Nothing of the datagram was sent (``sent`` and
#: ``accepted`` are 0).
SendError = sk.SendError


@attrs.frozen
class UdpStats:
    """What a UDP socket did.

    ``datagrams_*``/``bytes_*``: through its own transport; ``drops``: datagrams
    that found its receive queue full (``sk.drops``); ``tx_drops``: datagrams a
    redirect could not send out of it without waiting; ``queued``/
    ``queued_bytes``: on its receive queue now; ``psock``: the psock's counters
    while it is in a map.
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


def _is_udp(sock: stdsocket.socket) -> bool:
    return (
        sock.family in (stdsocket.AF_INET, stdsocket.AF_INET6)
        and sock.type == stdsocket.SOCK_DGRAM
        and sock.proto in (0, stdsocket.IPPROTO_UDP)
    )


def _name(get: Any) -> tuple[Any, ...] | None:
    try:
        addr = get()
    except OSError:
        return None
    return tuple(addr) if isinstance(addr, tuple) else None


def _writable_now(fd: int) -> bool:
    try:
        _, w, _ = select.select([], [fd], [], 0)
    except (OSError, ValueError):
        return False
    return bool(w)
