"""The runtime: the work the kernel does in softirq and workqueues, as trio tasks.

Theory of operation
-------------------
The sans-I/O core turns bytes into *actions*; the runtime carries them out.
It runs the receive path of every socket with receive programs (the
kernel's ``sk_data_ready`` → strparser → verdict path): read the transport,
``psock.rx_feed``, then pass bytes to the socket's ingress queue, or redirect
them to another socket's egress (its transport, under its write lock) or
ingress queue. As in the kernel, an idle socket costs no work: it waits in
one epoll set that a single task watches, and a readable socket gets a short
*burst* task that reads until the socket would block, then re-arms it.

Every queue is bounded and every hand-off waits for room: a full ingress
queue stops its burst from reading (TCP flow control reaches the peer), and a
redirect target that writes slowly slows the burst that feeds it. Nothing
grows without bound.

Tasks run in a nursery the application owns (:func:`open_runtime`).

The boundary
------------
Nothing raised while serving one socket ends the runtime or another socket's
service: a parse error, a reset, a plugin's or a program's exception of any
kind (``KeyboardInterrupt`` and trio's cancellation aside) is that socket's
error. Its pump stops, its readers get ``trio.BrokenResourceError`` with the
cause chained, the runtime counts it (``Runtime.socket_errors``) and logs one
line naming the socket and the error's type (rate-limited, never a
traceback). A redirect whose target fails drops those bytes and is counted
against the target (``redirect_errors``), never against the source. Program
errors are logged here too, rate-limited, with the program's name and what
went wrong (the core counts them and tells the runtime, it does not log).

A stream plugs in by implementing :class:`Endpoint`; one that implements
:class:`~skmsg_core.runtime.SpliceEndpoint` too takes message tails with
``splice(2)`` (see :mod:`._tail`).

Datagrams
---------
A datagram socket (UDP) implements :class:`DatagramEndpoint` as well: its
burst is its own loop (:meth:`DatagramEndpoint.rx_datagrams`, a verdict per
datagram, read until the socket would block), a message redirected to it
stays one datagram (fragments of one SK_MSG message are joined; each message
of a receive batch is one datagram), and its receive queue never makes a
sender wait: a full queue drops the datagram and counts it in the target's
``sk.drops`` (UDP's contract), as :func:`ingress_try` does for any target.
A datagram socket's own receive loop never waits on a redirect target
either: :func:`ingress_try` and :func:`egress_try` queue or send one message
now, or drop it and count it.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import select
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from .._errors import StrParserError, kernel_error
from .._progs import Program, describe_error, set_error_observer
from ._boundary import escapes_boundary
from ._events import log_event
from ._tail import TailIO, rx_tail

if TYPE_CHECKING:
    from .._psock import RxAction, SkPsock
    from .._sock import Sock
    from .._tx import TxAction

__all__ = [
    "Endpoint",
    "Runtime",
    "DatagramEndpoint",
    "current_runtime",
    "data_ready",
    "egress_try",
    "escapes_boundary",
    "ingress_put",
    "ingress_try",
    "open_runtime",
    "socket_error",
    "space_freed",
    "tx_redirect",
]

log = logging.getLogger(__name__)

#: Seconds between two log lines about the same thing (later ones are counted).
LOG_INTERVAL = 10.0


class RateLimitedLog:
    """Log one line per key per :data:`LOG_INTERVAL` seconds; the lines held
    back are counted and reported with the next one."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[Any, tuple[float, int]] = {}

    def _due(self, key: Any) -> int | None:
        """None if a line for ``key`` went out less than an interval ago (this one
        is counted), else how many were held back since the last one."""
        now = time.monotonic()
        held = self._last.get(key)
        if held is not None and now - held[0] < self._interval:
            self._last[key] = (held[0], held[1] + 1)
            return None
        if len(self._last) > 4096:  # bounded: old keys go
            self._last.clear()
        self._last[key] = (now, 0)
        return held[1] if held is not None else 0

    def warning(self, key: Any, message: str, *args: object) -> None:
        """A free-form warning line, rate-limited per ``key``."""
        suppressed = self._due(key)
        if suppressed is None:
            return
        if suppressed:
            message += " (and %d more like it since the last report)"
            args = (*args, suppressed)
        self._log.warning(message, *args)

    def event(self, key: Any, event: str, **fields: Any) -> None:
        """A warning as one ``key=value`` event line (:func:`log_event`),
        rate-limited per ``key``; the lines held back since the last one are
        its ``suppressed`` field (when there were any)."""
        suppressed = self._due(key)
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        log_event(self._log, logging.WARNING, event, **fields)


