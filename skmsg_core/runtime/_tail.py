"""Message tails: the bytes of a verdicted message still in its socket.

Rules
-----
The core hands the runtime a receive action with ``tail`` set (see
:mod:`skmsg_core._psock`, "Tails"): the action's bytes, then ``tail`` more of
the same message, still in the source socket. The runtime takes exactly those
from the socket before it reads anything else, and sends them where the
verdict said:

- a redirect to a stream's egress that can take them (a plain TCP stream:
  :class:`SpliceEndpoint`, its ``splice_fileno`` not -1) gets them with
  ``splice(2)``, socket -> pipe -> socket, never copied into Python: under
  the target's write lock, in order with its other writes, the runtime
  writes the action's bytes into the target's socket, then splices the tail
  after them;
- a DROP discards them unread (socket -> pipe -> ``/dev/null``);
- anything else (a TLS egress, an ingress queue, a datagram socket, or a
  source that cannot splice) reads them into memory and carries out the
  whole message as one action, as if the core had held it whole.

Flow control stays: bytes wait in one pipe (at most :data:`PIPE_BYTES`)
while the target does not take them, and the source is not read meanwhile.
A source that stalls mid-tail parks its own pump only (its burst waits for
the socket to become readable, the rest of the tail still to take); other
sockets run on. Writes to the same target wait, as for any message being
written.

Failures mid-tail never truncate silently:

- the source fails or its peer closes before the tail's last byte: the
  source is in error (``ECONNABORTED`` for an early EOF, else its own
  error) and so is a target that received part of the message
  (:meth:`SpliceEndpoint.abort`: it is shut down, its peer sees the
  connection end inside the message, its users get the error);
- the target fails: as any failed redirect, the message is dropped and
  counted (``redirect_errors``), the target is aborted if part of the
  message reached it, and the rest of the tail is discarded unread; the
  source carries on with its next message;
- cancellation (the pump stopped, the runtime closing) while bytes of the
  tail are still in the source: both ends are aborted, then the
  cancellation goes on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._errors import kernel_error
from .._progs import describe_error
from .._psock import RX_DROP, RX_REDIRECT, RxAction
from ._boundary import escapes_boundary
from ._events import log_event

if TYPE_CHECKING:
    from .._psock import SkPsock
    from ._runtime import Endpoint, Runtime

__all__ = ["PIPE_BYTES", "SpliceEndpoint", "TailIO", "rx_tail"]

log = logging.getLogger("skmsg_core.runtime")

#: The pipe a tail moves through holds up to this many bytes (``F_SETPIPE_SZ``;
#: the system's default where it refuses).
PIPE_BYTES = 1 << 20
#: A fallback read takes at most this much per call.
READ_CHUNK = 262144
#: Bytes moved without waiting after which a tail lets other tasks run.
_FAIR_BYTES = 4 << 20
_SPLICE_FLAGS = getattr(os, "SPLICE_F_NONBLOCK", 2) | getattr(os, "SPLICE_F_MOVE", 1)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: Pipes kept for later tails.
_POOL_MAX = 16
_IOV_MAX = 1024


class SpliceEndpoint(Protocol):
    """What a stream offers for message tails, on top of ``Endpoint`` (looked
    up by name: an endpoint without these gets its tails read into memory)."""

    def splice_fileno(self) -> int:
        """The socket's fd, for moving bytes out of it (a receive tail) or into
        it (a redirect's tail) with ``splice(2)``, below every program; -1 when
        bytes cannot move that way now (closed, aborted, or a ULP on the wire)."""
        ...

    def spliced(self, received: int, sent: int) -> None:
        """Count bytes moved out of (``received``) or into (``sent``) the socket
        without a read or write of the stream's own."""
        ...

    async def egress_splice(self, move: Callable[[], Awaitable[None]]) -> bool:
        """Under the stream's write lock, in order with its other writes,
        ``await move()``, which writes a message into :meth:`splice_fileno`
        itself. Returns False, having called nothing, when this egress cannot
        take bytes that way (a ULP is installed, the stream is closed or
        aborted).

        Raises:
            BaseException: whatever ``move`` raises.
        """
        ...

    def abort(self, exc: BaseException) -> None:
        """The connection is in error for good: a message through it was cut
        short. Shut it down both ways (its peer sees it end) and have its
        readers and writers get ``exc``. Never raises."""
        ...


class _SourceFailed(Exception):
    """The source failed mid-tail (``error``), inside a target's ``move``."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _Tail:
    """A tail under way: bytes still in the source, and whether any of the
    message reached the target."""

    __slots__ = ("left", "started")

    def __init__(self, left: int) -> None:
        self.left = left
        self.started = False


class TailIO:
    """A runtime's pipes (a small pool: a pipe is held only while a tail
    moves) and its ``/dev/null``. Made on first use."""

    def __init__(self) -> None:
        self._free: list[tuple[int, int, int]] = []
        self._devnull = -1

    def take(self) -> tuple[int, int, int]:
        """An empty pipe: (read fd, write fd, capacity in bytes)."""
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # over the system's pipe-max-size: its default size
            size = 65536
        return r, w, size

    def give(self, pipe: tuple[int, int, int], empty: bool) -> None:
        """Return ``pipe``; one that may still hold bytes is closed."""
        if empty and len(self._free) < _POOL_MAX:
            self._free.append(pipe)
            return
        os.close(pipe[0])
        os.close(pipe[1])

    def devnull(self) -> int:
        """A write fd that discards what is spliced into it."""
        if self._devnull < 0:
            self._devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        return self._devnull

    def close(self) -> None:
        """Close every fd kept."""
        for r, w, _ in self._free:
            os.close(r)
            os.close(w)
        self._free.clear()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1


def _describe(endpoint: Any) -> str:
    try:
        return str(endpoint.sk.describe())
    except Exception:
        return type(endpoint).__name__


def _abort(endpoint: Any, exc: BaseException) -> None:
    """Put ``endpoint``'s connection in error for good (never raises)."""
    abort = getattr(endpoint, "abort", None)
    try:
        if abort is not None:
            abort(exc)
        else:
            endpoint.rx_failed(exc)
    except Exception:
        log.debug("aborting %s raised", _describe(endpoint), exc_info=True)


