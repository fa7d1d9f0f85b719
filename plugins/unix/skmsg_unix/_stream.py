"""``UnixStream``: a connected AF_UNIX stream a user holds, with sockmap hooks.

Theory of operation
-------------------
Outside any map a ``UnixStream`` is a ``trio.abc.HalfCloseableStream`` over a
connected ``AF_UNIX``/``SOCK_STREAM`` socket: ``send_all``, ``receive_some``,
``send_eof``, with trio's checkpoints and errors. When it enters a map the
core calls ``UnixStreamProto.psock_update_sk_prot`` and the stream's
operations change, as ``unix_stream_bpf_update_proto`` swaps ``sk_prot``:

- with receive programs (an ``SK_SKB_STREAM_VERDICT`` or ``SK_SKB_VERDICT``;
  a stream parser is refused ``EOPNOTSUPP``, as the kernel refuses it for any
  socket but TCP) a receive pump in the runtime reads the socket and runs the
  verdict once per chunk read (the kernel runs it once per skb, one per
  ``send``; user space cannot read skb by skb, so a fast sender's sends may
  share a verdict, as TCP segments do); ``receive_some`` then reads this
  stream's ingress queue only;
- with an ``SK_MSG_VERDICT`` program, beyond the kernel (whose Unix sockets
  never run one: ``unix_stream_bpf_update_proto`` installs no ``sendmsg``),
  ``send_all`` runs the core's TX engine exactly as TCP's ``tcp_bpf_sendmsg``
  does: apply and cork windows, a sticky DROP (``EACCES``), redirects;
- with a psock but no receive programs, ``receive_some`` reads the ingress
  queue first (bytes other sockets redirected here) and the socket otherwise.

Leaving the last map restores plain operation. A task blocked in
``receive_some`` waits inside a cancel scope that every change cancels, so it
always looks again at the queue, the pump and the socket.

All I/O is on the stdlib socket with ``MSG_DONTWAIT``, waiting with trio's
``wait_readable``/``wait_writable``, so a stream adopted from a user's file
descriptor (a map update by fd) never changes that fd's blocking mode.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import socket as stdsocket
from typing import Any

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

from ._proto import UNIX_STREAM_PROTO
from ._util import (
    Conflict,
    UnixStreamStats,
    adopted,
    closed_error,
    cookie_of,
    is_unix,
    peer_name,
    sock_name,
)

__all__ = ["UnixStream"]

DEFAULT_RECEIVE_SIZE = 65536
_DONTWAIT = stdsocket.MSG_DONTWAIT
#: Consecutive PASS windows of one send are written together up to this many bytes.
_PASS_BATCH = 65536
#: ``IOV_MAX``: the most buffers one ``sendmsg`` takes.
_IOV_MAX = 1024
#: Join more than this many buffers into one write.
_JOIN_ABOVE = 8


def _translate(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    closed = closed_error(exc, "stream")
    if closed is not None:
        return closed
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class UnixStream(trio.abc.HalfCloseableStream):
    """A connected AF_UNIX stream that can sit in socket maps.

    Build one with :func:`open_unix_stream`, :func:`unix_stream_pair`, from a
    :class:`UnixListener`, or from a connected trio or stdlib AF_UNIX stream
    socket (the object takes the socket over). ``sk`` is the core's view of it
    (``unix-stream``, ESTABLISHED; ``sk.local_addr``/``remote_addr`` are the
    paths or abstract names, ``""`` when unnamed).

    Raises (constructor):
        TypeError: ``sock`` is not a socket object.
        ValueError: ``sock`` is not an AF_UNIX SOCK_STREAM socket, or it is not
            connected.
    """

    def __init__(
        self,
        sock: trio.socket.SocketType | stdsocket.socket,
        *,
        proto: sk.SkProto | None = None,
        _adopted_fd: int = -1,
    ) -> None:
        if isinstance(sock, trio.socket.SocketType):
            raw = stdsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        elif isinstance(sock, stdsocket.socket):
            raw = sock
        else:
            raise TypeError(f"UnixStream requires a socket object, not {type(sock).__name__}")
        if not is_unix(raw, stdsocket.SOCK_STREAM):
            raise ValueError(f"UnixStream requires an AF_UNIX SOCK_STREAM socket, not {raw!r}")
        peer = peer_name(raw)
        if peer is None:
            raise ValueError(f"UnixStream requires a connected socket; {raw!r} is not connected")
        if _adopted_fd < 0:
            raw.setblocking(False)
        self._raw = raw
        self._adopted_fd = _adopted_fd
        self.sk = sk.Sock(
            proto or UNIX_STREAM_PROTO,
            family=stdsocket.AF_UNIX,
            type=stdsocket.SOCK_STREAM,
            protocol=0,
            state=sk.TcpState.ESTABLISHED,
            local_addr=sock_name(raw),
            remote_addr=peer,
            cookie=cookie_of(raw),
            owner=self,
        )
        self.sk.register_fd(_adopted_fd if _adopted_fd >= 0 else raw.fileno())
        self._send_conflict = Conflict("another task is currently sending data on this UnixStream")
        self._receive_conflict = Conflict("another task is currently receiving on this UnixStream")
        self._write_lock = trio.Lock()
        self._recv_scope: trio.CancelScope | None = None
        self._runtime: Runtime | None = current_runtime()
        self._rx_error: BaseException | None = None
        self._rx_eof = False
        self._shut_wr = False
        self._closed = False
        self.bytes_sent = 0
        self.bytes_received = 0
        sk.plugins().sock_created(self.sk)

    # -- addresses and credentials --------------------------------------------------------

    def getsockname(self) -> Any:
        """This end's address (``getsockname``): a path, an abstract name
        (``bytes`` starting with a NUL), or ``""`` when unnamed."""
        return self._raw.getsockname()

    def getpeername(self) -> Any:
        """The peer's address, in the same forms."""
        return self._raw.getpeername()

    def getpeercred(self) -> tuple[int, int, int]:
        """The peer process's ``(pid, uid, gid)`` (``SO_PEERCRED``), as they were
        when it connected (or made the socketpair).

        Raises:
            OSError: the OS refused (the socket was closed: ``EBADF``).
        """
        raw = self._raw.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, 12)
        pid, uid, gid = (int.from_bytes(raw[i : i + 4], "little") for i in (0, 4, 8))
        return pid, uid, gid

    def fileno(self) -> int:
        """The socket's file descriptor (a map accepts it too)."""
        return self._adopted_fd if self._adopted_fd >= 0 else self._raw.fileno()

    # -- the seam: called by UnixStreamProto.psock_update_sk_prot --------------------------

    def _update_ops(self, psock: sk.SkPsock, restore: bool) -> int:
        rt = self._runtime or current_runtime()
        if restore or psock.rx_mode is None:
            if rt is not None:
                rt.stop_pump(self)
            self.wake_readers()
            if restore and self._adopted_fd >= 0:
                self._close_adopted()  # only the maps held it
            return 0
        if rt is None:
            raise sk.kernel_error(
                errno.EOPNOTSUPP,
                f"{self.sk.describe()}: receive programs need a running skmsg runtime "
                "(async with skmsg_core.runtime.open_runtime(): ...)",
            )
        self._runtime = rt
        if not rt.pumping(self):
            self._rx_error = None
        self.wake_readers()  # a reader blocked on the socket must let the pump read it
        rt.start_pump(self)
        return 0

    def _refresh_state(self) -> None:
        """``UnixStreamProto.sk_refresh_state``: a Unix stream stays ESTABLISHED
        while open (after its peer closed too, as in the kernel); an adopted one
        whose fd the user closed is closed now."""
        if self._closed or self.sk.dead:
            self.sk.state = sk.TcpState.CLOSE
        elif self._adopted_fd >= 0 and not self._adopted_fd_alive():
            self._close_adopted()

    def _adopted_fd_alive(self) -> bool:
        """Whether the user's fd still refers to this socket (not closed, not reused)."""
        try:
            probe = stdsocket.socket(fileno=self._adopted_fd)
        except OSError:
            return False
        try:
            return cookie_of(probe) == self.sk.cookie
        finally:
            probe.detach()

    def _close_adopted(self) -> None:
        if adopted.get(self._adopted_fd) is self:
            del adopted[self._adopted_fd]
        self._close_now()

    # -- Endpoint: what the runtime calls --------------------------------------------------

    async def transport_recv(self, max_bytes: int) -> bytes:
        while True:
            data = self.transport_recv_nowait(max_bytes)
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self._raw)

    def transport_recv_nowait(self, max_bytes: int) -> bytes | None:
        try:
            data = self._raw.recv(max_bytes, _DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise _translate(exc) from exc
        self.bytes_received += len(data)
        return data

    def transport_fileno(self) -> int:
        return self._raw.fileno()

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Write ``bufs`` below this stream's SK_MSG program (a redirect's
        egress), in order with the stream's own writes.

        Raises:
            trio.BrokenResourceError: the connection broke (its peer closed: EPIPE).
            trio.ClosedResourceError: the stream was closed.
        """
        await self._locked_send(bufs)

    def rx_failed(self, exc: BaseException) -> None:
        self._rx_error = exc
        self.wake_readers()

    def rx_eof(self) -> None:
        self._rx_eof = True
        self.wake_readers()

    def wake_readers(self) -> None:
        scope = self._recv_scope
        if scope is not None:
            scope.cancel()

    # -- sending -----------------------------------------------------------------------------

    async def _locked_send(self, bufs: list[memoryview]) -> None:
        """Write every byte of ``bufs``, in order, under the write lock, so this
        stream's own sends and redirects into its egress do not interleave."""
        async with self._write_lock:
            await self._send_bufs(bufs)

    async def _send_bufs(self, bufs: list[memoryview]) -> None:
        nbufs = len(bufs)
        pending = [memoryview(b"".join(bufs))] if nbufs > _JOIN_ABOVE else list(bufs)
        raw = self._raw
        await trio.lowlevel.checkpoint_if_cancelled()
        first = 0
        waited = False
        while first < len(pending):
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            batch = pending[first : first + _IOV_MAX]
            try:
                if len(batch) == 1:
                    sent = raw.send(batch[0], _DONTWAIT)
                else:
                    sent = raw.sendmsg(batch, (), _DONTWAIT)
            except BlockingIOError:
                waited = True
                try:
                    await trio.lowlevel.wait_writable(raw)
                except OSError as exc:
                    raise _translate(exc) from exc
                continue
            except OSError as exc:
                raise _translate(exc) from exc
            self.bytes_sent += sent
            for buf in batch:
                if buf.nbytes <= sent:
                    sent -= buf.nbytes
                    first += 1
                else:
                    pending[first] = buf[sent:]
                    break
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; with an SK_MSG program, through its verdicts
        (each ``send_all`` is one message, as a ``send`` on TCP).

        Raises:
            SendError: the program dropped the data (EACCES, a
                ``PermissionError``) or a redirect target went away (EPIPE);
                ``accepted`` says how much of this call had already gone,
                ``sent`` what the kernel's ``sendmsg`` would return.
            trio.BusyResourceError: another task is sending on this stream.
            trio.ClosedResourceError: the stream was closed, or EOF was sent.
            trio.BrokenResourceError: the connection is broken (the peer closed).

        Cancellation leaves the stream in an unknown state, as trio's own.
        """
        if self._closed or self._shut_wr:
            raise trio.ClosedResourceError("can't send data after sending EOF or closing")
        with self._send_conflict:
            view = memoryview(data).cast("B")
            psock = self.sk.psock
            if psock is None or (psock.msg_parser is None and psock.cork is None):
                if not view.nbytes:
                    await trio.lowlevel.checkpoint()
                    return
                await self._locked_send([view])
                return
            await trio.lowlevel.checkpoint()
            op = sk.SendOp(psock, view)
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
                raise result.error(f"send_all on {self.sk.describe()}", view.nbytes) from cause

    async def _carry_out(self, op: sk.SendOp) -> OSError | None:
        """Carry out ``op``'s actions: consecutive PASS windows written together
        (up to ``_PASS_BATCH`` bytes), redirects to their targets. An
        ``OSError`` fails the send (``op.fail``) and is returned, as the cause.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: this socket's
                own writes (the send is failed with EPIPE first).
        """
        cause: OSError | None = None
        held: list[memoryview] = []
        held_bytes = 0
        for action in op:
            try:
                if action.kind == "pass":
                    for b in action.bufs:
                        assert isinstance(b, memoryview)  # a send of memory: no file spans
                        held.append(b)
                    held_bytes += action.nbytes
                    if action.more and held_bytes < _PASS_BATCH:
                        continue
                    await self._locked_send(held)
                    held, held_bytes = [], 0
                else:
                    if held:
                        await self._locked_send(held)
                        held, held_bytes = [], 0
                    await tx_redirect(action)
            except OSError as exc:
                op.fail(exc.errno or errno.EIO)
                cause = exc
                held, held_bytes = [], 0  # the send ends: what failed is not retried
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                op.fail(errno.EPIPE)
                raise
        if held:
            await self._locked_send(held)
        return cause

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            try:
                await trio.lowlevel.wait_writable(self._raw)
            except OSError as exc:
                raise _translate(exc) from exc

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF; this end can still receive.
        Idempotent.

        Raises:
            trio.BusyResourceError: another task is sending on this stream.
            trio.ClosedResourceError: the stream was closed.
        """
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            if self._shut_wr:
                return
            self._shut_wr = True
            try:
                self._raw.shutdown(stdsocket.SHUT_WR)
            except OSError as exc:
                raise _translate(exc) from exc

    # -- receiving ---------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive up to ``max_bytes`` (b"" at EOF).

        With receive programs, the bytes are those the verdict passed (and those
        other sockets redirected here with ``BPF_F_INGRESS``).

        Raises:
            ValueError: ``max_bytes`` < 1.
            trio.BusyResourceError: another task is receiving on this stream.
            trio.ClosedResourceError: the stream was closed.
            trio.BrokenResourceError: the connection broke, or the receive pump
                failed while the stream has receive programs (the ``__cause__``
                says why).
        """
        max_bytes = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            while True:
                if self._closed:
                    await trio.lowlevel.checkpoint()
                    raise trio.ClosedResourceError("this stream was closed")
                psock = self.sk.psock
                rt = self._runtime
                pumping = psock is not None and rt is not None and rt.pumping(self)
                if psock is not None and psock.ingress_bytes:
                    await trio.lowlevel.checkpoint()
                    if not psock.ingress_bytes or psock is not self.sk.psock:
                        continue  # purged meanwhile
                    data = psock.recvmsg(max_bytes)  # after the checkpoint: nothing lost
                    space_freed(psock)
                    return data
                if self._rx_error is not None and (pumping or psock is not None):
                    await trio.lowlevel.checkpoint()
                    raise trio.BrokenResourceError(
                        f"{self.sk.describe()}: {self._rx_error}"
                    ) from self._rx_error
                if self._rx_eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                if psock is not None and psock.rx_mode is not None and not pumping:
                    # receive programs, but their pump stopped and left no error:
                    # fail closed, never read around the verdict
                    await trio.lowlevel.checkpoint()
                    raise trio.BrokenResourceError(
                        f"{self.sk.describe()}: the receive pump stopped on an error"
                    )
                if not pumping:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    try:
                        data = self._raw.recv(max_bytes, _DONTWAIT)
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        raise _translate(exc) from exc
                    else:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        self.bytes_received += len(data)
                        return data
                # Wait in a scope that any change cancels (wake_readers): a cancelled
                # wait consumed nothing, so looking again is safe.
                with trio.CancelScope() as scope:
                    self._recv_scope = scope
                    try:
                        if pumping:
                            await trio.sleep_forever()
                        else:
                            await trio.lowlevel.wait_readable(self._raw)
                    except OSError as exc:
                        raise _translate(exc) from exc
                    finally:
                        self._recv_scope = None

    # -- closing -----------------------------------------------------------------------------

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sk.close()
        self.wake_readers()
        # outside trio (a map operation from sync code) nobody can be waiting
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(self._raw)
        self._raw.close()

    async def aclose(self) -> None:
        """Close the stream: it leaves every map (unread redirected bytes are
        discarded), then the socket closes. Idempotent."""
        if self._adopted_fd >= 0:
            self._close_adopted()
        else:
            self._close_now()
        await trio.lowlevel.checkpoint()

    # -- extras ------------------------------------------------------------------------------

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        """``setsockopt`` on the underlying socket."""
        self._raw.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """``getsockopt`` on the underlying socket."""
        if buffersize:
            return self._raw.getsockopt(level, option, buffersize)
        return self._raw.getsockopt(level, option)

    def statistics(self) -> UnixStreamStats:
        """Bytes through the socket, and the psock's counters when in a map."""
        psock = self.sk.psock
        return UnixStreamStats(
            self.bytes_sent,
            self.bytes_received,
            psock.statistics() if psock is not None else None,
        )

    def __repr__(self) -> str:
        return f"<UnixStream {self.sk.describe()}>"