_rate_limited = RateLimitedLog(log)


def _log_program_error(prog: Program, error: BaseException) -> None:
    """The core's error observer: one line per program and kind of error."""
    _rate_limited.event(
        ("program", prog.id, type(error)),
        "program_error",
        program=prog.name,
        prog_type=prog.prog_type.name,
        error=describe_error(error),
        verdict="SK_DROP",
    )


set_error_observer(_log_program_error)


_current: contextvars.ContextVar[Runtime | None] = contextvars.ContextVar(
    "skmsg_runtime", default=None
)


class Endpoint(Protocol):
    """What a protocol's stream offers the runtime."""

    sk: Sock

    async def transport_recv(self, max_bytes: int) -> bytes:
        """Read from the transport, below every program (b"" at EOF)."""
        ...

    def transport_recv_nowait(self, max_bytes: int) -> bytes | None:
        """Read without blocking: the bytes, b"" at EOF, or ``None`` if none are
        ready (only called when :meth:`transport_fileno` is not -1)."""
        ...

    def transport_fileno(self) -> int:
        """The fd the runtime may watch for readability, or -1 if this endpoint
        cannot read without blocking (it then gets a task of its own).

        An endpoint whose class sets ``short_read_drains = True`` promises that
        :meth:`transport_recv_nowait` returning fewer bytes than asked took
        everything the socket had then (a stream socket's ``recv``): the
        runtime watches the fd again at once instead of reading it once more
        to find it empty. Without it, the runtime reads until ``None``."""
        ...

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Write to the transport below this socket's own SK_MSG program (a
        redirect's egress), in order with the socket's other writes.

        Raises:
            OSError: the transport failed (``EPIPE`` when closed).
        """
        ...

    def rx_failed(self, exc: BaseException) -> None:
        """The receive pump stopped on ``exc`` (an OSError with the errno the
        socket is now in error with); readers must see it (and be woken)."""
        ...

    def rx_eof(self) -> None:
        """The transport reached EOF; readers see EOF once the queue drains
        (and must be woken)."""
        ...

    def wake_readers(self) -> None:
        """Wake every task blocked in this stream's receive call, so it looks
        again at the ingress queue, the pump and the socket."""
        ...


class DatagramEndpoint(Endpoint, Protocol):
    """What a datagram socket offers the runtime on top of :class:`Endpoint`.

    ``egress_write`` sends each buffer it is given as one datagram.
    """

    def queue_datagram(self, data: bytes | memoryview, address: object) -> bool:
        """Put one datagram on this socket's receive queue (``address``: its
        source, ``None`` for a redirected one); False if the queue was full and
        the datagram was dropped (and counted in ``sk.drops``). Never waits."""
        ...

    async def rx_datagrams(self, rt: Runtime, psock: SkPsock) -> int:
        """One round of a burst: read datagrams and run the receive verdict on
        each, until the socket would block or a fairness budget is spent.
        Returns how many it handled, negated (``-n - 1``) when it stopped
        because the socket would block; the runtime checkpoints and calls
        again, or, once a round found nothing, re-arms the socket (at once
        after a round of one datagram, when the last look again found nothing).

        Raises:
            OSError: the socket failed for good (the pump stops; ``rx_failed``).
        """
        ...

    def egress_send_nowait(self, data: bytes | memoryview) -> bool:
        """Send ``data`` as one datagram now, below this socket's SK_MSG
        program, or drop it (counted by the socket) when the socket cannot take
        it without waiting. Returns whether it was sent (:func:`egress_try`).

        Raises:
            trio.ClosedResourceError: the socket was closed.
            OSError: the send failed otherwise.
        """
        ...


def _queue_datagram(target: Sock) -> Any:
    """The target's ``queue_datagram`` if it is a datagram socket, else None."""
    return getattr(target.owner, "queue_datagram", None)


