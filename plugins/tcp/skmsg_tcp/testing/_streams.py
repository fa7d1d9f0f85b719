"""Real loopback TCP streams and a running test server, for tests of skmsg programs.

Theory of operation
-------------------
Everything here is real: sockets on the loopback interface, the TCP plugin's
:class:`skmsg_tcp.SkStream`, and the runtime's receive pumps. Nothing is
mocked, so a test that passes here passes on the wire.

:func:`open_test_server` is ``trio.serve_tcp`` on ``127.0.0.1:0`` with one
addition: each accepted stream is put into a socket map *before* its handler
runs, so the programs attached to that map are copied into the stream's psock
(programs reach a socket only when it is inserted; see
``docs/kernel-differences.md``). Its tasks run in a nursery inside the
``async with`` block, so a handler's failure surfaces there instead of being
logged and lost.

Receive programs need a running runtime (:func:`skmsg_core.runtime.open_runtime`);
both the server and the conformance check use the current one, or open their
own for the length of the block when there is none.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, TypeAlias

import attrs
import trio
import trio.testing

import skmsg_core as sk
from skmsg_core.testing import aclose_all, clog_both_ways, ensure_runtime

from .._listener import SkListener, open_tcp_listeners, open_tcp_stream
from .._stream import SkStream

__all__ = [
    "Handler",
    "ProgramLike",
    "TestServer",
    "clog_tcp_pair",
    "echo",
    "open_test_server",
    "tcp_stream_pair",
]

#: What a server hands each accepted connection to.
Handler: TypeAlias = Callable[[SkStream], Awaitable[object]]
#: A program as a map's ``attach`` takes it: a loaded Program or a plain function.
ProgramLike: TypeAlias = sk.Program | Callable[[Any], Any]


async def tcp_stream_pair(host: str = "127.0.0.1") -> tuple[SkStream, SkStream]:
    """A connected pair of real TCP streams on ``host``: ``(client, server)``.

    ``client`` came from :func:`skmsg_tcp.open_tcp_stream`, ``server`` is the
    listener's accepted side of that very connection (a connection from anyone
    else is closed and skipped). Neither is in a map. Streams built inside an
    open runtime use it for receive programs. The caller closes both.

    Raises:
        OSError: ``host`` cannot be bound or connected to.

    Cancellation closes whatever was opened so far; nothing leaks.
    """
    listeners = await open_tcp_listeners(0, host=host)
    try:
        listener = listeners[0]
        port = listener.socket.getsockname()[1]
        client = await open_tcp_stream(host, port)
        try:
            while True:
                server = await listener.accept()
                if server.sk.remote_addr == client.sk.local_addr:
                    return client, server
                await trio.aclose_forcefully(server)
        except BaseException:
            await trio.aclose_forcefully(client)
            raise
    finally:
        await aclose_all(listeners)


async def clog_tcp_pair(left: SkStream, right: SkStream) -> None:
    """Clog a connected pair both ways, as trio's "clogged stream" tests want:
    afterwards ``send_all`` on either side blocks until the other side receives.

    Shrinks the socket buffers (and the ingress queue of a stream already in a
    map, so its receive pump stops reading soon), then writes below any program
    until the writes have blocked twice in a row with every task idle, one way
    then the other, and again until neither way takes a byte more: filling one
    way can let the other move again (a receive pump that reads on, the
    peer's acknowledgments). Clog a pair *after* putting it into maps.

    Raises:
        OSError: a socket option could not be set, or the connection failed.
    """
    for s in (left, right):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        psock = s.sk.psock
        if psock is not None:
            psock.rcvbuf = 4096
    chunk = b"x" * 4096
    await clog_both_ways(lambda: left.socket.send(chunk), lambda: right.socket.send(chunk))


async def echo(stream: SkStream) -> None:
    """The default test-server handler: send back what arrives, then EOF.

    A send the stream's SK_MSG program drops (``PermissionError``, counted in the
    psock's statistics) is skipped and echoing goes on; a broken or closed
    connection ends the echo quietly. Nothing else is caught.
    """
    try:
        while data := await stream.receive_some():
            with contextlib.suppress(PermissionError):
                await stream.send_all(data)
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


@attrs.define(eq=False)
class TestServer:
    """A running test server (build one with :func:`open_test_server`).

    ``sockmap`` holds every accepted stream that is still open (a closed stream
    leaves its maps); ``streams`` lists every accepted stream in accept order,
    closed ones included; ``host`` and ``port`` are where it listens.
    """

    __test__ = False  # not a pytest test class

    sockmap: sk.SockMapBase
    listener: SkListener
    host: str
    port: int
    streams: list[SkStream] = attrs.field(factory=list, init=False)
    _by_peer: dict[Hashable, SkStream] = attrs.field(factory=dict, init=False, repr=False)
    _clients: list[SkStream] = attrs.field(factory=list, init=False, repr=False)
    _accepted: trio.lowlevel.ParkingLot = attrs.field(
        factory=trio.lowlevel.ParkingLot, init=False, repr=False
    )

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on."""
        return self.host, self.port

    async def connect(self) -> SkStream:
        """Open a client stream to the server and return it once the server's side
        of the connection is in :attr:`sockmap` (its programs installed) and its
        handler is about to run.

        The client is not in any map. It is closed when the server stops, or
        earlier by the caller.

        Raises:
            OSError: the connection failed.

        Cancellation closes the client; the server side, if accepted, stays
        with its handler.
        """
        client = await open_tcp_stream(self.host, self.port)
        self._clients.append(client)
        try:
            while client.sk.local_addr not in self._by_peer:
                await self._accepted.park()
        except BaseException:
            await trio.aclose_forcefully(client)
            raise
        return client

    def peer(self, client: SkStream) -> SkStream:
        """The server's side of ``client``'s connection.

        Raises:
            KeyError: the server has not accepted that connection (yet).
        """
        try:
            return self._by_peer[client.sk.local_addr]
        except KeyError:
            raise KeyError(f"{self} has not accepted {client!r}") from None

    def key_of(self, stream: SkStream) -> Hashable:
        """The key the server put ``stream`` (a server side) under in :attr:`sockmap`.

        Raises:
            KeyError: ``stream`` is not in the map (never was, or closed since).
        """
        for key, s in self.sockmap.items():
            if s is stream.sk:
                found: Hashable = key
                return found
        raise KeyError(f"{stream!r} is not in {self.sockmap.name}")

    def _key_for(self, stream: SkStream) -> Hashable:
        if isinstance(self.sockmap, sk.SockMap):
            for index in range(self.sockmap.max_entries):
                if index not in self.sockmap:
                    return index
            return self.sockmap.max_entries  # the update fails with E2BIG, as it should
        peer: Hashable = stream.sk.remote_addr
        return peer

    async def _serve_one(self, handler: Handler, stream: SkStream) -> None:
        try:
            self.streams.append(stream)
            self.sockmap.update(self._key_for(stream), stream)
            self._by_peer[stream.sk.remote_addr] = stream
            self._accepted.unpark_all()
            await handler(stream)
        finally:
            await trio.aclose_forcefully(stream)

    async def _close_clients(self) -> None:
        await aclose_all(self._clients)

    def __repr__(self) -> str:
        return f"<TestServer {self.host}:{self.port} {self.sockmap!r}>"


_SLOTS: tuple[tuple[str, sk.BpfAttachType], ...] = (
    ("msg_verdict", sk.SK_MSG_VERDICT),
    ("stream_parser", sk.SK_SKB_STREAM_PARSER),
    ("stream_verdict", sk.SK_SKB_STREAM_VERDICT),
    ("skb_verdict", sk.SK_SKB_VERDICT),
)


@contextlib.asynccontextmanager
async def open_test_server(
    handler: Handler | None = None,
    *,
    msg_verdict: ProgramLike | None = None,
    stream_parser: ProgramLike | None = None,
    stream_verdict: ProgramLike | None = None,
    skb_verdict: ProgramLike | None = None,
    sockmap: sk.SockMapBase | None = None,
    max_entries: int = 64,
    host: str = "127.0.0.1",
) -> AsyncIterator[TestServer]:
    """Run a TCP test server on ``host`` (an ephemeral port) for the block.

    Each accepted connection becomes an :class:`skmsg_tcp.SkStream`, is put into
    the server's socket map, and then handed to ``handler`` (default
    :func:`echo`); the stream is closed when its handler returns.

    The programs given are attached to the map, in the kernel's attach types:
    ``msg_verdict`` (SK_MSG_VERDICT, runs on every ``send_all``),
    ``stream_parser`` and ``stream_verdict`` (SK_SKB_STREAM_PARSER /
    SK_SKB_STREAM_VERDICT: frame received bytes, then a verdict per message),
    ``skb_verdict`` (SK_SKB_VERDICT: a verdict per chunk read). They are
    attached before the server accepts anything, so every connection runs them.

    ``sockmap`` puts accepted streams into the caller's map (a ``SockMap`` at the
    lowest free index, a ``SockHash`` under the peer's address tuple); the
    programs given are attached to it, and the caller closes it. Without it the
    server makes a ``SockMap(max_entries=max_entries)`` and closes it on exit.

    Receive programs use the current runtime; with none, one is opened for the
    block. On exit the handlers are cancelled, every accepted stream and every
    client from :meth:`TestServer.connect` is closed, then the listener.

    Raises:
        OSError: the programs cannot be attached (their map's errno), or the
            listener cannot be bound.
        BaseExceptionGroup: raised on leaving the block when a server task
            failed: a handler raised, or an accepted stream could not enter the
            map (``OSError(E2BIG)`` when it is full, for instance). The body is
            cancelled when that happens. An exception from the body itself comes
            out unwrapped.
    """
    own_map = sockmap is None
    smap = sk.SockMap(max_entries=max_entries) if sockmap is None else sockmap
    try:
        given = {
            "msg_verdict": msg_verdict,
            "stream_parser": stream_parser,
            "stream_verdict": stream_verdict,
            "skb_verdict": skb_verdict,
        }
        for name, attach_type in _SLOTS:
            prog = given[name]
            if prog is not None:
                smap.attach(prog, attach_type)
        run = handler if handler is not None else echo
        body_error: BaseException | None = None
        async with ensure_runtime(), trio.open_nursery() as nursery:
            listener, *extra = await open_tcp_listeners(0, host=host)
            await aclose_all(extra)  # a name with several addresses: serve the first
            bound = listener.socket.getsockname()
            server = TestServer(smap, listener, str(bound[0]), int(bound[1]))
            await nursery.start(_accept_loop, server, run)
            try:
                yield server
            except BaseException as exc:
                body_error = exc
            finally:
                nursery.cancel_scope.cancel()
                await server._close_clients()
        if body_error is not None:
            raise body_error
    finally:
        if own_map:
            smap.close()


async def _accept_loop(
    server: TestServer,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept until cancelled, each connection served in its own task."""
    async with server.listener, trio.open_nursery() as handlers:
        task_status.started()
        while True:
            stream = await server.listener.accept()
            handlers.start_soon(server._serve_one, handler, stream)
