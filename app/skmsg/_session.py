"""One client of ``skmsg proxy``: its backend slots, its backend connections, and how it ends.

Theory of operation
-------------------
A client's policy sees a :class:`~._health.BackendMap` whose index ``i``
always holds a :class:`BackendSlot`: a socket that stands for "this client's
connection to backend ``i``", whether that connection exists yet or not. A
verdict redirects to a slot with ``sk_redirect_map(skb, backends, i, 0)`` as
to any socket; the runtime then writes the message out of the slot's egress
(:meth:`BackendSlot.egress_write`), which is :meth:`Session.write`:

1. the slot's connection is made if there is none (the backend must be up:
   see :mod:`._health`); while it is made the client's receive pump waits,
   so what is held is bounded (a read's worth of messages, and TCP flow
   control stops the client beyond that);
2. the bytes are written out of that connection (sealed for a TLS backend);
3. if the backend is down, cannot be connected, or its connection fails
   before the bytes are written, the messages are framed again and each is
   *judged again*: the verdict runs anew (the failed backend is down now, so
   the default policy picks another) and the message goes where it says. A
   message still not taken after as many tries as there are backends is
   *undeliverable*: its client is told (an HTTP client gets a 503, any other
   is closed) and it is counted (``no_backend``).

Each backend connection is in the proxy's ``upstreams`` map, whose reply
program sends what the backend answers to the client that owns the
connection, counting the replies (:class:`~._upstream.ReplyCounter`). A
connection that ends (the backend closed it, it broke, it timed out) leaves
its slot empty, so the next message routed there makes a new one; if it
ended *owing* its client a reply (a message was written and its reply did not
come), that client is told at once: its connection is closed, counted as
``backend_lost`` against that backend. A message written out cannot be sent
again elsewhere: the proxy cannot know whether the backend acted on it.

A session ends (:meth:`Session.end`) with one reason, counted in
``client_closed``: see :data:`~._stats.CLIENT_CLOSE_REASONS`. The proxy's
timeout sweep (:meth:`Session.sweep`) ends sessions and connections that
are idle or stalled.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

import skmsg_core as sk
import skmsg_tcp
from skmsg_core import describe_error
from skmsg_core.runtime import RateLimitedLog, escapes_boundary, log_event

from ._health import BackendMap
from ._parsers import FramingError
from ._upstream import (
    BackendConn,
    DialError,
    ReplyCounter,
    TrafficMarks,
    UpstreamStream,
    dial,
)

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["BackendSlot", "ReplyLane", "Session"]

log = logging.getLogger("skmsg")
limited_log = RateLimitedLog(log)

_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class _SlotProto(sk.SkProtoBase):
    """The protocol of backend slots: the kernel's rules for a connected TCP
    socket, and no operations to swap (a slot has no receive side)."""

    name = "backend slot"


SLOT_PROTO = _SlotProto()


class BackendSlot:
    """Index ``index`` of one client's :class:`~._health.BackendMap`: what a
    redirect to backend ``index`` reaches (see the module). ``conn``: the
    connection to the backend, while there is one; ``routed``: messages
    judged for this slot and not yet written (the verdict counts them, the
    write takes them)."""

    __slots__ = ("_session", "conn", "index", "routed", "sk")

    def __init__(self, session: Session, index: int, host: str, port: int) -> None:
        # weakly: the session holds its slots, and is freed when it closes
        self._session = weakref.ref(session)
        self.index = index
        self.conn: BackendConn | None = None
        self.routed = 0
        self.sk = sk.Sock(
            SLOT_PROTO,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            type=socket.SOCK_STREAM,
            protocol=socket.IPPROTO_TCP,
            state=sk.TcpState.ESTABLISHED,
            remote_addr=(host, port),
            owner=self,
        )

    @property
    def session(self) -> Session:
        """The session this slot belongs to.

        Raises:
            trio.ClosedResourceError: the session is gone (a write that raced
                its end).
        """
        session = self._session()
        if session is None:
            raise trio.ClosedResourceError("this backend slot's session is gone")
        return session

    def belongs_to(self, session: Session) -> bool:
        """Whether this is one of ``session``'s slots."""
        return self._session() is session

    def take_routed(self) -> int:
        """The messages judged for this slot since the last call."""
        n, self.routed = self.routed, 0
        return n

    # -- what the runtime calls on a redirect target ------------------------------------

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Write redirected messages to this client's connection to the backend
        (see :meth:`Session.write`). Never raises but cancellation."""
        await self.session.write(self, bufs, 0)

    # -- a redirected message's tail (skmsg_core.runtime.SpliceEndpoint) ----------------
    #
    # A message whose verdict declared its reads has its tail moved socket to
    # socket: into this slot's connection, made first if need be.

    def splice_fileno(self) -> int:
        """The connection's socket, to splice a message's tail into; -1 with no
        connection, or one that cannot take bytes that way (TLS)."""
        conn = self.conn
        return conn.stream.splice_fileno() if conn is not None else -1

    def spliced(self, received: int, sent: int) -> None:
        """Count bytes spliced into the connection as its own."""
        conn = self.conn
        if conn is not None:
            conn.stream.spliced(received, sent)

    async def egress_splice(self, move: Callable[[], Awaitable[None]]) -> bool:
        """Have ``move`` write one redirected message into the connection, made
        first if need be, under its write lock (see :meth:`Session.splice`).

        Raises:
            BaseException: whatever ``move`` raises.
        """
        return await self.session.splice(self, move)

    def abort(self, exc: BaseException) -> None:
        """A message spliced into the connection was cut short: it is in error
        for good (its end is handled as a reset). Never raises."""
        conn = self.conn
        if conn is not None:
            conn.stream.abort(exc)

    def rx_failed(self, exc: BaseException) -> None:
        """A slot has no receive side: nothing to do."""

    def rx_eof(self) -> None:
        """A slot has no receive side: nothing to do."""

    def wake_readers(self) -> None:
        """A slot has no readers: nothing to do."""

    def __repr__(self) -> str:
        session = self._session()
        return f"<BackendSlot {self.index} of {session.peer if session else '(gone)'}>"


class ReplyLane:
    """Where one backend connection's replies are redirected: they are written
    to the session's client one backend's *message* at a time. Replies from
    two backends, each arriving in pieces, would otherwise reach the client
    interleaved piece by piece, and the client would read neither (see
    :meth:`Session.write_reply`)."""

    __slots__ = ("conn", "session", "sk")

    def __init__(self, session: Session, conn: BackendConn) -> None:
        self.session = session
        self.conn = conn
        self.sk = sk.Sock(
            SLOT_PROTO,
            family=socket.AF_INET,
            type=socket.SOCK_STREAM,
            protocol=socket.IPPROTO_TCP,
            state=sk.TcpState.ESTABLISHED,
            owner=self,
        )

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Write replies to the client, through the session's lane.

        Raises:
            OSError, trio.BrokenResourceError, trio.ClosedResourceError: the
                client's write failed (the runtime counts the redirect's error).
        """
        await self.session.write_reply(self.conn, bufs)

    def rx_failed(self, exc: BaseException) -> None:
        """A lane has no receive side: nothing to do."""

    def rx_eof(self) -> None:
        """A lane has no receive side: nothing to do."""

    def wake_readers(self) -> None:
        """A lane has no readers: nothing to do."""

    def __repr__(self) -> str:
        return f"<ReplyLane of backend {self.conn.index} for {self.session.peer}>"