def _joined(bufs: list[memoryview]) -> memoryview:
    return bufs[0] if len(bufs) == 1 else memoryview(b"".join(bufs))


def ingress_try(target: Sock, data: memoryview) -> bool:
    """Queue one message on ``target``'s receive queue now, or drop it.

    For a sender that must never wait (a datagram socket's receive loop): a
    datagram target's own queue, or a stream target's psock ingress queue if it
    has room (a message larger than the whole queue goes into an empty one).
    A full queue, or a target whose psock stopped, drops the message and counts
    it in ``target.drops``. Returns whether it was queued.
    """
    queue = _queue_datagram(target)
    if queue is not None:
        return bool(queue(data, None))
    psock = target.psock
    n = data.nbytes
    if psock is None or not psock.tx_enabled or (
        psock.ingress_bytes and psock.ingress_space < n
    ):
        target.drops += 1
        return False
    psock.queue_msg([data])
    data_ready(psock)
    return True


def _writable_now(fd: int) -> bool:
    """Whether ``fd`` takes bytes without waiting (``poll``: any fd number)."""
    poller = select.poll()
    try:
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError):
        return False
    return any(ev & select.POLLOUT and not ev & (select.POLLERR | select.POLLNVAL)
               for _, ev in events)


async def egress_try(target: Sock, data: memoryview) -> bool:
    """Send one message out of ``target``'s transport now, or drop it.

    For a sender that must never wait (a datagram socket's receive loop), as
    :func:`ingress_try` is for receive queues. A datagram target
    (:meth:`DatagramEndpoint.egress_send_nowait`) sends it as one datagram, or
    drops it when its send buffer is full (counted by the target). A stream
    target writes it with :meth:`Endpoint.egress_write`, in order with its
    other writes, if its socket takes bytes now; otherwise the message is
    dropped and counted in ``target.drops``. A target without a psock, dead, or
    without an endpoint drops it too. Returns whether it went out.

    Whatever the target raises while taking it (cancellation and Ctrl-C aside)
    is the target's failure, never the sender's: the message is dropped and
    counted in the current runtime's ``redirect_errors`` (an error that is not
    the transport's is also logged, rate-limited), and False returned.

    Cancellation: the message was sent whole or not at all for a datagram
    target; a stream target's write may have been cut short, as any
    cancelled ``egress_write``.
    """
    psock = target.psock
    owner = target.owner
    if psock is None or not psock.tx_enabled or target.dead or owner is None:
        target.drops += 1
        return False
    try:
        send_now = getattr(owner, "egress_send_nowait", None)
        if send_now is not None:
            sent = bool(send_now(data))
            await trio.lowlevel.checkpoint()
            return sent
        fd = owner.transport_fileno()
        if fd >= 0 and not _writable_now(fd):
            target.drops += 1
            await trio.lowlevel.checkpoint()
            return False
        await owner.egress_write([data], False)
        return True
    except BaseException as exc:
        if escapes_boundary(exc):
            raise
        rt = current_runtime()
        if rt is not None:
            rt.redirect_errors += 1
        if not isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            _rate_limited.warning(
                ("redirect", type(exc)),
                "redirect to %s dropped: its stream raised %s",
                target.describe(),
                describe_error(exc),
            )
        return False


_writable: weakref.WeakKeyDictionary[SkPsock, trio.lowlevel.ParkingLot] = (
    weakref.WeakKeyDictionary()
)


def data_ready(psock: SkPsock) -> None:
    """``sk_psock_data_ready``: wake the readers of ``psock``'s socket."""
    owner = psock.sk.owner
    if owner is not None:
        owner.wake_readers()


