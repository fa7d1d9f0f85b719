"""Connections to backends for ``skmsg proxy``: dialling, and counting replies.

Dialling (:func:`dial`) is a TCP connect bounded by ``--connect-timeout``,
then, for ``--backend-tls``, a TLS handshake bounded by
``--handshake-timeout``. A failure is a :class:`DialError` saying whose it
was: the backend's (refused, unreachable, timed out, a bad handshake: it
counts against the backend's health) or this process's (out of file
descriptors: retried, with a short back-off, until the connect timeout, and
never held against the backend).

Counting replies (:class:`ReplyCounter`) is how the proxy knows whether a
backend connection owes its client an answer: the proxy frames a backend's
replies with the clients' framing, one reply per message sent, as the
embedded echo backends and HTTP/1.x servers answer, and counts them without
keeping them (the bytes themselves go straight to the client). A connection
owes replies while fewer came than messages were written to it. Replies the
framing cannot frame (a backend that answers in another format) turn the
counter off for that connection; it then owes a reply while no byte came
back since the last message was written to it.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import math
import os
import select
import socket as stdsocket
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import trio

import skmsg_core as sk
import skmsg_tcp
import skmsg_tls

from ._tls import TlsOptions

__all__ = [
    "LOCAL_ERRNOS",
    "BackendConn",
    "DialError",
    "ReplyCounter",
    "TrafficMarks",
    "UpstreamStream",
    "dial",
    "literal_address",
]

#: Errors that say this process, not the backend, is out of something.
LOCAL_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
    if hasattr(errno, name)
)


class DialError(Exception):
    """A backend connection could not be made.

    ``kind`` is ``"connect"`` (refused, unreachable, reset), ``"connect_timeout"``,
    ``"handshake"`` (TLS failed), ``"handshake_timeout"``, or ``"local"`` (this
    process ran out of file descriptors or memory: not the backend's fault).
    The message says why in a few words.
    """

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind

    @property
    def backends_fault(self) -> bool:
        """Whether it counts against the backend's health."""
        return self.kind != "local"


async def dial(
    host: str,
    port: int,
    *,
    connect_timeout: float,
    handshake_timeout: float,
    tls: TlsOptions | None = None,
    before_tls: Callable[[UpstreamStream], None] | None = None,
) -> UpstreamStream:
    """Connect to ``host:port`` and return the stream; with ``tls`` (its
    ``client`` context set) shake hands as a TLS client after
    ``before_tls(stream)`` ran (the kernel's order: a socket enters its map,
    then TLS starts). Out of file descriptors, it retries until the connect
    timeout (50 ms, doubling to 0.8 s, between tries).

    Raises:
        DialError: see the class; the stream, if one was made, is closed.

    Cancellation closes what was made.
    """
    deadline = trio.current_time() + connect_timeout
    stream = await _connect(host, port, deadline)
    try:
        if before_tls is not None:
            before_tls(stream)
        if tls is not None and tls.client is not None:
            name = tls.backend_hostname or host
            try:
                with trio.fail_after(handshake_timeout):
                    await skmsg_tls.start_tls(stream, tls.client, server_hostname=name)
            except trio.TooSlowError:
                raise DialError(
                    "handshake_timeout", f"TLS handshake took over {handshake_timeout:g}s"
                ) from None
            except (OSError, ssl.SSLError, trio.BrokenResourceError,
                    trio.ClosedResourceError) as exc:
                raise DialError("handshake", f"TLS handshake failed: {_tls_reason(exc)}") from exc
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return stream


@functools.lru_cache(maxsize=256)
def literal_address(host: str, port: int) -> tuple[int, tuple[str, int]] | None:
    """``(family, sockaddr)`` for an IP address literal (no lookup needed), else None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = stdsocket.AF_INET6 if ip.version == 6 else stdsocket.AF_INET
    return family, (host, port)


class UpstreamStream(skmsg_tcp.SkStream):
    """A backend connection's stream: an :class:`~skmsg_tcp.SkStream` that also
    tells ``on_end`` (once) when its receive side ends, EOF (``None``) or an
    error (the exception), as the runtime's receive pump finds it. Nobody has
    to wait in ``receive_some`` to learn it."""

    on_end: Callable[[BaseException | None], None] | None = None

    def rx_eof(self) -> None:
        super().rx_eof()
        self._ended(None)

    def rx_failed(self, exc: BaseException) -> None:
        super().rx_failed(exc)
        self._ended(exc)

    def _ended(self, exc: BaseException | None) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end(exc)

    async def aclose(self) -> None:
        """Close the stream; ``on_end`` is not told (whoever closes it knows),
        and is let go (it names the stream's session: no cycle kept)."""
        self.on_end = None
        await super().aclose()


async def _connect(host: str, port: int, deadline: float) -> UpstreamStream:
    """Connect to ``host:port`` before ``deadline`` (see :func:`dial`). Only its
    waits (name lookup, the handshake, back-off) are bounded by a deadline
    scope: a connection made at once (loopback) enters none.

    Raises:
        DialError: the kinds ``connect``, ``local`` and ``connect_timeout``.
    """
    pause = 0.05
    try:
        literal = literal_address(host, port)
        if literal is not None:
            family, addr = literal
            infos: list[tuple[Any, ...]] = [
                (family, stdsocket.SOCK_STREAM, stdsocket.IPPROTO_TCP, "", addr)
            ]
        else:
            with trio.move_on_at(deadline):
                infos = list(
                    await trio.socket.getaddrinfo(host, port, type=stdsocket.SOCK_STREAM)
                )
            if trio.current_time() >= deadline:
                raise _timed_out()
        last: OSError | None = None
        await trio.lowlevel.checkpoint_if_cancelled()
        for family, type_, proto, _, sockaddr in infos:
            while True:
                try:
                    # non-blocking from the start: trio's socket sets it once more
                    raw = stdsocket.socket(family, type_ | _SOCK_NONBLOCK, proto)
                except OSError as exc:
                    if exc.errno not in LOCAL_ERRNOS:
                        raise
                    if trio.current_time() + pause >= deadline:
                        raise DialError("local", why(exc)) from exc
                    await trio.sleep(pause)
                    pause = min(pause * 2, 0.8)
                    continue
                break
            try:
                await _connect_raw(raw, sockaddr, deadline)
                sock = trio.socket.from_stdlib_socket(raw)
            except OSError as exc:
                raw.close()
                if exc.errno in LOCAL_ERRNOS:
                    raise DialError("local", why(exc)) from exc
                last = exc
                continue
            except BaseException:
                raw.close()
                raise
            try:
                return UpstreamStream(sock)
            except BaseException:
                sock.close()
                raise
        raise DialError("connect", why(last) if last else "no address")
    except OSError as exc:  # getaddrinfo, socket()
        raise DialError("local" if exc.errno in LOCAL_ERRNOS else "connect", why(exc)) from exc


def _timed_out() -> DialError:
    return DialError("connect_timeout", "no answer (timed out)")


_SOCK_NONBLOCK: int = getattr(stdsocket, "SOCK_NONBLOCK", 0)
_poller = select.poll()


async def _connect_raw(raw: stdsocket.socket, sockaddr: tuple[Any, ...], deadline: float) -> None:
    """Connect the stdlib socket ``raw`` without blocking. A connection that is
    made at once (on loopback the handshake is done inside ``connect``) costs
    no wait for the socket to become writable: it is looked at first.

    Raises:
        OSError: the connection failed (refused, unreachable, ...).
        DialError: ``connect_timeout``, not made before ``deadline``.
    """
    if not _SOCK_NONBLOCK:
        raw.setblocking(False)
    err = raw.connect_ex(sockaddr)
    if err in (errno.EINPROGRESS, errno.EAGAIN):
        _poller.register(raw, select.POLLOUT)
        try:
            ready = bool(_poller.poll(0))
        finally:
            _poller.unregister(raw)
        if not ready:
            with trio.move_on_at(deadline) as scope:
                await trio.lowlevel.wait_writable(raw)
            if scope.cancelled_caught:
                raise _timed_out()
        err = raw.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def why(exc: BaseException) -> str:
    """A short reason for a connect failure: ``connection refused (ECONNREFUSED)``."""
    if isinstance(exc, stdsocket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{os.strerror(exc.errno).lower()} ({name})"
    return str(exc) or type(exc).__name__


def _tls_reason(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    return str(cause or exc) or type(exc).__name__


class ReplyCounter:
    """Counts the messages in a backend's reply stream, framed by ``parse`` (a
    parse program: the length of the next message from its start, 0 for more
    bytes), without keeping their bytes: only a message's first bytes are
    held, until ``parse`` can tell its length; the rest is skipped.

    A message longer than ``limit`` bytes whose length is still unknown, or a
    ``parse`` that raises or returns no length, *breaks* the counter
    (:attr:`broken`): it counts nothing more.
    """

    __slots__ = ("_acc", "_ctx", "_lp", "_parse", "_skip", "broken", "limit")

    def __init__(self, parse: Callable[[sk.SkBuff], int], limit: int) -> None:
        self._parse = parse
        self._lp = parse if isinstance(parse, sk.LengthPrefixParser) else None
        self._ctx = sk.SkBuff()
        self._acc = bytearray()
        self._skip = 0
        self.limit = limit
        self.broken = False

    @property
    def mid_message(self) -> bool:
        """Whether the bytes fed so far end inside a message (not between two)."""
        return bool(self._skip or self._acc)

    def feed(self, data: memoryview) -> int:
        """Count the messages ``data`` completes (the next bytes of the stream).
        Never raises (a ``parse`` failure breaks the counter; but
        ``KeyboardInterrupt`` and a program's run-time budget, which go up)."""
        if self.broken:
            return 0
        n = 0
        size = data.nbytes
        off = 0
        if self._skip:
            k = min(self._skip, size)
            self._skip -= k
            off = k
            if self._skip:
                return 0
            n = 1
        if off >= size:
            return n
        if self._acc:
            self._acc += data[off:]
            view = memoryview(bytes(self._acc))
            self._acc = bytearray()
        else:
            view = data[off:] if off else data
        try:
            return n + self._scan(view)
        except (KeyboardInterrupt, sk.ProgramTimeout):
            self.broken = True
            raise
        except Exception:
            self.broken = True
            return n

    def _scan(self, view: memoryview) -> int:
        """Count whole messages in ``view``, which starts at a message; keep the
        state for what is left over."""
        n = 0
        off = 0
        size = view.nbytes
        lp = self._lp
        while off < size:
            left = size - off
            if lp is not None:
                if left < lp.size:
                    length = 0
                else:
                    length = lp.size + lp.unpack_from(view, off)[0]
            else:
                length = self._parse(self._ctx.reset(view[off:] if off else view))
                if type(length) is not int or length < 0:
                    raise ValueError(f"parse returned {sk.describe_value(length)}")
            if length == 0:
                if left > self.limit:
                    raise ValueError("a reply's length is not known after the limit")
                self._acc = bytearray(view[off:])
                return n
            if length > left:
                self._skip = length - left
                return n
            n += 1
            off += length
        return n


@attrs.define
class TrafficMarks:
    """What the proxy's timeout sweep keeps of one stream: when bytes last
    moved (``active``) and the byte count then (``progress``), and since when
    a write in progress has taken no byte (``stall_since``, at
    ``stall_sent`` bytes sent; -1: no write in progress)."""

    active: float = attrs.field(factory=trio.current_time)
    progress: int = 0
    stall_since: float = math.inf
    stall_sent: int = -1

    def look(self, stream: Any, now: float) -> float:
        """Bring the marks up to date from ``stream``'s byte counters
        (``bytes_sent``, ``bytes_received``, ``write_in_progress``) at ``now``;
        return how long a write in progress has taken no byte (0.0 when none
        is, or it just moved)."""
        sent = stream.bytes_sent
        progress = sent + stream.bytes_received
        if progress != self.progress:
            self.progress, self.active = progress, now
        if not stream.write_in_progress:
            self.stall_sent = -1
            return 0.0
        if sent != self.stall_sent:
            self.stall_sent, self.stall_since = sent, now
            return 0.0
        return now - self.stall_since


@attrs.define(eq=False)
class BackendConn:
    """One client's connection to one backend: its stream, what was written to
    it and what came back.

    ``sent``: messages written; ``answered``: replies counted (see
    :class:`ReplyCounter`); ``unanswered``: a message was written and no reply
    byte came since (the test used when the counter is off); ``ended``: why
    it ended (a :data:`~._stats.CONN_CLOSE_REASONS` name), once it has.
    ``marks``: its traffic, as the proxy's timeout sweep keeps it.
    """

    stream: UpstreamStream
    index: int
    counter: ReplyCounter | None
    #: The :class:`~._session.Session` it serves.
    session: Any
    sent: int = 0
    answered: int = 0
    unanswered: bool = False
    ended: str | None = None
    marks: TrafficMarks = attrs.field(factory=TrafficMarks)
    #: Where its replies are redirected (a :class:`~._session.ReplyLane`).
    lane: Any = None

    def owes(self) -> bool:
        """Whether a message written to it may still be waiting for its reply."""
        counter = self.counter
        if counter is not None and not counter.broken:
            return self.sent > self.answered
        return self.unanswered

    @property
    def counts_replies(self) -> bool:
        """Whether its replies are counted (so :meth:`owes` is exact)."""
        return self.counter is not None and not self.counter.broken