def _cut_short(source: Any, tail: _Tail, why: str) -> OSError:
    return kernel_error(
        errno.ECONNABORTED,
        f"{_describe(source)}: {why} {tail.left} bytes before the end of a message",
    )


async def rx_tail(rt: Runtime, source: Endpoint, psock: SkPsock, action: RxAction) -> None:
    """Carry out ``action``, one message whose last ``action.tail`` bytes are
    still in ``source``'s socket (see the module's rules).

    Raises:
        OSError, trio.BrokenResourceError: the source failed (its pump stops
            and its readers get the error).
    """
    tail = _Tail(action.tail)
    try:
        if action.kind == RX_DROP:
            await _discard(rt, source, psock, tail)
            return
        if (
            action.kind == RX_REDIRECT
            and not action.ingress
            and await _splice_redirect(rt, source, psock, action, tail)
        ):
            return
        data = await _read_whole(source, action, tail)
        whole = RxAction(
            action.kind, action.target, action.ingress, [data], data.nbytes, action.msgs
        )
        await rt.rx_action(source, whole)
    except BaseException as exc:
        if tail.left and not isinstance(exc, (OSError, trio.BrokenResourceError)):
            # cancelled (or an engine's failure) with bytes of the message still
            # in the source: what follows in it is no message start. The
            # source's own failure needs nothing more: its pump stops on it and
            # its readers get it.
            _abort(source, _cut_short(source, tail, "receiving stopped"))
        raise


async def _splice_redirect(
    rt: Runtime, source: Any, psock: SkPsock, action: RxAction, tail: _Tail
) -> bool:
    """The tail of a redirect to a stream's egress, spliced; False (nothing
    done) when the source or the target cannot splice."""
    target = action.target
    assert target is not None
    dst = target.owner
    egress_splice = getattr(dst, "egress_splice", None)
    src_fileno = getattr(source, "splice_fileno", None)
    if (
        egress_splice is None
        or src_fileno is None
        or src_fileno() < 0
        or target.psock is None
        or target.dead
    ):
        return False

    async def move() -> None:
        tail.started = True
        await _write_head(dst, action.bufs)
        await _pipe_move(rt, source, dst, psock, tail)

    try:
        return bool(await egress_splice(move))
    except _SourceFailed as exc:
        _abort(
            dst,
            kernel_error(
                errno.ECONNABORTED,
                f"{target.describe()}: a message redirected from {_describe(source)} was "
                f"cut short, {tail.left} bytes before its end: its source failed",
            ),
        )
        raise exc.error from None
    except BaseException as exc:
        if tail.started:  # part of the message may be in the target: cut it off
            _abort(
                dst,
                kernel_error(
                    errno.ECONNABORTED,
                    f"{target.describe()}: a message redirected from {_describe(source)} "
                    f"was cut short, {tail.left} bytes before its end",
                ),
            )
        if escapes_boundary(exc):
            raise
        rt.redirect_errors += 1  # the target's failure, never the source's
        log_event(
            log,
            logging.DEBUG,
            "redirect_dropped",
            target=target.describe(),
            error=describe_error(exc),
            tail_left=tail.left,
        )
    await _discard(rt, source, psock, tail)
    return True


async def _write_head(dst: Any, bufs: list[memoryview]) -> None:
    """Write ``bufs`` into ``dst``'s socket (the message's bytes the core held).

    Raises:
        OSError: the write failed (``EPIPE`` when ``dst`` was closed).
    """
    bufs = [b for b in bufs if b.nbytes]
    while bufs:
        fd = dst.splice_fileno()
        if fd < 0:
            raise kernel_error(errno.EPIPE, f"{_describe(dst)} was closed")
        try:
            sent = os.writev(fd, bufs[:_IOV_MAX])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            continue
        dst.spliced(0, sent)
        while bufs and sent >= bufs[0].nbytes:
            sent -= bufs.pop(0).nbytes
        if sent:
            bufs[0] = bufs[0][sent:]


