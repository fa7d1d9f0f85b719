"""Listening TCP sockets that can sit in maps, and trio-shaped helpers around them.

A listener in a map is a valid map entry but never a redirect target (the
kernel's ``sock_map_redirect_allowed``); its accepted children are plain
streams with no psock.
"""

from __future__ import annotations

import errno
import socket as stdsocket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import skmsg_core as sk

from ._proto import TCP_PROTO
from ._stream import SkStream, cookie_of

__all__ = ["SkListener", "open_tcp_listeners", "open_tcp_stream", "serve_tcp"]

_IGNORABLE_ACCEPT = {
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
}


class SkListener(trio.abc.Listener[SkStream]):
    """A listening TCP socket (``sk.state`` LISTEN) accepting :class:`SkStream`."""

    def __init__(self, socket: trio.socket.SocketType) -> None:
        if not isinstance(socket, trio.socket.SocketType):
            raise TypeError("SkListener requires a trio socket object")
        if socket.type != stdsocket.SOCK_STREAM:
            raise ValueError("SkListener requires a SOCK_STREAM socket")
        if not socket.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ACCEPTCONN):
            raise ValueError("SkListener requires a listening socket")
        self.socket = socket
        self.sk = sk.Sock(
            TCP_PROTO,
            family=socket.family,
            type=stdsocket.SOCK_STREAM,
            protocol=stdsocket.IPPROTO_TCP,
            state=sk.TcpState.LISTEN,
            local_addr=tuple(socket.getsockname()),
            cookie=cookie_of(socket),
            owner=self,
        )
        self.sk.register_fd(socket.fileno())
        self._inbox: trio.MemoryReceiveChannel[SkStream] | None = None
        sk.plugins().sock_created(self.sk)

    async def accept(self) -> SkStream:
        """Accept a connection as an :class:`SkStream` (no psock is inherited).

        In a reuseport group (:func:`open_reuseport_group`), the next connection
        the group's program chose for this listener.

        Raises:
            trio.ClosedResourceError: the listener (or its group) was closed.
            OSError: an unexpected accept error.
        """
        if self._inbox is not None:
            try:
                return await self._inbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise trio.ClosedResourceError("the reuseport group is closed") from None
        return await self.accept_socket()

    async def accept_socket(self) -> SkStream:
        """Accept straight from this listener's own socket, below any group."""
        while True:
            try:
                sock, _ = await self.socket.accept()
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    raise trio.ClosedResourceError from None
                if exc.errno not in _IGNORABLE_ACCEPT:
                    raise
            else:
                return SkStream(sock)

    def accept_nowait(self) -> SkStream:
        """Accept a connection that is waiting now, without a checkpoint, as an
        :class:`SkStream`: for a server that takes a batch of connections per
        wake-up (:meth:`wait_acceptable`) instead of one per scheduler pass.
        Connections that failed before they were accepted (reset, aborted) are
        skipped, as :meth:`accept` skips them.

        Raises:
            trio.WouldBlock: no connection is waiting.
            trio.ClosedResourceError: the listener was closed.
            OSError: an accept error a server must handle, above all running
                out of file descriptors (``EMFILE``, ``ENFILE``) or memory
                (``ENOBUFS``, ``ENOMEM``): the connection stays queued.
        """
        raw = getattr(self.socket, "_sock", None)
        if not isinstance(raw, stdsocket.socket):
            raise trio.WouldBlock
        while True:
            try:
                sock, _ = raw.accept()
            except BlockingIOError:
                raise trio.WouldBlock from None
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    raise trio.ClosedResourceError from None
                if exc.errno not in _IGNORABLE_ACCEPT:
                    raise
            else:
                return SkStream(trio.socket.from_stdlib_socket(sock))

    async def wait_acceptable(self) -> None:
        """Wait until a connection is waiting to be accepted (the listening socket
        is readable); then :meth:`accept_nowait` takes it.

        Raises:
            trio.ClosedResourceError: the listener was closed.
        """
        if self.socket.fileno() == -1:
            raise trio.ClosedResourceError("the listener was closed")
        await trio.lowlevel.wait_readable(self.socket)

    def backlog(self) -> tuple[int, int] | None:
        """Connections waiting in the accept queue, and the queue's limit (what
        ``ss -lt`` shows as Recv-Q and Send-Q), or ``None`` where the kernel
        does not tell (``TCP_INFO`` of a listening socket)."""
        try:
            info = self.socket.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_INFO, 104)
        except (OSError, AttributeError):
            return None
        if len(info) < 32:
            return None
        waiting, limit = struct.unpack_from("=II", info, 24)  # tcpi_unacked, tcpi_sacked
        return int(waiting), int(limit)

    async def aclose(self) -> None:
        """Close: the listener leaves every map, then the socket closes."""
        self.sk.close()
        self.socket.close()
        await trio.lowlevel.checkpoint()

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self.socket.fileno()

    def __repr__(self) -> str:
        return f"<SkListener {self.sk.describe()}>"


async def open_tcp_stream(host: str | bytes, port: int, **kwargs: Any) -> SkStream:
    """Connect like ``trio.open_tcp_stream`` (happy eyeballs and all) and return
    an :class:`SkStream`.

    Raises:
        OSError: the connection failed (as ``trio.open_tcp_stream``).
    """
    plain = await trio.open_tcp_stream(host, port, **kwargs)
    return SkStream(plain.socket)


async def open_tcp_listeners(
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    reuseport: bool = False,
) -> list[SkListener]:
    """Listen like ``trio.open_tcp_listeners``; ``reuseport=True`` sets
    ``SO_REUSEPORT`` so several processes can share the port.

    Raises:
        OSError: the address is taken or cannot be bound.
    """
    if not reuseport:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
        return [SkListener(listener.socket) for listener in listeners]
    out: list[SkListener] = []
    infos = await trio.socket.getaddrinfo(
        host, port, type=stdsocket.SOCK_STREAM, flags=stdsocket.AI_PASSIVE
    )
    for family, type_, proto, _, addr in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
            sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
            if family == stdsocket.AF_INET6:
                sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 1)
            await sock.bind(addr)
            sock.listen(backlog or 0xFFFF)
        except OSError:
            sock.close()
            for listener in out:
                listener.socket.close()
            raise
        out.append(SkListener(sock))
    return out


async def serve_tcp(
    handler: Callable[[SkStream], Awaitable[object]],
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[SkListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve like ``trio.serve_tcp``, handing each connection to ``handler`` as
    an :class:`SkStream`; ``task_status.started`` gets the listeners."""
    listeners = await open_tcp_listeners(port, host=host, backlog=backlog)
    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )
