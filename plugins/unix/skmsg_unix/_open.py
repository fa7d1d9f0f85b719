"""Making Unix sockets: connecting, listening, serving, pairs, and adopting a bare fd."""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdsocket
import stat
from collections.abc import Awaitable, Callable

import trio

import skmsg_core as sk

from ._dgram import UnixDatagramSocket
from ._proto import UNIX_STREAM_PROTO
from ._stream import UnixStream
from ._util import (
    UnixAddress,
    adopted,
    closed_error,
    cookie_of,
    peer_name,
    sock_name,
    unix_address,
)

__all__ = [
    "UnixListener",
    "adopt_fd",
    "open_unix_datagram_socket",
    "open_unix_listeners",
    "open_unix_stream",
    "serve_unix",
    "unix_dgram_pair",
    "unix_stream_pair",
]


async def open_unix_stream(address: UnixAddress) -> UnixStream:
    """Connect to the listening Unix socket at ``address`` (a path, or an
    abstract name from :func:`abstract`) and return a :class:`UnixStream`.

    Raises:
        TypeError: ``address`` is not an AF_UNIX address.
        OSError: the connect failed (``ENOENT``: no such path; ``ECONNREFUSED``:
            nobody listens there; ``EINVAL``: too long).

    Cancellation closes the half-made socket.
    """
    addr = unix_address(address, "open_unix_stream")
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        await sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return UnixStream(sock)


class UnixListener(trio.abc.Listener[UnixStream]):
    """A listening AF_UNIX stream socket accepting :class:`UnixStream`.

    Its ``sk`` (``unix-stream``, LISTEN) is what a map sees: as in the kernel,
    a listening Unix socket cannot enter a map (``EOPNOTSUPP``); the streams it
    accepts can.

    Raises (constructor):
        TypeError: ``sock`` is not a socket object.
        ValueError: ``sock`` is not a listening AF_UNIX SOCK_STREAM socket.
    """

    def __init__(
        self, sock: trio.socket.SocketType | stdsocket.socket, *, unlink_on_close: bool = False
    ) -> None:
        if isinstance(sock, stdsocket.socket):
            sock = trio.socket.from_stdlib_socket(sock)
        if not isinstance(sock, trio.socket.SocketType):
            raise TypeError(f"UnixListener requires a socket object, not {type(sock).__name__}")
        if sock.family != stdsocket.AF_UNIX or sock.type != stdsocket.SOCK_STREAM:
            raise ValueError(f"UnixListener requires an AF_UNIX SOCK_STREAM socket, not {sock!r}")
        if not sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ACCEPTCONN):
            raise ValueError("UnixListener requires a listening socket")
        self.socket = sock
        name = sock.getsockname()
        self._path: str | bytes | None = None
        self._inode: tuple[int, int] | None = None
        if unlink_on_close and isinstance(name, (str, bytes)) and name and name[:1] not in (
            "\0",
            b"\0",
        ):
            with contextlib.suppress(OSError):
                st = os.stat(name)
                self._path, self._inode = name, (st.st_dev, st.st_ino)
        raw = stdsocket.socket(fileno=sock.fileno())
        try:
            cookie = cookie_of(raw)
        finally:
            raw.detach()
        self.sk = sk.Sock(
            UNIX_STREAM_PROTO,
            family=stdsocket.AF_UNIX,
            type=stdsocket.SOCK_STREAM,
            protocol=0,
            state=sk.TcpState.LISTEN,
            local_addr=name,
            cookie=cookie,
            owner=self,
        )
        self.sk.register_fd(sock.fileno())
        sk.plugins().sock_created(self.sk)

    async def accept(self) -> UnixStream:
        """Accept a connection as a :class:`UnixStream` (in no map).

        Raises:
            trio.ClosedResourceError: the listener was closed.
            OSError: an accept error (``EMFILE`` ...).
        """
        while True:
            try:
                sock, _ = await self.socket.accept()
            except OSError as exc:
                closed = closed_error(exc, "listener")
                if closed is not None:
                    raise closed from None
                if exc.errno != errno.ECONNABORTED:
                    raise
            else:
                return UnixStream(sock)

    async def aclose(self) -> None:
        """Close: the socket closes, and, when it was made with
        ``unlink_on_close`` (as :func:`open_unix_listeners` does), its path is
        removed if it is still this socket's file. Idempotent."""
        self.sk.close()
        if self.socket.fileno() != -1:
            self.socket.close()
            if self._path is not None and self._inode is not None:
                with contextlib.suppress(OSError):
                    st = os.stat(self._path)
                    if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._inode:
                        os.unlink(self._path)
        await trio.lowlevel.checkpoint()

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self.socket.fileno()

    def __repr__(self) -> str:
        return f"<UnixListener {self.sk.describe()}>"


