"""Adopting a TCP socket a map is handed as a bare file descriptor.

The kernel takes ``bpf_map_update_elem(map, key, fd)`` for any TCP socket in
an allowed state (ESTABLISHED or LISTEN), wrapped or not. skmsg serves a
socket's data path itself, so a map update by an fd no :class:`SkStream` or
:class:`SkListener` wraps *adopts* the socket:

- it is served through a duplicate of the fd (``os.dup``), wrapped in an
  :class:`SkStream` (established) or :class:`SkListener` (listening), which
  ``sock_from(fd).owner`` gives back. From then on skmsg owns its data path:
  bytes redirected to it go out of it, its receive programs read it, so the
  application reads and writes through that object. The duplicate shares the
  socket's file status flags, so the fd becomes non-blocking;
- any other TCP socket (never connected, closed) gets a socket record in its
  real state, which the map then refuses with the kernel's ``EOPNOTSUPP``;
- the fd keeps naming that socket while the user holds it: closing it (or
  reusing the number for another socket) takes the adopted socket out of
  every map at the next map operation on it, and an adoption that never made
  it into a map (its update failed) is let go at the next adoption.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdsocket
import weakref

import trio

import skmsg_core as sk

from ._listener import SkListener
from ._proto import TCP_INFO, TCP_PROTO
from ._stream import SkStream, cookie_of

__all__ = ["adopt_fd"]

#: Adopted sockets, by the user's fd.
_adopted: dict[int, SkStream | SkListener | sk.Sock] = {}
#: The user's fd of each adopted socket.
_fd_of: weakref.WeakKeyDictionary[sk.Sock, int] = weakref.WeakKeyDictionary()


def _sk(obj: SkStream | SkListener | sk.Sock) -> sk.Sock:
    return obj if isinstance(obj, sk.Sock) else obj.sk


def adopt_fd(fd: int) -> sk.Sock | None:
    """The :class:`~skmsg_core.Sock` of the TCP socket ``fd`` names, adopted
    as the module says; ``None`` if ``fd`` is not a TCP socket (another
    plugin's). For ``skmsg_sock_from_fd``.

    Raises:
        OSError: the socket cannot be duplicated (``EMFILE``: out of fds).
    """
    _let_go_unused()
    try:
        probe = stdsocket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if probe.type != stdsocket.SOCK_STREAM or probe.family not in (
            stdsocket.AF_INET,
            stdsocket.AF_INET6,
        ):
            return None
        try:
            state = probe.getsockopt(stdsocket.IPPROTO_TCP, TCP_INFO, 8)[0]
        except OSError:  # not TCP (SCTP, MPTCP's subflows are TCP)
            return None
        family, proto, cookie = probe.family, probe.proto, cookie_of(probe)
    finally:
        probe.detach()
    old = _adopted.pop(fd, None)
    if old is not None:
        _close(old)
    if state not in (sk.TcpState.ESTABLISHED, sk.TcpState.LISTEN):
        record = sk.Sock(
            TCP_PROTO,
            family=family,
            type=stdsocket.SOCK_STREAM,
            protocol=stdsocket.IPPROTO_TCP,
            state=sk.TcpState(state),
            cookie=cookie,
        )
        _adopted[fd] = record
        _fd_of[record] = fd
        return record
    dup = os.dup(fd)
    try:
        raw = stdsocket.socket(family, stdsocket.SOCK_STREAM, proto, fileno=dup)
    except OSError:
        os.close(dup)
        raise
    sock = trio.socket.from_stdlib_socket(raw)
    owner: SkStream | SkListener
    owner = SkListener(sock) if state == sk.TcpState.LISTEN else SkStream(sock)
    owner.sk.register_fd(fd)  # the user's number finds it, as the kernel's would
    _adopted[fd] = owner
    _fd_of[owner.sk] = fd
    return owner.sk


def adopted_fd_alive(s: sk.Sock) -> bool:
    """Whether the user's fd an adopted socket came from still names it (not
    closed, not reused for another socket)."""
    fd = _fd_of.get(s)
    if fd is None or fd not in _adopted or _sk(_adopted[fd]) is not s:
        return True  # not adopted: nothing to check
    try:
        probe = stdsocket.socket(fileno=fd)
    except OSError:
        return False
    try:
        return cookie_of(probe) == s.cookie
    finally:
        probe.detach()


def let_go(s: sk.Sock) -> None:
    """The user's fd of an adopted socket is gone: close the duplicate."""
    fd = _fd_of.get(s)
    if fd is not None and fd in _adopted and _sk(_adopted[fd]) is s:
        _close(_adopted.pop(fd))


def _let_go_unused() -> None:
    for fd, obj in list(_adopted.items()):
        if _sk(obj).psock is None:
            del _adopted[fd]
            _close(obj)


def _close(obj: SkStream | SkListener | sk.Sock) -> None:
    if isinstance(obj, sk.Sock):
        obj.close()
        return
    obj.sk.close()
    sock = obj.socket
    try:
        sock.close()  # tells trio's I/O manager, inside a trio run
    except RuntimeError:  # outside any run: nothing to tell
        with contextlib.suppress(OSError):
            stdsocket.socket(fileno=sock.detach()).close()
    except OSError:
        pass