async def _pipe_move(
    rt: Runtime, source: Any, dst: Any | None, psock: SkPsock, tail: _Tail
) -> None:
    """Move ``tail.left`` bytes from ``source``'s socket to ``dst``'s (None:
    ``/dev/null``) through a pipe. fds are looked up before every call: a
    stream closed while this waited has none (-1), and its old number may
    name another file by then.

    Raises:
        _SourceFailed: the source failed or reached EOF first.
        OSError: writing to ``dst`` failed.
    """
    io = rt._tail_io
    pipe = io.take()
    r, w, size = pipe
    inpipe = 0
    since_wait = 0
    try:
        while tail.left or inpipe:
            progress = False
            src_fd = -1
            if tail.left and inpipe < size:
                src_fd = source.splice_fileno()
                if src_fd < 0:
                    raise _SourceFailed(_cut_short(source, tail, "the socket was closed"))
                try:
                    got = os.splice(src_fd, w, min(tail.left, size - inpipe), flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    got = -1
                except OSError as exc:
                    raise _SourceFailed(exc) from exc
                if not got:
                    raise _SourceFailed(_cut_short(source, tail, "the peer closed the connection"))
                if got > 0:
                    tail.left -= got
                    inpipe += got
                    progress = True
                    source.spliced(got, 0)
            dst_fd = -1
            if inpipe:
                if dst is None:
                    dst_fd = io.devnull()
                else:
                    dst_fd = dst.splice_fileno()
                    if dst_fd < 0:
                        raise kernel_error(errno.EPIPE, f"{_describe(dst)} was closed")
                try:
                    put = os.splice(r, dst_fd, inpipe, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    put = 0
                if put:
                    inpipe -= put
                    progress = True
                    since_wait += put
                    if dst is None:
                        psock.rx_discarded_bytes += put
                    else:
                        dst.spliced(0, put)
                        psock.rx_spliced_bytes += put
            if not progress:
                since_wait = 0
                if inpipe:
                    await trio.lowlevel.wait_writable(dst_fd)  # the target is full
                else:
                    try:  # the source has nothing yet
                        await trio.lowlevel.wait_readable(src_fd)
                    except trio.ClosedResourceError:
                        raise _SourceFailed(
                            _cut_short(source, tail, "the socket was closed")
                        ) from None
            elif since_wait >= _FAIR_BYTES:
                since_wait = 0
                await trio.lowlevel.checkpoint()
    finally:
        io.give(pipe, inpipe == 0)


async def _discard(rt: Runtime, source: Any, psock: SkPsock, tail: _Tail) -> None:
    """Discard the tail unread (spliced to ``/dev/null``), or read and drop it
    where the source cannot splice.

    Raises:
        OSError, trio.BrokenResourceError: the source failed or closed first.
    """
    src_fileno = getattr(source, "splice_fileno", None)
    if src_fileno is not None and src_fileno() >= 0:
        try:
            await _pipe_move(rt, source, None, psock, tail)
        except _SourceFailed as exc:
            raise exc.error from None
        return
    while tail.left:
        data = await _recv_some(source, min(tail.left, READ_CHUNK), tail)
        tail.left -= len(data)


async def _read_whole(source: Any, action: RxAction, tail: _Tail) -> memoryview:
    """The whole message read into memory, as one buffer: the action's bytes,
    then the tail read from the source (a datagram target takes one buffer as
    one datagram). Bounded: the stream parser refused any message longer than
    its ``max_msg_size``.

    Raises:
        OSError, trio.BrokenResourceError: the source failed or closed first.
    """
    buf = bytearray(action.nbytes + tail.left)
    view = memoryview(buf)
    got = 0
    for b in action.bufs:
        view[got : got + b.nbytes] = b
        got += b.nbytes
    while tail.left:
        data = await _recv_some(source, min(tail.left, READ_CHUNK), tail)
        n = len(data)
        view[got : got + n] = data
        got += n
        tail.left -= n
    return view.toreadonly()


async def _recv_some(source: Any, max_bytes: int, tail: _Tail) -> bytes:
    """Up to ``max_bytes`` from ``source``'s transport, waiting for them.

    Raises:
        OSError(ECONNABORTED): EOF (or the socket was closed) first.
        OSError, trio.BrokenResourceError: the source failed.
    """
    while True:
        fd = source.transport_fileno()
        if fd < 0:
            data: bytes | None = await source.transport_recv(max_bytes)
        else:
            data = source.transport_recv_nowait(max_bytes)
            if data is None:
                with contextlib.suppress(trio.ClosedResourceError):
                    await trio.lowlevel.wait_readable(fd)
                if source.transport_fileno() < 0:
                    raise _cut_short(source, tail, "the socket was closed")
                continue
        if not data:
            raise _cut_short(source, tail, "the peer closed the connection")
        return data