async def open_unix_listeners(
    address: UnixAddress, *, backlog: int | None = None, mode: int | None = None
) -> list[UnixListener]:
    """Listen on ``address`` (a path, or an abstract name), as
    ``trio.open_tcp_listeners`` does for TCP: a list of one listener. A path
    must not exist yet (an existing file is never removed: ``EADDRINUSE``);
    the listener removes it when it closes. ``mode``: the path's permission
    bits (``chmod``), if given.

    Raises:
        TypeError: ``address`` is not an AF_UNIX address.
        OSError: the bind failed (``EADDRINUSE``, ``ENOENT`` for a missing
            directory, ``EACCES`` ...).
    """
    addr = unix_address(address, "open_unix_listeners")
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        await sock.bind(addr)
        if mode is not None and isinstance(addr, (str, bytes)) and addr[:1] not in ("\0", b"\0"):
            os.chmod(addr, mode)
        sock.listen(backlog if backlog is not None else 0xFFFF)
        return [UnixListener(sock, unlink_on_close=True)]
    except BaseException:
        sock.close()
        raise


async def serve_unix(
    handler: Callable[[UnixStream], Awaitable[object]],
    address: UnixAddress,
    *,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[UnixListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve like ``trio.serve_tcp`` on a Unix address, handing each connection
    to ``handler`` as a :class:`UnixStream`; ``task_status.started`` gets the
    listeners. Runs until cancelled; the path is removed when it ends.

    Raises:
        OSError: as :func:`open_unix_listeners`.
    """
    listeners = await open_unix_listeners(address, backlog=backlog)
    await trio.serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


async def unix_stream_pair() -> tuple[UnixStream, UnixStream]:
    """A connected pair of :class:`UnixStream` (``socketpair``): the Unix
    counterpart of ``tcp_stream_pair``, and what the plugin's conformance
    check runs on. Neither is in a map; the caller closes both."""
    a, b = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    await trio.lowlevel.checkpoint()
    return UnixStream(a), UnixStream(b)


async def unix_dgram_pair() -> tuple[UnixDatagramSocket, UnixDatagramSocket]:
    """A connected pair of :class:`UnixDatagramSocket` (``socketpair``), unnamed:
    each one's ``send`` reaches the other. The caller closes both."""
    a, b = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    await trio.lowlevel.checkpoint()
    return UnixDatagramSocket(a), UnixDatagramSocket(b)


async def open_unix_datagram_socket(
    local_address: UnixAddress | None = None, remote_address: UnixAddress | None = None
) -> UnixDatagramSocket:
    """A new :class:`UnixDatagramSocket`, bound to ``local_address`` and
    connected to ``remote_address`` when given.

    Raises:
        TypeError: an address that is not an AF_UNIX address.
        OSError: the bind or connect failed.
    """
    sock = UnixDatagramSocket(stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM))
    try:
        if local_address is not None:
            await sock.bind(local_address)
        if remote_address is not None:
            await sock.connect(remote_address)
    except BaseException:
        await sock.aclose()
        raise
    return sock


def adopt_fd(fd: int) -> sk.Sock | None:
    """The :class:`skmsg_core.Sock` of an AF_UNIX socket the user holds only as
    an fd, for a map update by fd (``skmsg_sock_from_fd``); ``None`` if ``fd``
    is not an AF_UNIX stream or datagram socket.

    A connected stream or any datagram socket is served through a duplicate of
    ``fd`` (its blocking mode untouched) as a :class:`UnixStream` or
    :class:`UnixDatagramSocket` (``sk.owner``: what reads bytes the verdict
    passed) and kept alive while it sits in maps; closing ``fd`` takes it out
    of every map at the next map operation on it. A stream that is not
    connected (unconnected, bound, listening) gets a bare ``Sock`` that the
    map refuses (``EOPNOTSUPP``), as the kernel does. A socket adopted for an
    update that then failed is let go at the next adoption.
    """
    for other in [s for s in adopted.values() if s.sk.psock is None]:
        other._close_adopted()
    try:
        probe = stdsocket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if probe.family != stdsocket.AF_UNIX:
            return None
        stype = probe.type
        if stype not in (stdsocket.SOCK_STREAM, stdsocket.SOCK_DGRAM):
            return None  # SOCK_SEQPACKET: no sockmap support in the kernel either
        if stype == stdsocket.SOCK_STREAM and peer_name(probe) is None:
            listening = probe.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ACCEPTCONN)
            return sk.Sock(
                UNIX_STREAM_PROTO,
                family=stdsocket.AF_UNIX,
                type=stdsocket.SOCK_STREAM,
                protocol=0,
                state=sk.TcpState.LISTEN if listening else sk.TcpState.CLOSE,
                local_addr=sock_name(probe),
                cookie=cookie_of(probe),
            )
    finally:
        probe.detach()
    old = adopted.pop(fd, None)
    if old is not None:
        old._close_now()
    dup = os.dup(fd)
    try:
        raw = stdsocket.socket(stdsocket.AF_UNIX, stype, 0, fileno=dup)
    except OSError:
        os.close(dup)
        raise
    obj: UnixStream | UnixDatagramSocket
    if stype == stdsocket.SOCK_STREAM:
        obj = UnixStream(raw, _adopted_fd=fd)
    else:
        obj = UnixDatagramSocket(raw, _adopted_fd=fd)
    adopted[fd] = obj
    return obj.sk