def space_freed(psock: SkPsock) -> None:
    """A reader took bytes off ``psock``'s ingress queue: wake blocked writers."""
    lot = _writable.get(psock)
    if lot is not None:
        lot.unpark_all()


async def ingress_put(target: Sock, bufs: list[memoryview], nbytes: int) -> int:
    """Queue ``bufs`` on ``target``'s ingress queue, waiting for room.

    Waits while the queue cannot take ``nbytes`` more; a message larger than the
    whole queue goes in once the queue is empty, so nothing deadlocks. Returns
    the bytes queued: 0 if the psock stopped meanwhile (they are discarded).

    Raises:
        OSError(EPIPE): ``target`` has no psock (``tcp_bpf_sendmsg_redir``).
    """
    psock = target.psock
    if psock is None:
        raise kernel_error(errno.EPIPE, f"{target.describe()} has no psock")
    while psock.ingress_bytes and psock.ingress_space < nbytes and psock.tx_enabled:
        lot = _writable.get(psock)
        if lot is None:
            lot = _writable[psock] = trio.lowlevel.ParkingLot()
        await lot.park()
    n = psock.queue_msg(bufs)
    if n:
        data_ready(psock)
    return n


async def tx_redirect(action: TxAction) -> None:
    """Carry out an SK_MSG redirect: the bytes go out of the target's transport
    (below its own program) or into its ingress queue.

    Whatever the target raises while taking them (but cancellation and
    Ctrl-C) is the target's failure, reported to the sender as ``EPIPE`` with
    the target's error as the cause, and counted in the current runtime's
    ``redirect_errors`` (an error that is not the transport's is also logged,
    rate-limited), as a failed receive redirect is.

    A file's bytes (:class:`~skmsg_core.FileSpan`, from a send of a file)
    are read into memory for the target.

    Raises:
        OSError(EPIPE): the target has no psock or no stream, or it failed.
        OSError(EIO): the file of a file's bytes is shorter than it was.
    """
    target = action.target
    assert target is not None
    if target.psock is None or target.dead:
        raise kernel_error(errno.EPIPE, f"redirect target {target.describe()} is gone")
    views = [b if isinstance(b, memoryview) else b.view() for b in action.bufs]
    try:
        dgram = _queue_datagram(target)
        if action.ingress:
            if dgram is not None:  # one message, one datagram; a full queue drops it (counted)
                dgram(_joined(views), None)
                await trio.lowlevel.checkpoint()
                return
            if not await ingress_put(target, views, action.nbytes):
                raise kernel_error(errno.EPIPE, f"redirect target {target.describe()} is gone")
            return
        endpoint: Endpoint | None = target.owner
        if endpoint is None:
            raise kernel_error(errno.EPIPE, f"redirect target {target.describe()} has no stream")
        bufs = [_joined(views)] if dgram is not None and views else views
        await endpoint.egress_write(bufs, action.more)
    except BaseException as exc:
        if escapes_boundary(exc):
            raise
        rt = current_runtime()
        if rt is not None:
            rt.redirect_errors += 1
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE and exc.__cause__ is None:
            raise  # said above: the target is gone
        if not isinstance(exc, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
            _rate_limited.event(
                ("redirect", type(exc)),
                "redirect_failed",
                target=target.describe(),
                error=describe_error(exc),
            )
        raise kernel_error(errno.EPIPE, f"redirect to {target.describe()} failed") from exc


class Runtime:
    """Runs receive pumps in ``nursery``. Build one with :func:`open_runtime`;
    streams put into maps with receive programs while it is current use it."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self._pumps: dict[int, _Pump] = {}
        self._by_fd: dict[int, _Pump] = {}
        self._epoll: select.epoll | None = None
        self._watching = False
        self.redirect_errors = 0
        #: Sockets whose service ended on an error that was not a connection's
        #: own (a plugin's or an engine's exception), contained here.
        self.socket_errors = 0
        self._tail_io = TailIO()

    async def rx_action(self, receiver: Endpoint, action: RxAction) -> None:
        """Carry out one receive action of ``receiver``'s pump.

        PASS waits for room in the receiver's own ingress queue. A redirect whose
        target fails is dropped and counted (``redirect_errors``), as the kernel's
        backlog drops an skb and puts the target in error; it never fails the
        source.
        """
        kind = action.kind
        if kind == "pass":
            await ingress_put(receiver.sk, action.bufs, action.nbytes)
            return
        if kind != "redirect":
            return
        target = action.target
        assert target is not None
        try:
            if action.ingress:
                if _queue_datagram(target) is not None:  # one datagram per message
                    for buf in action.bufs:
                        ingress_try(target, buf)
                    return
                await ingress_put(target, action.bufs, action.nbytes)
            else:
                endpoint: Endpoint | None = target.owner
                if endpoint is None or target.psock is None or target.dead:
                    raise kernel_error(errno.EPIPE, f"{target.describe()} is gone")
                await endpoint.egress_write(action.bufs, False)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.redirect_errors += 1
            log.debug("redirect to %s dropped: %s", target.describe(), exc)
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
            self.redirect_errors += 1  # the target's failure, never the source's
            _rate_limited.event(
                ("redirect", type(exc)),
                "redirect_dropped",
                target=target.describe(),
                error=describe_error(exc),
            )

    # -- receive pumps -----------------------------------------------------------------------
    #
    # The kernel does no work for an idle socket: sk_data_ready runs when bytes
    # arrive. So here: an idle socket with receive programs is only an entry in
    # one epoll set the runtime watches with a single task; when it becomes
    # readable, a short *burst* task reads until the socket would block (or a
    # queue is full), then re-arms the socket and ends. An endpoint that cannot
    # read without blocking (fileno -1) gets a task of its own instead.

    def start_pump(self, endpoint: Endpoint) -> None:
        """Start ``endpoint``'s receive processing, once (``sk_psock_start_strp`` /
        ``sk_psock_start_verdict``)."""
        key = id(endpoint)
        if key in self._pumps:
            return
        pump = _Pump(endpoint, endpoint.transport_fileno(),
                     drains=getattr(endpoint, "short_read_drains", False) is True)
        self._pumps[key] = pump
        if pump.fd < 0:
            pump.scope = trio.CancelScope()
            self.nursery.start_soon(self._task_pump, pump)
        else:
            self._by_fd[pump.fd] = pump
            if _readable_now(pump.fd):
                self.nursery.start_soon(self._burst, pump)  # bytes are waiting already
            else:
                self._arm(pump)  # idle from the start (a fresh connection): no task yet

    def stop_pump(self, endpoint: Endpoint) -> None:
        """Stop ``endpoint``'s receive processing, if running. Bytes it read but
        did not hand on are discarded, as the kernel discards a stopped
        strparser's."""
        pump = self._pumps.pop(id(endpoint), None)
        if pump is None:
            return
        if self._by_fd.get(pump.fd) is pump:
            del self._by_fd[pump.fd]
        if pump.registered and self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(pump.fd)
        pump.stopped = True
        if pump.scope is not None:
            pump.scope.cancel()

    def pumping(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint``'s receive processing is running (busy or idle)."""
        return id(endpoint) in self._pumps

    def _arm(self, pump: _Pump) -> None:
        """Watch ``pump``'s socket for the next readable event (one-shot)."""
        if self._epoll is None:
            self._epoll = select.epoll()
        mask = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
        if pump.registered:
            self._epoll.modify(pump.fd, mask)
        else:
            self._epoll.register(pump.fd, mask)
            pump.registered = True
        if not self._watching:
            self._watching = True
            self.nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    pump = self._by_fd.get(fd)
                    if pump is not None and not pump.stopped and pump.scope is None:
                        self.nursery.start_soon(self._burst, pump)
                pump = None  # not kept while waiting: its stream may be closed and freed
        finally:
            self._watching = False
            self._epoll = None
            epoll.close()

    async def _burst(self, pump: _Pump) -> None:
        """Read and process until the socket would block, then re-arm it."""
        if pump.stopped or pump.scope is not None:
            return
        endpoint = pump.endpoint
        scope = pump.scope = trio.CancelScope()
        reads = 0
        rx_datagrams = getattr(endpoint, "rx_datagrams", None)
        with scope:
            try:
                while True:
                    psock = endpoint.sk.psock
                    if psock is None:  # gone without the seam saying so: stop for good
                        self.stop_pump(endpoint)
                        return
                    if rx_datagrams is not None:  # a datagram socket's own loop
                        # A round that would block ends the burst only when it found
                        # nothing: a busy sender's next datagram is usually one
                        # scheduler pass away, and looking once more is far cheaper
                        # than re-arming the socket and starting a new burst. A
                        # socket whose last such look found nothing (one datagram
                        # now and then: a reply) is not looked at again until a
                        # round finds more than one.
                        n = await rx_datagrams(self, psock)
                        if reads:  # this round was a look once more
                            pump.look_again = n != -1
                        elif n >= 0 or n < -2:  # more than one datagram at once
                            pump.look_again = True
                        if n == -1 or (n == -2 and not pump.look_again):
                            if not pump.stopped:
                                self._arm(pump)
                            return
                        reads += 1
                        await trio.lowlevel.checkpoint()
                        continue
                    data = endpoint.transport_recv_nowait(_READ_SIZE)
                    if data is None:
                        if not pump.stopped:
                            self._arm(pump)
                        return
                    if not await self._process(endpoint, psock, data):
                        self.stop_pump(endpoint)
                        return
                    if pump.drains and len(data) < _READ_SIZE:
                        # the socket had no more: reading again would find it
                        # empty; the watch (re-armed, so it looks at once) sees
                        # whatever came since
                        if not pump.stopped:
                            self._arm(pump)
                        return
                    reads += 1
                    if not reads % 4:  # fairness between busy sockets, whatever the actions
                        await trio.lowlevel.checkpoint()
            except (OSError, trio.BrokenResourceError) as exc:
                self._failed(endpoint, exc)
            except trio.ClosedResourceError:
                self.stop_pump(endpoint)
            except BaseException as exc:
                if escapes_boundary(exc):
                    raise
                self._failed(endpoint, exc, unexpected=True)
            finally:
                if pump.scope is scope:
                    pump.scope = None

    async def _task_pump(self, pump: _Pump) -> None:
        """The fallback: a task of its own for an endpoint that cannot read
        without blocking."""
        endpoint = pump.endpoint
        assert pump.scope is not None
        with pump.scope:
            try:
                while True:
                    psock = endpoint.sk.psock
                    if psock is None:
                        return
                    data = await endpoint.transport_recv(65536)
                    if not await self._process(endpoint, psock, data):
                        return
            except (OSError, trio.BrokenResourceError) as exc:
                self._failed(endpoint, exc)
            except trio.ClosedResourceError:
                pass
            except BaseException as exc:
                if escapes_boundary(exc):
                    raise
                self._failed(endpoint, exc, unexpected=True)
            finally:
                self._pumps.pop(id(endpoint), None)

    def _failed(self, endpoint: Endpoint, exc: BaseException, *, unexpected: bool = False) -> None:
        """``endpoint``'s receive service ended on ``exc``: its pump stops and
        its readers see the error. An ``unexpected`` one (not a connection's own
        error) is counted and logged, and made a ``BrokenResourceError``. An
        ``rx_failed`` that raises is counted and logged too, and the readers are
        woken all the same: they find the pump stopped and fail closed."""
        self.stop_pump(endpoint)
        if unexpected:
            exc = socket_error(endpoint, exc, self)
        try:
            endpoint.rx_failed(exc)
        except BaseException as inner:  # a plugin that cannot even take its error
            if escapes_boundary(inner):
                raise
            self.socket_errors += 1
            _rate_limited.event(
                ("rx_failed", type(inner)),
                "socket_error",
                socket=_describe(endpoint),
                what="rx_failed",
                error=describe_error(inner),
            )
            # its readers find the pump stopped with receive programs installed,
            # and must fail closed then (never read around the verdict)
            try:
                endpoint.wake_readers()
            except BaseException as again:
                if escapes_boundary(again):
                    raise

    async def _process(self, endpoint: Endpoint, psock: SkPsock, data: bytes) -> bool:
        """Run ``data`` through the programs and carry out the actions; False
        when processing must stop (EOF, or the stream parser failed)."""
        if not data:
            endpoint.rx_eof()
            return False
        try:
            actions = psock.rx_feed(data)
        except StrParserError as exc:
            for action in exc.actions:
                await self.rx_action(endpoint, action)
            endpoint.rx_failed(exc)
            return False
        for action in actions:
            if action.tail:  # the last action: its message's tail is in the socket
                await rx_tail(self, endpoint, psock, action)
            else:
                await self.rx_action(endpoint, action)
        return True


#: How much a burst reads from a stream socket at a time.
_READ_SIZE = 65536

_poller = select.poll()


def _readable_now(fd: int) -> bool:
    """Whether ``fd`` has bytes (or EOF, or an error) to read right now."""
    _poller.register(fd, select.POLLIN)
    try:
        return bool(_poller.poll(0))
    finally:
        _poller.unregister(fd)


def socket_error(
    endpoint: Endpoint, exc: BaseException, rt: Runtime | None, *, what: str = "receive"
) -> trio.BrokenResourceError:
    """What ``endpoint``'s readers (or, with ``what="send"``, the sender) get
    when its service raised ``exc`` unexpectedly (not a connection's own
    error: a plugin's or an engine's exception of any kind): a
    ``trio.BrokenResourceError`` naming the socket, with ``exc`` as its cause.
    It is counted in ``rt.socket_errors`` (when there is a runtime) and logged
    once per kind of error (rate-limited, no traceback). For a stream that
    receives in its reader (a ULP's), and for sends, as the runtime does for a
    pump."""
    name = _describe(endpoint)
    if rt is not None:
        rt.socket_errors += 1
    _rate_limited.event(
        (what, type(exc)),
        "socket_error",
        socket=name,
        what=what,
        error=describe_error(exc),
    )
    err = trio.BrokenResourceError(f"{name}: {what} failed: {describe_error(exc)}")
    err.__cause__ = exc
    return err


def _describe(endpoint: Endpoint) -> str:
    try:
        return endpoint.sk.describe()
    except Exception:
        return type(endpoint).__name__


@attrs.define(eq=False)
class _Pump:
    """One socket's receive processing: idle in the epoll set, or a burst."""

    endpoint: Endpoint
    fd: int
    scope: trio.CancelScope | None = None
    registered: bool = False
    stopped: bool = False
    #: a datagram socket's burst looks once more when a round would block
    look_again: bool = True
    #: a short read means the socket was drained (``short_read_drains``)
    drains: bool = False


def current_runtime() -> Runtime | None:
    """The runtime of the enclosing :func:`open_runtime`, if any."""
    return _current.get()


@asynccontextmanager
async def open_runtime() -> AsyncIterator[Runtime]:
    """Open a runtime whose tasks live in a nursery of this block.

    Streams put into maps with receive programs inside the block run their
    pumps here. Leaving the block cancels the pumps still running. An
    exception raised by the block's own body comes out as itself, not wrapped
    in an exception group.

    Raises:
        BaseExceptionGroup: a runtime task failed unexpectedly (never a
            connection's own error, which its stream raises).
    """
    body_error: BaseException | None = None
    tail_io = TailIO()
    try:
        async with trio.open_nursery() as nursery:
            rt = Runtime(nursery)
            rt._tail_io = tail_io
            token = _current.set(rt)
            try:
                yield rt
            except BaseException as exc:
                body_error = exc
            finally:
                _current.reset(token)
                nursery.cancel_scope.cancel()
    finally:
        tail_io.close()  # the pipes the runtime's tails kept
    if body_error is not None:
        raise body_error