class Session:
    """Everything the proxy holds for one client: its stream, its
    :class:`~._health.BackendMap` of slots, its backend connections, and why
    it ended once it does (``ending``; ``done`` is set then)."""

    def __init__(self, proxy: Proxy, client: skmsg_tcp.SkStream, peer: str) -> None:
        self.proxy = proxy
        self.client = client
        self.peer = peer
        self.key = client.sk.cookie
        self.ending: str | None = None
        self.done = trio.Event()
        #: The scope serving the client, which :meth:`end` cancels.
        self.scope: trio.CancelScope | None = None
        #: Serving: in the clients map (or carried in user space), handshake done.
        self.running = False
        self.userspace = False
        self.client_eof = False
        self.finishing = False
        self.conns: list[BackendConn] = []
        self.skb = sk.SkBuff(client.sk)
        self.backends = BackendMap(proxy.health, name=f"backends of {peer}")
        self.slots = [
            BackendSlot(self, i, addr.host, addr.port) for i, addr in enumerate(proxy.backends)
        ]
        for slot in self.slots:
            self.backends.update(slot.index, slot.sk)
            proxy._index[slot.sk.cookie] = slot.index
        #: The connection whose reply message is partly written to the client:
        #: the others' replies wait for it to end (see :meth:`write_reply`).
        self.reply_owner: BackendConn | None = None
        #: Where replies wait for the lane, and :meth:`_finish` for the replies
        #: in it (each looks again when woken); made when first needed.
        self._lane_lot: trio.lowlevel.ParkingLot | None = None
        #: A reply message was cut short at the client: nothing more can follow it.
        self.replies_cut = False
        #: Replies in :meth:`write_reply` (waiting for the lane or being written):
        #: the session does not finish before they are written.
        self._in_lane = 0
        self.marks = TrafficMarks()  # the client's traffic, for the timeout sweep

    def over(self) -> bool:
        """Whether the session is ending (read afresh: it changes across awaits)."""
        return self.ending is not None

    def end(self, reason: str) -> None:
        """End the session with ``reason`` (the first reason given wins): the
        proxy closes the client and its backend connections."""
        if self.ending is None:
            self.ending = reason
            self.done.set()
            if self.scope is not None:
                self.scope.cancel()

    # -- writing to backends ----------------------------------------------------------------

    async def write(self, slot: BackendSlot, bufs: list[memoryview], attempt: int) -> None:
        """Write ``bufs`` (whole messages judged for ``slot``) out of the slot's
        connection, making it first if need be; what cannot be written is
        judged again (see the module). ``attempt``: how many times these
        messages were judged again already. Never raises but cancellation."""
        n = slot.take_routed()
        if self.ending is not None:
            return  # the client is being closed: nothing more goes out for it
        conn = slot.conn
        if conn is None:
            conn = await self._open(slot)
        if conn is not None:
            try:
                await conn.stream.egress_write(bufs, False)
            except _STREAM_ERRORS as exc:
                await self.end_conn(conn, "reset", failure=f"a write failed: {_reason(exc)}")
            else:
                conn.sent += n
                conn.unanswered = True
                return
        if not self.over():
            await self._reroute(bufs, attempt + 1, slot.index)

    async def splice(self, slot: BackendSlot, move: Callable[[], Awaitable[None]]) -> bool:
        """What :meth:`write` does for one message judged for ``slot``, when
        ``move`` writes it (its head and its tail, spliced from the client):
        the slot's connection is made if need be, and ``move`` runs under its
        write lock. False, having called nothing (the runtime then reads the
        message whole and writes it as any other): the session is ending, no
        connection could be made, or it cannot take spliced bytes (TLS).

        Raises:
            BaseException: whatever ``move`` raises (the message is cut short:
                the runtime aborts the connection).
        """
        if self.ending is not None:
            return False
        conn = slot.conn
        if conn is None:
            conn = await self._open(slot)
            if conn is None:
                return False
        n = slot.take_routed()
        if not await conn.stream.egress_splice(move):
            slot.routed += n  # written as any other message, and counted there
            return False
        conn.sent += n
        conn.unanswered = True
        return True

    async def write_reply(self, conn: BackendConn, bufs: list[memoryview]) -> None:
        """Write ``bufs``, the next bytes of ``conn``'s replies, to the client.
        While another connection's reply message is partly written, wait for
        its end: a client gets each reply message whole, whichever backends
        answer at once. A connection whose replies cannot be framed (its reply
        counter broke) is not held to it: its bytes go as they come. Once a
        connection ended in the middle of a reply message, nothing more is
        written (its client is closed: ``backend_lost``).

        The reply program has already counted ``bufs`` (``conn.counter``), so
        whether they end inside a message is known when they are written (for
        a client served in user space, whose replies the program passed up
        and this session reads, once none of them are left unread).

        Raises:
            OSError, trio.BrokenResourceError, trio.ClosedResourceError: the
                client's write failed, or a reply to it was cut short.
        """
        counter = conn.counter
        framed = counter is not None and not counter.broken
        self._in_lane += 1
        try:
            if framed:
                while self.reply_owner is not None and self.reply_owner is not conn:
                    await self._lane_wait()
            if self.replies_cut:
                raise trio.ClosedResourceError(
                    f"{self.peer}: a reply to this client was cut short; nothing can follow it")
            if framed:
                self.reply_owner = conn  # from before the write: it may wait on the client
            try:
                await self.client.egress_write(bufs, False)
            finally:
                # the counter has seen every byte judged; bytes passed up for a
                # user-space client and not yet written are judged too: the
                # written ones end a message only if none are left queued
                if not (framed and counter is not None and conn.ended is None
                        and (counter.mid_message or _queued(conn))):
                    self.release_replies(conn)
        finally:
            self._in_lane -= 1
            if not self._in_lane:
                self._lane_wake()

    def release_replies(self, conn: BackendConn) -> None:
        """``conn`` is at the end of a reply message, or ended: other
        connections' replies may go to the client again."""
        if self.reply_owner is conn:
            self.reply_owner = None
            self._lane_wake()

    async def _lane_wait(self) -> None:
        """Wait until the lane changes (a reply message ended, or the lane
        emptied); the caller looks again."""
        if self._lane_lot is None:
            self._lane_lot = trio.lowlevel.ParkingLot()
        await self._lane_lot.park()

    def _lane_wake(self) -> None:
        if self._lane_lot is not None:
            self._lane_lot.unpark_all()

    async def _reroute(self, bufs: list[memoryview], attempt: int, index: int) -> None:
        """Judge each message of ``bufs`` again and send it where the verdict
        says; give up on it (and the client) after as many tries as there are
        backends."""
        proxy = self.proxy
        msgs = self._split(bufs)
        c = proxy.counters
        c.rerouted += len(msgs)
        c.backends[index].rerouted += len(msgs)
        for msg in msgs:
            if self.over():
                return
            if attempt > len(self.slots):
                self._undeliverable(index)
                return
            target = proxy.rejudge(self, msg)
            if target is not None:
                await self.write(target, [msg], attempt)

    def _split(self, bufs: list[memoryview]) -> list[memoryview]:
        """The messages in ``bufs`` (whole messages, in order), framed again with
        the clients' parse program; one unit if that cannot be done."""
        data = bufs[0] if len(bufs) == 1 else memoryview(b"".join(bufs))
        parser = sk.StrParser(self.proxy.parser.func, max_msg_size=max(data.nbytes, 1))
        try:
            msgs = parser.feed(data)
        except sk.StrParserError:
            return [data]
        return msgs if msgs and not parser.pending else [data]

    def _undeliverable(self, index: int) -> None:
        proxy = self.proxy
        proxy.counters.no_backend += 1
        limited_log.event(
            ("no_backend",), "no_backend", client=self.peer,
            last_tried=str(proxy.backends[index]), closed="client",
        )
        self.end("no_backend")

    async def _open(self, slot: BackendSlot) -> BackendConn | None:
        """Connect the slot to its backend; ``None`` (counted, and held against
        the backend when it was its fault) when the backend is down or the
        connection cannot be made."""
        proxy = self.proxy
        i = slot.index
        health = proxy.health[i]
        bc = proxy.counters.backends[i]
        if not health.up():
            bc.unavailable += 1
            return None
        addr = proxy.backends[i]
        config = proxy.config
        made: list[BackendConn] = []

        def adopt(stream: UpstreamStream) -> None:
            made.append(self._adopt(i, stream))

        try:
            await dial(
                addr.host, addr.port,
                connect_timeout=config.connect_timeout,
                handshake_timeout=config.handshake_timeout,
                tls=config.tls, before_tls=adopt,
            )
        except DialError as exc:
            for conn in made:
                proxy.forget(conn, "reset")
            bc.connect_errors += 1
            bc.unavailable += 1
            proxy.counters.connect_errors += 1
            if exc.kind.endswith("_timeout"):
                bc.timeouts[exc.kind.removesuffix("_timeout")] += 1
            if exc.backends_fault:
                health.failed(str(exc))
            limited_log.event(
                ("connect", i, exc.kind), "backend_connect_failed", client=self.peer,
                backend=str(addr), kind=exc.kind, error=str(exc),
            )
            return None
        except BaseException:
            for conn in made:
                proxy.forget(conn, "client")
            raise
        conn = made[0]
        health.succeeded()
        bc.connects += 1
        log_event(log, logging.INFO, "backend_connected", client=self.peer, backend=str(addr),
                  index=i)
        if self.over():  # the client went while this connected
            await self.end_conn(conn, "client", failure=None)
            return None
        slot.conn = conn
        self.conns.append(conn)
        if conn.stream.on_end is None:  # see _adopt
            proxy.nursery.start_soon(self._watch, conn)
        return conn

    def _adopt(self, index: int, stream: UpstreamStream) -> BackendConn:
        """Make ``stream`` this session's connection to backend ``index``: in the
        proxy's books and in ``upstreams``, whose reply program serves it. The
        runtime's receive pump tells when it ends (``on_end``); a TLS
        connection (which its reader serves) or one whose replies go up to a
        user-space client is watched by a task of its own instead.

        Raises:
            DialError: it cannot enter the map (``local``: the map is full).
        """
        proxy = self.proxy
        counter = ReplyCounter(proxy.reply_parse, proxy.config.max_message_size)
        conn = BackendConn(stream, index, counter, self)
        conn.lane = ReplyLane(self, conn)
        tls = proxy.config.tls
        if not self.userspace and (tls is None or tls.client is None):
            stream.on_end = functools.partial(self._pump_ended, conn)
        try:
            proxy.adopt(conn)
        except OSError as exc:
            raise DialError("local", f"cannot enter the upstreams map: {exc.strerror}") from exc
        return conn

    def _pump_ended(self, conn: BackendConn, exc: BaseException | None) -> None:
        """The runtime's receive pump found ``conn`` at its end: EOF (``exc`` is
        None) or broken. Called from the pump: ends it in a task of its own."""
        if exc is None:
            reason, failure = "eof", None
        else:
            reason, failure = "reset", f"its connection broke: {_reason(exc)}"
        self.proxy.nursery.start_soon(self._end_later, conn, reason, failure)

    async def _end_later(self, conn: BackendConn, reason: str, failure: str | None) -> None:
        try:
            await self.end_conn(conn, reason, failure=failure)
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
            self.proxy._client_failed(self.peer, exc)
            self.end("error")

    # -- backend connections ending ---------------------------------------------------------

    async def _watch(self, conn: BackendConn) -> None:
        """Wait for ``conn`` to end (its bytes go to the client through the
        reply program; a user-space client's come up here), then end it. Never
        raises but cancellation."""
        reason, failure = "eof", None
        try:
            while True:
                data = await conn.stream.receive_some()
                if not data:
                    break
                if self.userspace:  # the reply program passed it up: the client is ours
                    try:  # through the lane, as the runtime's redirects go
                        await self.write_reply(conn, [memoryview(data)])
                    except _STREAM_ERRORS:
                        self.end("client_closed")
                    else:
                        self.check_finish()
        except trio.ClosedResourceError:
            return  # the proxy closed it: whoever did has ended it
        except trio.BrokenResourceError as exc:
            reason, failure = "reset", f"its connection broke: {_reason(exc)}"
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
            reason, failure = "reset", f"its connection raised {describe_error(exc)}"
        await self.end_conn(conn, reason, failure=failure)

    async def end_conn(self, conn: BackendConn, reason: str, *, failure: str | None) -> None:
        """End ``conn`` for ``reason`` (a :data:`~._stats.CONN_CLOSE_REASONS`
        name), once: its slot is emptied, ``failure`` (if given) is held against
        the backend's health, the connection is closed, and if it owed this
        client a reply the client is told (``backend_lost``)."""
        if conn.ended is not None:
            return
        conn.ended = reason
        owed = conn.owes()
        if self.reply_owner is conn:  # its reply message is cut short at the client
            self.replies_cut = True
            self.release_replies(conn)
        if conn in self.conns:
            self.conns.remove(conn)
        slot = self.slots[conn.index]
        if slot.conn is conn:
            slot.conn = None
        proxy = self.proxy
        proxy.forget(conn, reason)
        if failure is not None:
            proxy.health[conn.index].failed(failure)
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()
        if owed and reason != "client" and self.ending is None:
            proxy.counters.backends[conn.index].backend_lost += 1
            limited_log.event(
                ("backend_lost", conn.index, reason), "backend_lost", client=self.peer,
                backend=str(proxy.backends[conn.index]), index=conn.index, reason=reason,
                closed="client",
            )
            self.end("backend_lost")
            return
        self.check_finish()

    def release(self) -> None:
        """Let go of the parts of a session that is closed (its client, its
        connections and its slots closed). Its connections and reply lanes
        name the session, and a slot's socket its slot: closing the slots'
        sockets (which lets go of their owners) and dropping the connections
        lets reference counting free a client's objects when it closes,
        instead of leaving them in cycles for the garbage collector, whose
        full collections come rarely in a busy proxy. The slots stay (a slot
        names its session weakly): a connection made as the session closed
        still finds its slot to end in."""
        for slot in self.slots:
            slot.sk.close()
        self.conns.clear()

    def check_finish(self) -> None:
        """After the client's EOF: once no connection owes it a reply (each
        counting its replies; one that does not must close first), the session
        ends (``done``) when the replies already sent are written."""
        if not self.client_eof or self.ending is not None or self.finishing:
            return
        for conn in self.conns:
            if not conn.counts_replies or conn.owes():
                return
            psock = conn.stream.sk.psock
            if psock is not None and psock.ingress_bytes:
                return  # replies for a user-space client still to be sent on
        self.finishing = True
        self.proxy.nursery.start_soon(self._finish)

    async def _finish(self) -> None:
        try:
            while self._in_lane:  # replies counted, still to be written
                await self._lane_wait()
            await self.client.flush_writes()
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
        self.end("done")

    # -- the client ---------------------------------------------------------------------------

    async def from_client(self, in_map: bool) -> None:
        """Serve the client's receive side until it ends: EOF is passed on to
        every backend connection (half-close); an error ends the session."""
        client = self.client
        try:
            if in_map:
                while await client.receive_some():
                    pass  # SK_PASS without a redirect: delivered to the proxy, discarded
            else:
                await self.proxy._carry_in_user_space(self)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, sk.StrParserError):
                await self.parse_failed(cause)
            else:
                log_event(log, logging.INFO, "client_broken", client=self.peer,
                          error=str(cause or exc))
                self.end("client_closed")
            return
        except sk.StrParserError as exc:
            await self.parse_failed(exc)
            return
        except trio.ClosedResourceError:
            self.end("client_closed")
            return
        self.client_eof = True
        for conn in list(self.conns):
            with contextlib.suppress(*_STREAM_ERRORS):
                await conn.stream.send_eof()
        self.check_finish()

    async def parse_failed(self, cause: sk.StrParserError) -> None:
        """The client's stream could not be framed: a message over
        ``--max-message-size`` (``too_large``; an HTTP client is answered 413)
        or bytes the framing refuses (``parse_error``; an HTTP client is told
        why). Ends the session."""
        proxy = self.proxy
        framing = proxy.framing
        refused = cause.__cause__
        limit = proxy.config.max_message_size
        too_large = cause.errno == errno.EMSGSIZE or (
            isinstance(refused, FramingError) and refused.status == 413
        )
        if too_large:
            proxy.counters.too_large += 1
            if not isinstance(refused, FramingError):
                refused = FramingError(
                    f"message over the proxy's limit of {limit} bytes", 413
                )
            limited_log.event(
                ("too_large",), "message_too_large", client=self.peer, error=str(refused),
                limit=limit, closed="client",
            )
        else:
            proxy.counters.parse_errors += 1
            if isinstance(refused, FramingError):
                log_event(log, logging.WARNING, "parse_error", client=self.peer,
                          framing=framing.name, error=str(refused))
            else:
                log_event(log, logging.WARNING, "parse_error", client=self.peer,
                          error=str(cause))
        if isinstance(refused, FramingError) and framing.refuse is not None:
            with trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
                await self.client.send_all(framing.refuse(refused))
        self.end("too_large" if too_large else "parse_error")

    async def tell_unavailable(self) -> None:
        """An HTTP client whose message no backend could take gets a 503 (when
        no earlier reply is still owed to it, so the 503 answers that message)."""
        unavailable = self.proxy.framing.unavailable
        if unavailable is None or any(c.owes() for c in self.conns):
            return
        with trio.move_on_after(1), contextlib.suppress(*_STREAM_ERRORS):
            await self.client.send_all(unavailable("no backend could take the request"))

    # -- timeouts ---------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        """End what timed out: the client when it read nothing for the write
        timeout or moved no byte for the idle timeout (while no reply is owed
        to it); each backend connection that read nothing for the write
        timeout, owes a reply for the idle timeout, or moved nothing for it.
        Called by the proxy every fraction of a timeout."""
        if self.ending is not None or not self.running:
            return
        proxy = self.proxy
        config = proxy.config
        if self.marks.look(self.client, now) >= config.write_timeout:
            proxy.counters.timeouts["write"] += 1
            limited_log.event(
                ("timeout", "client write"), "timeout", client=self.peer, kind="write",
                seconds=config.write_timeout, closed="client",
            )
            self.end("write_timeout")
            return
        for conn in list(self.conns):
            await self._sweep_conn(conn, now)
            if self.over():
                return
        if now - self.marks.active >= config.idle_timeout and not any(c.owes() for c in self.conns):
            proxy.counters.timeouts["idle"] += 1
            log_event(log, logging.INFO, "timeout", client=self.peer, kind="idle",
                      seconds=config.idle_timeout, closed="client")
            self.end("idle")

    async def _sweep_conn(self, conn: BackendConn, now: float) -> None:
        config = self.proxy.config
        bc = self.proxy.counters.backends[conn.index]
        if conn.marks.look(conn.stream, now) >= config.write_timeout:
            bc.timeouts["write"] += 1
            await self.end_conn(
                conn, "write_timeout",
                failure=f"it read nothing for {config.write_timeout:g}s (--write-timeout)",
            )
            return
        if now - conn.marks.active >= config.idle_timeout:
            if conn.owes():
                bc.timeouts["response"] += 1
                await self.end_conn(
                    conn, "response_timeout",
                    failure=f"no reply for {config.idle_timeout:g}s (--idle-timeout)",
                )
            else:
                await self.end_conn(conn, "idle", failure=None)


def _queued(conn: BackendConn) -> bool:
    """Whether replies on ``conn`` were judged (passed up, for a user-space
    client) and not yet taken to be written."""
    psock = conn.stream.sk.psock
    return psock is not None and psock.ingress_bytes > 0


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    return describe_error(cause or exc)
