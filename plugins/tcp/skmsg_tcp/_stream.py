"""``SkStream``: a TCP stream a user holds, with the kernel's sockmap hooks.

Theory of operation
-------------------
Outside any map an ``SkStream`` is a ``trio.SocketStream`` in all but name:
the same calls, errors and checkpoints. When it enters a map the core calls
``TcpProto.psock_update_sk_prot`` and the stream's operations change, as the
kernel's ``tcp_bpf_update_proto`` swaps ``sk_prot``:

- with an SK_MSG program (the kernel's TX config) ``send_all`` runs the core's
  TX engine (:class:`skmsg_core.SendOp`) and carries out its actions: pass to
  this socket's transport, redirect to another socket's transport or ingress
  queue;
- with receive programs (RX config) a *receive pump* in the runtime reads
  the socket and runs the stream parser and verdict; ``receive_some`` then
  reads this socket's ingress queue only;
- with a psock but no receive programs, ``receive_some`` reads the ingress
  queue first (bytes other sockets redirected here) and the socket otherwise.

A ULP (TLS, :mod:`skmsg_tls`) installed on the stream takes its sends,
redirects to its egress and its receives: it seals records after the SK_MSG
verdict, and opens records and runs the receive verdict in ``receive_some``
itself (as kTLS does in ``tls_sw_recvmsg``), so no receive pump runs for it.

A message's tail (the bytes of a large message past those its verdict
declared it reads) moves between two plain streams with ``splice(2)``, never
read into Python: out of the source socket, into the target under its
write lock (:meth:`SkStream.egress_splice`). A message cut short mid-tail
aborts the streams it ran through (:meth:`SkStream.abort`).

Leaving the last map restores plain operation. A task blocked in
``receive_some`` waits inside a cancel scope that every change cancels, so
it always looks again at the queue, the pump and the socket.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import socket as stdsocket
import stat as stdstat
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import attrs
import trio

import skmsg_core as sk
from skmsg_core.runtime import (
    Runtime,
    current_runtime,
    escapes_boundary,
    socket_error,
    space_freed,
    tx_redirect,
)

from ._proto import TCP_PROTO

__all__ = ["SendError", "SkStream", "StreamStats", "StreamUlp"]

DEFAULT_RECEIVE_SIZE = 65536
SO_COOKIE = getattr(stdsocket, "SO_COOKIE", 57)
MSG_MORE = getattr(stdsocket, "MSG_MORE", 0)
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
#: Consecutive PASS windows of one send are written together up to this many bytes.
_PASS_BATCH = 65536
#: ``IOV_MAX``: the most buffers one ``sendmsg`` takes.
_IOV_MAX = 1024
#: Join more than this many buffers into one write.
_JOIN_ABOVE = 8
#: With a ULP (TLS) and no receive pump, ``receive_some`` reads this much at once:
#: whole records are opened, whatever ``max_bytes`` asked for.
_ULP_RECEIVE_SIZE = 262144


SendError = sk.SendError


@attrs.frozen
class StreamStats:
    """What a stream did: bytes through its transport, and its psock's counters
    while it is in a map."""

    bytes_sent: int
    bytes_received: int
    psock: sk.PsockStats | None
    #: The ULP's counters (TLS: ``skmsg_tls.TlsStats``) when one is installed.
    ulp: Any = None


class StreamUlp(Protocol):
    """What an upper-layer protocol installed on an :class:`SkStream` provides
    (``stream._ulp``; TLS's is the private ``skmsg_tls._ulp.TlsUlp``, behind the
    user's ``skmsg_tls.TlsSocket``): the stream hands it
    its sends, redirects to its egress, the bytes its reader reads, and its
    shutdown, as the kernel's ``sk_prot`` swap hands them to a ULP."""

    async def sendmsg(self, view: memoryview, more: bool) -> None:
        """``send_all`` (raises as ``send_all`` does)."""
        ...

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """A redirect to this stream's egress (no verdict)."""
        ...

    async def rx_input(self, data: bytes) -> None:
        """Bytes read from the socket by the reader (b"": those
        :meth:`rx_fill` read); the ULP keeps what is for the application
        (:attr:`plain_bytes`, :meth:`take_plain`) and its error
        (:attr:`rx_error`) for after it."""
        ...

    def rx_fill(self, recv_into: Callable[[memoryview], int], max_bytes: int) -> int:
        """Read up to ``max_bytes`` with ``recv_into`` (the socket's) straight
        into the ULP's own buffer; return how many (0: EOF). Raises what
        ``recv_into`` raises, having kept nothing."""
        ...

    def transport_eof(self) -> None:
        """The socket reached EOF."""
        ...

    @property
    def plain_bytes(self) -> int:
        """Bytes waiting for ``receive_some``."""
        ...

    def take_plain(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of them."""
        ...

    @property
    def rx_error(self) -> BaseException | None:
        """Why receiving failed, once it did."""
        ...

    @property
    def rx_ended(self) -> bool:
        """The ULP's own end of stream came (TLS ``close_notify``)."""
        ...

    async def ulp_send_eof(self) -> None:
        """Before ``send_eof`` half-closes the socket (TLS: ``close_notify``)."""
        ...

    def ulp_close(self) -> None:
        """The stream is closing: a best-effort goodbye that never blocks, then
        release everything."""
        ...

    def statistics(self) -> Any:
        """The ULP's counters, for ``StreamStats.ulp``."""
        ...


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class _Conflict:
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


class WriteLock:
    """The mutex a stream's socket writes take (its own sends, redirects into
    its egress, a ULP's control records), so that they do not interleave.

    ``trio.Lock``'s contract (FIFO hand-off to waiting tasks; ``acquire``
    checkpoints) without its per-acquire bookkeeping (owner tracking, the
    parking-lot breaker), which cost more than the lock itself on a path that
    takes it once per write. Callers release in ``finally`` (or ``async with``).
    """

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot: trio.lowlevel.ParkingLot | None = None  # made at the first wait

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._held

    def acquire_nowait(self) -> None:
        """Take the lock if it is free, without a checkpoint.

        Raises:
            trio.WouldBlock: another task holds it.
        """
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        """Take the lock, waiting in FIFO order while another task holds it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()  # release() hands the lock over: still held
            return
        self._held = True
        await trio.lowlevel.cancel_shielded_checkpoint()

    def release(self) -> None:
        """Hand the lock to the longest waiting task, or free it."""
        lot = self._lot
        if lot:
            lot.unpark()
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _translate(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


_TCP_NOTSENT_LOWAT: int | None = getattr(stdsocket, "TCP_NOTSENT_LOWAT", None)


def cookie_of(sock: trio.socket.SocketType | stdsocket.socket) -> int:
    """The kernel's socket cookie (``SO_COOKIE``), or a fresh one where unsupported."""
    try:
        raw = sock.getsockopt(stdsocket.SOL_SOCKET, SO_COOKIE, 8)
    except OSError:
        return sk.next_cookie()
    return int(struct.unpack("=Q", raw)[0])


class SkStream(trio.abc.HalfCloseableStream):
    """A connected TCP stream that can sit in socket maps.

    Build one with :func:`open_tcp_stream`, from a listener, or from a connected
    trio socket. ``sk`` is the core's view of it; ``socket`` the trio socket.
    """

    def __init__(self, socket: trio.socket.SocketType, *, proto: sk.SkProto | None = None) -> None:
        if not isinstance(socket, trio.socket.SocketType):
            raise TypeError("SkStream requires a trio socket object")
        # trio's socket wraps a non-blocking stdlib one; the runtime reads it
        # without blocking when it becomes readable (None: one task per socket).
        raw = getattr(socket, "_sock", None)
        self._raw: stdsocket.socket | None = raw if isinstance(raw, stdsocket.socket) else None
        # the set-up calls below ask the stdlib socket straight (trio's wrapper
        # only forwards them): a proxy makes two streams per client
        io: Any = self._raw if self._raw is not None else socket
        if io.type != stdsocket.SOCK_STREAM:
            raise ValueError("SkStream requires a SOCK_STREAM socket")
        self.socket = socket
        with contextlib.suppress(OSError):
            io.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, True)
        if _TCP_NOTSENT_LOWAT is not None:
            with contextlib.suppress(OSError):
                io.setsockopt(stdsocket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, 2**14)
        self.sk = sk.Sock(
            proto or TCP_PROTO,
            family=io.family,
            type=stdsocket.SOCK_STREAM,
            protocol=stdsocket.IPPROTO_TCP,
            state=sk.TcpState.ESTABLISHED,
            local_addr=_addr(io.getsockname),
            remote_addr=_addr(io.getpeername),
            cookie=cookie_of(io),
            owner=self,
        )
        self.sk.register_fd(io.fileno())
        self._send_conflict = _Conflict("another task is currently sending data on this SkStream")
        self._receive_conflict = _Conflict("another task is currently receiving on this SkStream")
        self._write_lock = WriteLock()
        self._recv_scope: trio.CancelScope | None = None
        self._runtime: Runtime | None = current_runtime()
        self._rx_error: BaseException | None = None
        #: Why the connection was aborted (a message through it cut short).
        self._aborted: BaseException | None = None
        self._rx_eof = False
        self._closed = False
        #: The ULP serving this stream (TLS: ``skmsg_tls._ulp.TlsUlp``): send_all,
        #: receive_some and redirects to this egress go through it.
        self._ulp: StreamUlp | None = None
        #: The ULP's counters when the stream closed (it lets go of the ULP then).
        self._ulp_stats: Any = None
        #: A ULP is being set up (a handshake is running): no receive pump may
        #: start, so it cannot take the handshake's bytes.
        self._ulp_pending = False
        self.bytes_sent = 0
        self.bytes_received = 0
        sk.plugins().sock_created(self.sk)

    # -- the seam: called by TcpProto.psock_update_sk_prot ------------------------------

    def _update_ops(self, psock: sk.SkPsock, restore: bool) -> int:
        rt = self._runtime or current_runtime()
        if restore or psock.rx_mode is None:
            if rt is not None:
                rt.stop_pump(self)
            self.wake_readers()
            return 0
        if rt is None:
            raise sk.kernel_error(
                errno.EOPNOTSUPP,
                f"{self.sk.describe()}: receive programs need a running skmsg runtime "
                "(async with skmsg_core.runtime.open_runtime(): ...)",
            )
        self._runtime = rt
        self.wake_readers()  # a reader blocked on the socket must let the pump read it
        if self._ulp is None and not self._ulp_pending:  # a ULP receives in the reader
            rt.start_pump(self)
        return 0

    # -- Endpoint: what the runtime calls ------------------------------------------------

    async def transport_recv(self, max_bytes: int) -> bytes:
        try:
            data = await self.socket.recv(max_bytes)
        except OSError as exc:
            raise _translate(exc) from exc
        self.bytes_received += len(data)
        return data

    def transport_recv_nowait(self, max_bytes: int) -> bytes | None:
        raw = self._raw
        if raw is None:
            return None
        try:
            data = raw.recv(max_bytes)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _translate(exc) from exc
        self.bytes_received += len(data)
        return data

    #: ``recv`` returning less than asked emptied the socket (the runtime
    #: watches it again instead of reading it once more).
    short_read_drains = True

    def transport_fileno(self) -> int:
        return self.socket.fileno() if self._raw is not None else -1

    def splice_fileno(self) -> int:
        """The socket's fd for ``splice(2)``, below every program: a receive
        tail out of it, a redirect's tail into it; -1 when bytes cannot move
        that way (closed, aborted, or a ULP on the wire: TLS records)."""
        if self._closed or self._aborted is not None or self._ulp is not None or self._raw is None:
            return -1
        return self.socket.fileno()

    def spliced(self, received: int, sent: int) -> None:
        """Count bytes the runtime moved out of or into the socket itself."""
        self.bytes_received += received
        self.bytes_sent += sent

    async def egress_splice(self, move: Callable[[], Awaitable[None]]) -> bool:
        """Run ``move`` (which writes a redirected message into
        :meth:`splice_fileno` itself) under the write lock, in order with this
        stream's other writes; False, without running it, when this egress is
        not the plain socket (a ULP is installed) or the stream is closed or
        aborted.

        Raises:
            BaseException: whatever ``move`` raises.

        Cancellation: while waiting for the lock, nothing is written.
        """
        lock = self._write_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self.splice_fileno() < 0:
                return False
            await move()
            return True
        finally:
            lock.release()

    def abort(self, exc: BaseException) -> None:
        """The connection is in error for good: a message through it was cut
        short (its source failed mid-message, or receiving stopped with part
        of a message still in the socket). The socket is shut down both ways,
        so its peer sees the connection end; ``receive_some`` and sends raise
        ``trio.BrokenResourceError`` with ``exc`` as the cause. Never raises."""
        if self._aborted is not None:
            return
        self._aborted = exc
        raw = self._raw
        if raw is not None and not self._closed:
            with contextlib.suppress(OSError):
                raw.shutdown(stdsocket.SHUT_RDWR)
        self.wake_readers()

    def _aborted_error(self) -> trio.BrokenResourceError:
        err = trio.BrokenResourceError(f"{self.sk.describe()}: {self._aborted}")
        err.__cause__ = self._aborted
        return err

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        ulp = self._ulp
        if ulp is not None:  # e.g. TLS seals them with this stream's keys
            await ulp.egress_write(bufs, more)
            return
        await self._locked_send(bufs, more)

    def rx_failed(self, exc: BaseException) -> None:
        self._rx_error = exc
        self.wake_readers()

    def rx_eof(self) -> None:
        self._rx_eof = True
        self.sk.state = sk.TcpState.CLOSE_WAIT
        self.wake_readers()

    def wake_readers(self) -> None:
        scope = self._recv_scope
        if scope is not None:
            scope.cancel()

    # -- sending -----------------------------------------------------------------------

    async def _locked_send(self, bufs: Sequence[memoryview | sk.FileSpan], more: bool) -> None:
        """``_send_bufs`` under the write lock, so writes from this stream's own
        sends and from redirects do not interleave. An uncontended lock is taken
        without a scheduler pass (the send checkpoints). A file's bytes
        (:class:`skmsg_core.FileSpan`) go out with ``sendfile(2)``, in order
        with the rest."""
        lock = self._write_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if self._aborted is not None:
                raise self._aborted_error()
            if all(type(b) is memoryview for b in bufs):
                await self._send_bufs(bufs, more)  # type: ignore[arg-type]
                return
            group: list[memoryview] = []
            for i, b in enumerate(bufs):
                if type(b) is memoryview:
                    group.append(b)
                    continue
                if group:
                    await self._send_bufs(group, True)
                    group = []
                assert isinstance(b, sk.FileSpan)
                await self._sendfile(b, more or i < len(bufs) - 1)
            if group:
                await self._send_bufs(group, more)
        finally:
            lock.release()

    async def _sendfile(self, span: sk.FileSpan, more: bool) -> None:
        """Send ``span``'s bytes from its file with ``sendfile(2)``: never read
        into Python. (``more`` has no flag to carry on ``sendfile``.)

        Raises:
            OSError(EIO): the file ends before the span's bytes.
            trio.BrokenResourceError, trio.ClosedResourceError: the socket.
        """
        sock = self.socket
        fd, offset, left = span.fd, span.offset, span.nbytes
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while left:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, left)
            except BlockingIOError:
                waited = True
                try:
                    await trio.lowlevel.wait_writable(sock)
                except OSError as exc:
                    raise _translate(exc) from exc
                continue
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL) and sock.fileno() != -1:
                    raise  # the file's fault (closed, not a regular file): the send fails
                raise _translate(exc) from exc
            if not sent:
                raise OSError(
                    errno.EIO,
                    f"send_file on {self.sk.describe()}: the file ends at {offset}, before "
                    f"{left} more bytes it was to send",
                )
            self.bytes_sent += sent
            offset += sent
            left -= sent
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _send_bufs(self, bufs: list[memoryview], more: bool) -> None:
        """Write every byte of ``bufs`` to the socket, in order.

        Many small buffers (a batch of short messages) are joined first: one
        copy is far cheaper than one iovec each, and the kernel refuses more
        than ``IOV_MAX`` (1024) in one ``sendmsg``. Otherwise at most
        ``IOV_MAX`` go per call.
        """
        nbufs = len(bufs)
        try:
            if not more and (nbufs == 1 or nbufs > _JOIN_ABOVE):  # the common case
                # one buffer, or many short ones joined: one copy beats one
                # iovec each (and sendmsg takes at most IOV_MAX)
                view = bufs[0] if nbufs == 1 else memoryview(b"".join(bufs))
                raw = self._raw
                if raw is not None:
                    # trio's send, unrolled (as receive_some's recv): try at
                    # once; only a full socket waits, through trio, below
                    await trio.lowlevel.checkpoint_if_cancelled()
                    try:
                        sent = raw.send(view)
                    except BlockingIOError:
                        pass
                    else:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        self.bytes_sent += sent
                        if sent == view.nbytes:
                            return
                        view = view[sent:]
                while view.nbytes:
                    sent = await self.socket.send(view)
                    self.bytes_sent += sent
                    view = view[sent:]
                return
            flags = MSG_MORE if more else 0
            # empty views cost nothing to join
            pending = [memoryview(b"".join(bufs))] if nbufs > _JOIN_ABOVE else list(bufs)
            first = 0
            while first < len(pending):
                batch = pending[first : first + _IOV_MAX]
                sent = await self.socket.sendmsg(batch, (), flags)
                self.bytes_sent += sent
                for buf in batch:
                    if buf.nbytes <= sent:
                        sent -= buf.nbytes
                        first += 1
                    else:
                        pending[first] = buf[sent:]
                        break
        except OSError as exc:
            raise _translate(exc) from exc

    async def send_all(
        self,
        data: bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview],
        *,
        more: bool = False,
    ) -> None:
        """Send all of ``data``; with an SK_MSG program, through its verdicts.

        ``data`` is one buffer, or a sequence of buffers sent as one
        ``sendmsg`` (an iovec): one message, one verdict, written with one
        vectored write where no program runs; the buffers are never joined
        first (on TLS, each record's plaintext is copied from them).

        ``more=True`` says more data follows at once (``MSG_MORE``): the
        transport may hold a short segment back. It does not merge sends into
        one verdict: on plain TCP, as in the kernel, every send is its own
        message.

        Raises:
            SendError: of the class the errno makes it: a ``PermissionError``
                (EACCES) when the program dropped the data, a
                ``BrokenPipeError`` (EPIPE) when a redirect target went away;
                ``sent`` is the kernel's return value (bytes of this call
                taken), ``accepted`` what of it already left.
            trio.BusyResourceError: another task is sending on this stream.
            trio.ClosedResourceError: the stream was closed, or EOF was sent.
            trio.BrokenResourceError: the connection is broken, or was aborted
                (:meth:`abort`).

        Cancellation leaves the stream in an unknown state, as trio's own.
        """
        if self._closed or self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF or closing")
        with self._send_conflict:
            bufs = _buffers(data)
            nbytes = sum(b.nbytes for b in bufs)
            if self._ulp is not None:
                view = bufs[0] if len(bufs) == 1 else memoryview(bytearray().join(bufs))
                await self._ulp.sendmsg(view, more)
                return
            psock = self.sk.psock
            if psock is None or (psock.msg_parser is None and psock.cork is None):
                if not nbytes:
                    await trio.lowlevel.checkpoint()
                    return
                await self._locked_send([b for b in bufs if b.nbytes], more)
                return
            await trio.lowlevel.checkpoint()
            await self._run_op(sk.SendOp(psock, bufs, more=more), nbytes, "send_all")

    async def send_file(
        self, file: int | _HasFileno, offset: int = 0, count: int | None = None
    ) -> int:
        """Send ``count`` bytes of a regular file from ``offset`` (to its end
        when ``count`` is None, or when the file ends first); return how many
        were sent.

        The kernel's sendpage: with an SK_MSG program, each message (up to
        :data:`skmsg_core.FILE_MSG_BYTES` of the file) is verdicted with an
        empty data window: the program sees nothing until it pulls a range
        (``msg_pull_data``), which reads just that range; the bytes it did not
        pull go out with ``sendfile(2)``, never read into Python (a redirect
        to another socket reads them). Without a program the whole range goes
        with ``sendfile(2)``. On TLS the file is read and sealed record by
        record, through the record verdicts as ``send_all``'s bytes are.

        ``file``: an ``int`` fd or an object with ``fileno()``, open for
        reading; its own position is not used or moved.

        Raises:
            ValueError: ``file`` is not a regular file, or ``offset``/``count``
                is negative.
            SendError, trio.BusyResourceError: as :meth:`send_all`.
            trio.ClosedResourceError, trio.BrokenResourceError: as :meth:`send_all`.
            OSError(EIO): the file ends before the bytes it had when the send
                began (it shrank under the send).

        Cancellation leaves the stream in an unknown state, as trio's own.
        """
        fd = file if isinstance(file, int) else file.fileno()
        if type(offset) is not int or offset < 0:
            raise ValueError(f"send_file: offset must be an int >= 0, not {offset!r}")
        if count is not None and (type(count) is not int or count < 0):
            raise ValueError(f"send_file: count must be None or an int >= 0, not {count!r}")
        info = os.fstat(fd)
        if not stdstat.S_ISREG(info.st_mode):
            raise ValueError(f"send_file needs a regular file; fd {fd} is not one")
        avail = max(0, info.st_size - offset)
        n = avail if count is None else min(count, avail)
        if self._closed or self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF or closing")
        with self._send_conflict:
            if self._ulp is not None:
                await self._ulp_send_file(fd, offset, n)
                return n
            psock = self.sk.psock
            if not n:
                await trio.lowlevel.checkpoint()
                return 0
            if psock is None or (psock.msg_parser is None and psock.cork is None):
                await self._locked_send([sk.FileSpan(fd, offset, n)], False)
                return n
            await trio.lowlevel.checkpoint()
            await self._run_op(sk.FileSendOp(psock, fd, offset, n), n, "send_file")
            return n

    async def _ulp_send_file(self, fd: int, offset: int, count: int) -> None:
        """A file through the ULP (TLS): read and handed over in chunks, the
        last without ``more``."""
        ulp = self._ulp
        assert ulp is not None
        end = offset + count
        pos = offset
        while True:
            want = min(_ULP_RECEIVE_SIZE, end - pos)
            chunk = sk.pread_exactly(fd, want, pos) if want else b""
            pos += want
            await ulp.sendmsg(memoryview(chunk), pos < end)
            if pos >= end:
                return

    async def _run_op(self, op: sk.SendOp, nbytes: int, what: str) -> None:
        """Carry out a send engine's actions and raise what its result says."""
        cause: BaseException | None = None
        try:
            cause = await self._carry_out(op)
        except BaseException as exc:
            if escapes_boundary(exc) or isinstance(
                exc, (trio.BrokenResourceError, trio.ClosedResourceError)
            ):
                raise
            # not a connection's own error: a plugin's or an engine's
            raise socket_error(self, exc, self._runtime, what="send") from exc
        result = op.result()
        if result.err:
            raise result.error(f"{what} on {self.sk.describe()}", nbytes) from cause

    async def _carry_out(self, op: sk.SendOp) -> OSError | None:
        """Carry out ``op``'s actions: passes to this socket (consecutive PASS
        windows, which apply_bytes makes of one send, written together up to
        _PASS_BATCH bytes: one syscall, not one per window; the verdicts still
        run window by window), redirects to their targets. An ``OSError`` fails
        the send (``op.fail``) and is returned, for the error's cause.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: this socket's
                transport (the send is failed with EPIPE first).
        """
        cause: OSError | None = None
        held: list[memoryview | sk.FileSpan] = []
        held_bytes = 0
        for action in op:
            try:
                if action.kind == "pass":
                    held += action.bufs
                    held_bytes += action.nbytes
                    if action.more and held_bytes < _PASS_BATCH:
                        continue
                    await self._locked_send(held, action.more)
                    held, held_bytes = [], 0
                else:
                    if held:
                        await self._locked_send(held, True)
                        held, held_bytes = [], 0
                    await tx_redirect(action)
            except OSError as exc:
                op.fail(exc.errno or errno.EIO)
                cause = exc
                held, held_bytes = [], 0  # the send ends: what failed is not retried
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                op.fail(errno.EPIPE)
                raise
        if held:  # the caller's more=True kept the last windows back
            await self._locked_send(held, True)
        return cause

    @property
    def write_in_progress(self) -> bool:
        """Whether a write to the socket is under way now: this stream's own send,
        a redirect into its egress, or a ULP's record, holding the stream's
        write lock (perhaps waiting for the peer to make room). With
        ``bytes_sent`` this tells a write that stalls (the peer reads
        nothing) from one that is slow."""
        return self._write_lock.locked()

    async def flush_writes(self) -> None:
        """Wait until every write begun on this stream before the call (its own
        sends, redirects into its egress) has been handed to the socket; the
        writes are taken in order, so this waits for its turn behind them.

        Cancellation: nothing to undo (no bytes are written by this call).
        """
        async with self._write_lock:
            pass

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            if self._closed or self.socket.fileno() == -1:
                raise trio.ClosedResourceError
            try:
                await self.socket.wait_writable()
            except OSError as exc:
                raise _translate(exc) from exc

    async def send_eof(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError
            if self.socket.did_shutdown_SHUT_WR:
                return
            if self._ulp is not None:
                await self._ulp.ulp_send_eof()
            try:
                self.socket.shutdown(stdsocket.SHUT_WR)
            except OSError as exc:
                raise _translate(exc) from exc

    # -- receiving ------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive up to ``max_bytes`` (b"" at EOF).

        With receive programs, the bytes are those the verdict passed (and
        those other sockets redirected here with ``BPF_F_INGRESS``).

        Raises:
            trio.BusyResourceError: another task is receiving on this stream.
            trio.ClosedResourceError: the stream was closed.
            trio.BrokenResourceError: the connection broke, the stream
                parser failed (the ``__cause__`` carries its errno), or the
                connection was aborted (:meth:`abort`: a message cut short).
        """
        max_bytes = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        drained = False  # the ULP's last read was short: the socket had no more
        with self._receive_conflict:
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed")
                ulp = self._ulp
                if ulp is not None:
                    if ulp.plain_bytes:  # plaintext the ULP opened (and passed)
                        await trio.lowlevel.checkpoint()
                        return ulp.take_plain(max_bytes)
                    got = await self._ulp_end(ulp)
                    if got is not None:
                        return got
                psock = self.sk.psock
                rt = self._runtime
                pumping = psock is not None and rt is not None and rt.pumping(self)
                if psock is not None and psock.ingress_bytes:
                    await trio.lowlevel.checkpoint()
                    data = psock.recvmsg(max_bytes)  # after the checkpoint: nothing lost
                    space_freed(psock)
                    return data
                if self._aborted is not None:  # what was passed before it came first
                    await trio.lowlevel.checkpoint()
                    raise self._aborted_error()
                if self._rx_error is not None and (pumping or psock is not None):
                    await trio.lowlevel.checkpoint()
                    raise trio.BrokenResourceError(
                        f"{self.sk.describe()}: {self._rx_error}"
                    ) from self._rx_error
                if self._rx_eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                if psock is not None and psock.rx_mode is not None and rt is not None and (
                    not pumping and ulp is None and not self._ulp_pending
                ):
                    # receive programs, but their pump stopped and left no error:
                    # fail closed, never read around the verdict
                    await trio.lowlevel.checkpoint()
                    raise trio.BrokenResourceError(
                        f"{self.sk.describe()}: the receive pump stopped on an error"
                    )
                raw = self._raw
                want = max_bytes if ulp is None else _ULP_RECEIVE_SIZE
                if not pumping and raw is not None and not drained:
                    # trio's recv, unrolled: try first, and only make the wake-up
                    # scope below when the socket would block.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    try:
                        if ulp is not None:  # into the ULP's buffer: no copy
                            nread = ulp.rx_fill(raw.recv_into, want)
                        else:
                            data = raw.recv(want)
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        raise _translate(exc) from exc
                    else:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        if ulp is not None:
                            self.bytes_received += nread
                            # a short read took all there was: wait for more
                            # rather than ask the socket again to hear EAGAIN
                            drained = 0 < nread < want
                            await self._ulp_transport(ulp, b"" if nread else None)
                            continue
                        self.bytes_received += len(data)
                        return data
                # Wait in a scope that any change cancels (wake_readers): a
                # cancelled trio recv has consumed nothing, so looking again is safe.
                received: bytes | None = None
                with trio.CancelScope() as scope:
                    self._recv_scope = scope
                    try:
                        if pumping:
                            await trio.sleep_forever()
                        elif raw is not None:
                            # the recv above said EAGAIN, or a short read drained
                            # the socket: wait, then try again at the top (a recv
                            # here would ask the socket twice)
                            await trio.lowlevel.wait_readable(raw)
                            drained = False
                            continue
                        else:
                            received = await self.socket.recv(want)
                            self.bytes_received += len(received)
                            if ulp is None:
                                return received
                    except OSError as exc:
                        if self._closed:
                            raise trio.ClosedResourceError("this stream was closed") from None
                        raise _translate(exc) from exc
                    finally:
                        self._recv_scope = None
                if received is not None and ulp is not None:
                    await self._ulp_transport(ulp, received or None)

    async def _ulp_transport(self, ulp: StreamUlp, data: bytes | None) -> None:
        """Hand bytes read from the socket to the ULP (which runs the receive
        verdict in this, the reader's, context): ``data``, or b"" for those
        :meth:`StreamUlp.rx_fill` read; None is EOF.

        This is the stream's receive service, run by the reader instead of a
        pump, and it has the runtime's boundary: whatever the ULP raises
        (cancellation and Ctrl-C aside) puts the stream in error for good
        (``receive_some`` raises ``trio.BrokenResourceError`` with it as the
        cause, after the plaintext passed before it), counted and logged as
        a pump's (:func:`skmsg_core.runtime.socket_error`)."""
        if data is not None:
            try:
                await ulp.rx_input(data)
            except BaseException as exc:
                if escapes_boundary(exc):
                    raise
                self._rx_error = socket_error(self, exc, self._runtime or current_runtime())
        else:
            ulp.transport_eof()
            self._rx_eof = True

    async def _ulp_end(self, ulp: StreamUlp) -> bytes | None:
        """For ``receive_some`` with no plaintext waiting in the ULP: its error
        or its EOF, after a checkpoint; ``None`` to look further."""
        psock = self.sk.psock
        if psock is not None and psock.ingress_bytes:
            return None  # bytes other sockets redirected here
        err = ulp.rx_error
        if err is not None:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(f"{self.sk.describe()}: {err}") from err
        if self._rx_error is not None:  # the ULP raised (see _ulp_transport)
            await trio.lowlevel.checkpoint()
            raise self._rx_error
        if ulp.rx_ended or self._rx_eof:
            await trio.lowlevel.checkpoint()
            return b""
        return None

    async def aclose(self) -> None:
        """Close the stream: it leaves every map (unread redirected bytes are
        discarded), then the socket closes. Idempotent."""
        if not self._closed:
            self._closed = True
            ulp = self._ulp
            if ulp is not None:  # best effort: close_notify if the socket takes it now
                ulp.ulp_close()
                # the ULP names this stream: let go of it, keeping its last counters
                self._ulp_stats = ulp.statistics()
                self._ulp = None
            self.sk.close()
            self.wake_readers()
            self.socket.close()
        await trio.lowlevel.checkpoint()

    # -- extras -------------------------------------------------------------------------------

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        """``setsockopt`` on the underlying socket."""
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """``getsockopt`` on the underlying socket."""
        if buffersize:
            return self.socket.getsockopt(level, option, buffersize)
        return self.socket.getsockopt(level, option)

    def fileno(self) -> int:
        """The socket's file descriptor (a map accepts it too)."""
        return self.socket.fileno()

    def statistics(self) -> StreamStats:
        """Bytes through the transport, and the psock's counters when in a map."""
        psock = self.sk.psock
        return StreamStats(
            self.bytes_sent,
            self.bytes_received,
            psock.statistics() if psock else None,
            self._ulp.statistics() if self._ulp is not None else self._ulp_stats,
        )

    def __repr__(self) -> str:
        return f"<SkStream {self.sk.describe()}>"


def _buffers(
    data: bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview],
) -> list[memoryview]:
    """``data`` as a list of flat byte views: one buffer, or an iovec.

    Raises:
        TypeError: ``data``, or a buffer of the sequence, is not bytes-like.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        return [memoryview(data).cast("B")]
    if not isinstance(data, Sequence):
        raise TypeError(
            f"send_all takes a bytes-like object or a sequence of them, not "
            f"{type(data).__name__}"
        )
    out = []
    items: Sequence[Any] = data
    for i, buf in enumerate(items):
        try:
            out.append(memoryview(buf).cast("B"))
        except TypeError:
            raise TypeError(
                f"send_all: buffer {i} of the sequence is a {type(buf).__name__}, "
                "not a bytes-like object"
            ) from None
    return out


def _addr(get: Any) -> tuple[Any, ...] | None:
    try:
        addr = get()
    except OSError:
        return None
    return tuple(addr) if isinstance(addr, tuple) else (addr,)
