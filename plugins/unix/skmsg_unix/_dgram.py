"""``UnixDatagramSocket``: an AF_UNIX datagram socket with sockmap hooks.

Theory of operation
-------------------
Outside any map it is a trio datagram socket: ``send``/``sendto`` one
datagram, ``receive``/``recvfrom`` one datagram (its boundary kept), with
trio's checkpoints and errors; a send to a peer whose queue is full waits, as
a blocking Unix datagram socket does. When it enters a map the core calls
``UnixDgramProto.psock_update_sk_prot`` and its operations change, as
``unix_dgram_bpf_update_proto`` swaps ``sk_prot``:

- with receive programs (``SK_SKB_STREAM_VERDICT`` or ``SK_SKB_VERDICT``;
  verdict mode, a stream parser is refused ``EOPNOTSUPP``) the runtime reads
  the socket in bursts (:meth:`UnixDatagramSocket.rx_datagrams`) and runs the
  verdict **once per datagram**: PASS puts it (and its source address) on this
  socket's receive queue; DROP discards it; a redirect sends it out of another
  socket (:func:`skmsg_core.runtime.egress_try`: one datagram, or one
  message's bytes on a stream) or puts it on another socket's receive queue
  (:func:`skmsg_core.runtime.ingress_try`, ``BPF_F_INGRESS``). ``receive``
  then reads the queue only, one datagram per call (the kernel's
  ``sk_msg_recvmsg`` would merge queued datagrams into one read).
- with an ``SK_MSG_VERDICT`` program (beyond the kernel, which runs none on
  Unix sockets) every ``send``/``sendto`` runs it once on its datagram: PASS
  sends it, DROP fails the call with ``EACCES``, a redirect hands it to the
  target. ``msg_apply_bytes``/``msg_cork_bytes`` cannot apply to a datagram:
  the send fails with ``EOPNOTSUPP`` saying so, and nothing is sent.
- with a psock but no receive programs, ``receive`` reads the queue first
  (datagrams other sockets redirected here) and the socket otherwise.

The receive loop never waits: a datagram for a full receive queue is dropped
and counted in ``sk.drops``; one redirected out of a socket that cannot take
it now is dropped and counted (``tx_drops`` of a datagram target). A redirect
from a stream's receive pump (or an SK_MSG program) into this socket's egress
waits for room instead, as the Unix datagram socket's own flow control asks.

All I/O is on the stdlib socket with ``MSG_DONTWAIT``, waiting with trio's
``wait_readable``/``wait_writable``, so a socket adopted from a user's file
descriptor never changes that fd's blocking mode.
"""

from __future__ import annotations

import contextlib
import errno
import socket as stdsocket
from collections import deque
from typing import Any

import trio

import skmsg_core as sk
from skmsg_core.runtime import (
    Runtime,
    current_runtime,
    egress_try,
    ingress_try,
    tx_redirect,
)

from ._proto import UNIX_DGRAM_PROTO
from ._util import (
    SendError,
    UnixAddress,
    UnixDatagramStats,
    adopted,
    closed_error,
    cookie_of,
    is_unix,
    peer_name,
    sock_name,
    unix_address,
)

__all__ = ["UnixDatagramSocket"]

#: The receive buffer of the receive loop: twice ``wmem_max``'s default, the
#: largest ``SO_SNDBUF`` (and so datagram) an unprivileged sender can set.
#: A longer datagram is dropped and counted in ``sk.drops``.
RX_BUFFER = 425984
#: What ``receive`` reads at most by default.
DEFAULT_RECEIVE_SIZE = 65536
#: The receive queue's limit when the socket has no psock.
DEFAULT_QUEUE_BYTES = 212992
#: Datagrams one burst handles before it lets other tasks run.
RX_BURST = 64
_DONTWAIT = stdsocket.MSG_DONTWAIT
_TRUNC = stdsocket.MSG_TRUNC
_PASS, _REDIRECT, _NONE = sk.Verdict.PASS, sk.Verdict.REDIRECT, sk.Verdict.NONE
_EMPTY = memoryview(b"")
# One buffer for every receive loop: a datagram is copied out before any await.
_rx_buffer: bytearray | None = None


def _rx_view() -> memoryview:
    global _rx_buffer
    if _rx_buffer is None:
        _rx_buffer = bytearray(RX_BUFFER)
    return memoryview(_rx_buffer)


class UnixDatagramSocket(trio.abc.AsyncResource):
    """An AF_UNIX datagram socket (bound or not, connected or not) that can sit
    in socket maps.

    Build one with :func:`open_unix_datagram_socket`, :func:`unix_dgram_pair`,
    or from a trio or stdlib AF_UNIX datagram socket (the object takes it
    over). ``sk`` is the core's view (``unix-dgram``): ESTABLISHED while
    connected, CLOSE otherwise; addresses are paths, abstract names, or ``""``.

    Raises (constructor):
        TypeError: ``sock`` is not a socket object.
        ValueError: ``sock`` is not an AF_UNIX SOCK_DGRAM socket.
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
            raise TypeError(
                f"UnixDatagramSocket requires a socket object, not {type(sock).__name__}"
            )
        if not is_unix(raw, stdsocket.SOCK_DGRAM):
            raise ValueError(
                f"UnixDatagramSocket requires an AF_UNIX SOCK_DGRAM socket, not {raw!r}"
            )
        if _adopted_fd < 0:
            raw.setblocking(False)
        self._raw = raw
        self._adopted_fd = _adopted_fd
        peer = peer_name(raw)
        self.sk = sk.Sock(
            proto or UNIX_DGRAM_PROTO,
            family=stdsocket.AF_UNIX,
            type=stdsocket.SOCK_DGRAM,
            protocol=0,
            state=sk.TcpState.ESTABLISHED if peer is not None else sk.TcpState.CLOSE,
            local_addr=sock_name(raw),
            remote_addr=peer,
            cookie=cookie_of(raw),
            owner=self,
        )
        self.sk.register_fd(_adopted_fd if _adopted_fd >= 0 else raw.fileno())
        self._rxq: deque[tuple[bytes | memoryview, Any]] = deque()
        self._rxq_bytes = 0
        self._skb = sk.SkBuff(self.sk)
        self._recv_scope: trio.CancelScope | None = None
        self._receiving = False
        self._runtime: Runtime | None = current_runtime()
        self._rx_error: BaseException | None = None
        self._closed = False
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.datagrams_received = 0
        self.bytes_received = 0
        self.tx_drops = 0
        sk.plugins().sock_created(self.sk)

    # -- addresses -------------------------------------------------------------------------

    def getsockname(self) -> Any:
        """The local address: a path, an abstract name (``bytes`` starting with a
        NUL), or ``""`` when unbound."""
        return self._raw.getsockname()

    def getpeername(self) -> Any:
        """The connected peer's address.

        Raises:
            OSError(ENOTCONN): the socket is not connected.
        """
        return self._raw.getpeername()

    def fileno(self) -> int:
        """The socket's file descriptor (a map accepts it too)."""
        return self._adopted_fd if self._adopted_fd >= 0 else self._raw.fileno()

    async def bind(self, address: UnixAddress) -> None:
        """Bind to ``address``: a path (the file must not exist), an abstract
        name (:func:`abstract`), or ``""`` to autobind an abstract name.

        Raises:
            TypeError: ``address`` is not an AF_UNIX address.
            OSError: the bind failed (``EADDRINUSE``, ``EINVAL`` when already bound ...).
        """
        addr = unix_address(address, "bind")
        self._check_open()
        await trio.lowlevel.checkpoint()
        self._raw.bind(addr)
        self._refresh_state()

    async def connect(self, address: UnixAddress) -> None:
        """Connect to ``address``: the destination of :meth:`send`, the only
        source :meth:`receive` accepts, and the state that makes this socket a
        redirect target (ESTABLISHED). Never blocks.

        Raises:
            TypeError: ``address`` is not an AF_UNIX address.
            OSError: the connect failed (``ENOENT``, ``ECONNREFUSED`` ...).
        """
        addr = unix_address(address, "connect")
        self._check_open()
        await trio.lowlevel.checkpoint()
        self._raw.connect(addr)
        self._refresh_state()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this Unix datagram socket was closed")

    def _refresh_state(self) -> None:
        """Bring ``sk`` up to date (``UnixDgramProto.sk_refresh_state``): connected
        (ESTABLISHED) or not (CLOSE; the kernel disconnects a socket whose peer
        closed at its next send); an adopted one whose fd the user closed is
        closed now."""
        s = self.sk
        if self._closed or s.dead:
            s.state = sk.TcpState.CLOSE
            return
        if self._adopted_fd >= 0 and not self._adopted_fd_alive():
            self._close_adopted()
            return
        s.local_addr = sock_name(self._raw)
        s.remote_addr = peer_name(self._raw)
        s.state = sk.TcpState.ESTABLISHED if s.remote_addr is not None else sk.TcpState.CLOSE

    # -- adoption (a map update by an fd nobody wrapped) ----------------------------------

    def _adopted_fd_alive(self) -> bool:
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

    # -- the seam: called by UnixDgramProto.psock_update_sk_prot ----------------------------

    def _update_ops(self, psock: sk.SkPsock, restore: bool) -> int:
        rt = self._runtime or current_runtime()
        if restore:
            # sk_psock_drop purges ingress_msg: queued datagrams go with the psock
            self._rxq.clear()
            self._rxq_bytes = 0
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

    # -- DatagramEndpoint: what the runtime calls ------------------------------------------

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
        self.datagrams_received += 1
        self.bytes_received += len(data)
        return data

    def transport_fileno(self) -> int:
        return self._raw.fileno()

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Send each buffer as one datagram, below this socket's SK_MSG program,
        waiting while the peer's queue is full (a redirect from a stream's
        receive pump or an SK_MSG program: the source slows down).

        Raises:
            trio.ClosedResourceError: the socket was closed.
            OSError: the send failed (``ECONNREFUSED``: the peer closed;
                ``ENOTCONN``: not connected; ``EMSGSIZE`` ...).
        """
        for buf in bufs:
            await self._wire_send(buf, None)

    def egress_send_nowait(self, data: bytes | memoryview) -> bool:
        """Send ``data`` as one datagram now, or drop it (``tx_drops``) when the
        peer's queue is full. Returns whether it was sent.

        Raises:
            trio.ClosedResourceError: the socket was closed.
            OSError: the send failed otherwise.
        """
        self._check_open()
        try:
            self._raw.send(data, _DONTWAIT)
        except BlockingIOError:
            self.tx_drops += 1
            return False
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        return True

    def rx_failed(self, exc: BaseException) -> None:
        """The receive pump stopped on ``exc``: while receive programs are
        installed, ``receive`` fails with it (reading around the verdict would
        bypass the policy); leaving the map gives plain reading back."""
        self._rx_error = exc
        self.wake_readers()

    def rx_eof(self) -> None:
        """A datagram socket has no end of stream; nothing to do."""

    def wake_readers(self) -> None:
        scope = self._recv_scope
        if scope is not None:
            scope.cancel()

    def queue_datagram(self, data: bytes | memoryview, address: object) -> bool:
        """Put one datagram on the receive queue; drop and count it
        (``sk.drops``) when the queue is full. Never waits."""
        if self._closed:
            return False
        n = len(data)
        psock = self.sk.psock
        limit = psock.rcvbuf if psock is not None else DEFAULT_QUEUE_BYTES
        if self._rxq and self._rxq_bytes + n > limit:
            self.sk.drops += 1
            return False
        self._rxq.append((data, address))
        self._rxq_bytes += n
        self.wake_readers()
        return True

    async def rx_datagrams(self, rt: Runtime, psock: sk.SkPsock) -> int:
        """One round of the receive path: read datagrams until the socket would
        block or :data:`RX_BURST` were handled, running the verdict once per
        datagram and carrying out its decision. Returns the count handled, as
        ``-count - 1`` when the socket would block
        (:meth:`skmsg_core.runtime.DatagramEndpoint.rx_datagrams`).

        Raises:
            OSError: the socket failed for good.
        """
        recvfrom_into = self._raw.recvfrom_into
        buf = _rx_view()
        prog = psock.stream_verdict or psock.skb_verdict
        run = prog.verdict_runner() if prog is not None else None
        skb: Any = self._skb
        queue = self.queue_datagram
        count = passed = redirected = dropped = nbytes = 0
        try:
            for _ in range(RX_BURST):
                try:
                    n, addr = recvfrom_into(buf, 0, _DONTWAIT | _TRUNC)
                except BlockingIOError:
                    return -count - 1
                count += 1
                if n > RX_BUFFER:  # longer than any unprivileged sender's datagram
                    self.sk.drops += 1
                    dropped += n
                    continue
                data = bytes(buf[:n])  # copied out before any await: the buffer is shared
                nbytes += n
                if run is None:
                    passed += n
                    queue(data, addr)
                    continue
                view = memoryview(data)
                verdict = run(skb.reset(view))
                if verdict is _PASS:
                    passed += n
                    queue(data, addr)
                elif verdict is _REDIRECT:
                    target: sk.Sock = skb.sk_redir
                    ingress = bool(skb.flags & sk.BPF_F_INGRESS)
                    skb.reset(_EMPTY)
                    tp = target.psock
                    if tp is None or target.dead or not tp.tx_enabled:
                        dropped += n
                        continue
                    redirected += n
                    if ingress:
                        ingress_try(target, view)
                    else:
                        await egress_try(target, view)
                else:
                    dropped += n
            return count
        finally:
            skb.reset(_EMPTY)
            self.datagrams_received += count
            self.bytes_received += nbytes
            psock.rx_msgs += count
            psock.rx_passed_bytes += passed
            psock.rx_redirected_bytes += redirected
            psock.rx_dropped_bytes += dropped

    # -- sending -------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` as one datagram to the connected peer; with an SK_MSG
        program, through its verdict. Returns ``len(data)``. Waits while the
        peer's receive queue is full.

        Raises:
            OSError(ENOTCONN): the socket is not connected (the kernel's errno).
            SendError: the program dropped the datagram (EACCES, a
                ``PermissionError``), or its redirect target failed (EPIPE, a
                ``BrokenPipeError``).
            OSError(EOPNOTSUPP): the program called ``msg_apply_bytes`` or
                ``msg_cork_bytes``, which do not apply to datagrams; nothing
                was sent.
            OSError: the OS refused the send (``ECONNREFUSED``: the peer closed;
                ``EMSGSIZE`` ...).
            trio.ClosedResourceError: the socket was closed.

        Cancellation: the datagram was either sent whole or not at all.
        """
        self._check_open()
        if self.sk.remote_addr is None and peer_name(self._raw) is None:
            await trio.lowlevel.checkpoint()
            raise sk.kernel_error(
                errno.ENOTCONN, f"send on {self.sk.describe()}: the socket is not connected"
            )
        return await self._send(data, None)

    async def sendto(self, data: bytes | bytearray | memoryview, address: UnixAddress) -> int:
        """Send ``data`` as one datagram to ``address`` (a path or an abstract
        name); with an SK_MSG program, through its verdict.

        Raises:
            SendError: as for :meth:`send`.
            OSError: as for :meth:`send`, but not ENOTCONN: ``ENOENT`` or
                ``ECONNREFUSED`` when nobody is bound at ``address``,
                ``EISCONN`` when the socket is connected elsewhere.
            TypeError: ``address`` is not an AF_UNIX address.
        """
        addr = unix_address(address, "sendto")
        self._check_open()
        return await self._send(data, addr)

    async def _send(self, data: bytes | bytearray | memoryview, address: Any) -> int:
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        n = view.nbytes
        psock = self.sk.psock
        if psock is None or psock.msg_parser is None:
            await self._wire_send(view, address)
            return n
        await trio.lowlevel.checkpoint()
        msg = psock.new_msg()
        if n and msg.append_copy(psock.frag, (view,)) != n:
            msg.free()
            raise sk.kernel_error(errno.EMSGSIZE, f"send on {self.sk.describe()}: {n} bytes")
        verdict = psock.msg_verdict(msg)
        psock.tx_msgs += 1
        target, ingress = psock.sk_redir, psock.redir_ingress
        asked = [
            name
            for name, value in (
                ("msg_apply_bytes", msg.apply_bytes),
                ("msg_cork_bytes", msg.cork_bytes),
            )
            if value
        ]
        # every datagram gets its own verdict: nothing carries over
        psock.eval, psock.sk_redir, psock.apply_bytes, psock.cork_bytes = _NONE, None, 0, 0
        if asked:
            msg.free()
            raise sk.kernel_error(
                errno.EOPNOTSUPP,
                f"send on {self.sk.describe()}: the SK_MSG program called "
                f"{' and '.join(asked)}, which do not apply to datagrams (each datagram "
                "is one message with its own verdict); the datagram was not sent",
            )
        size = msg.size
        if verdict is _PASS or (verdict is _REDIRECT and target is not None):
            bufs = msg.consume(size)
            if verdict is _PASS:
                await self._wire_send(bufs[0] if len(bufs) == 1 else b"".join(bufs), address)
                psock.tx_passed_bytes += size
                return n
            assert target is not None
            try:
                await tx_redirect(sk.TxAction("redirect", target, ingress, bufs, size, False))
            except OSError as exc:
                err = SendError.of(
                    errno.EPIPE,
                    f"send on {self.sk.describe()}: redirect to {target.describe()} "
                    f"failed: {exc.strerror}",
                )
                raise err from exc
            psock.tx_redirected_bytes += size
            return n
        psock.tx_dropped_bytes += msg.free()
        raise SendError.of(
            errno.EACCES,
            f"send on {self.sk.describe()}: the SK_MSG program dropped the datagram "
            f"({n} bytes)",
        )

    async def _wire_send(self, data: bytes | memoryview, address: Any) -> None:
        raw = self._raw
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            try:
                if address is None:
                    raw.send(data, _DONTWAIT)
                else:
                    raw.sendto(data, _DONTWAIT, address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(raw)
                continue
            except OSError as exc:
                closed = closed_error(exc, "Unix datagram socket")
                if closed is not None:
                    raise closed from exc
                if exc.errno == errno.ECONNREFUSED:
                    self._refresh_state()  # the kernel disconnected it
                raise
            break
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- receiving -------------------------------------------------------------------------

    async def receive(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> bytes:
        """Receive one datagram, at most ``max_bytes`` of it (the rest of a longer
        one is discarded, as ``recv`` does). With receive programs, the datagrams
        the verdict passed and those other sockets redirected here, one per call.

        Raises:
            ValueError: ``max_bytes`` < 1.
            trio.BusyResourceError: another task is receiving on this socket.
            trio.ClosedResourceError: the socket was closed.
            trio.BrokenResourceError: the receive pump failed while the socket
                has receive programs (the ``__cause__`` says why).
        """
        data, _ = await self.recvfrom(max_bytes)
        return data

    async def recvfrom(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> tuple[bytes, Any]:
        """Receive one datagram and its source address (``None`` from an unnamed
        socket, and for a datagram another socket redirected here, as in the
        kernel). Errors as :meth:`receive`."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError(
                "another task is currently receiving on this UnixDatagramSocket"
            )
        self._receiving = True
        try:
            return await self._recvfrom(max_bytes)
        finally:
            self._receiving = False

    async def _recvfrom(self, max_bytes: int) -> tuple[bytes, Any]:
        while True:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("this Unix datagram socket was closed")
            if self._rxq:
                await trio.lowlevel.checkpoint()
                if not self._rxq:
                    continue  # purged meanwhile
                data, addr = self._rxq.popleft()
                self._rxq_bytes -= len(data)
                return bytes(data[:max_bytes]), addr
            psock = self.sk.psock
            rt = self._runtime
            pumping = psock is not None and rt is not None and rt.pumping(self)
            if not pumping and psock is not None and psock.rx_mode is not None:
                # the pump stopped on an error: fail closed, never read around it
                await trio.lowlevel.checkpoint()
                raise trio.BrokenResourceError(
                    f"{self.sk.describe()}: the receive pump stopped: {self._rx_error}"
                ) from self._rx_error
            if not pumping:
                await trio.lowlevel.checkpoint_if_cancelled()
                got = self._try_recvfrom(max_bytes)
                if got is not None:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return got
            # Wait in a scope that any change cancels (wake_readers, a queued
            # datagram): a cancelled wait consumed nothing, so looking again is safe.
            with trio.CancelScope() as scope:
                self._recv_scope = scope
                try:
                    if pumping:
                        await trio.sleep_forever()
                    else:
                        await trio.lowlevel.wait_readable(self._raw)
                finally:
                    self._recv_scope = None

    def _try_recvfrom(self, max_bytes: int) -> tuple[bytes, Any] | None:
        try:
            data, addr = self._raw.recvfrom(max_bytes, _DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            closed = closed_error(exc, "Unix datagram socket")
            if closed is not None:
                raise closed from exc
            raise
        self.datagrams_received += 1
        self.bytes_received += len(data)
        return data, addr

    # -- closing ---------------------------------------------------------------------------

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sk.close()
        self._rxq.clear()
        self._rxq_bytes = 0
        self.wake_readers()
        # outside trio (a map operation from sync code) nobody can be waiting
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(self._raw)
        self._raw.close()

    def close(self) -> None:
        """Close now: the socket leaves every map (queued datagrams are
        discarded), then the OS socket closes. Idempotent."""
        if self._adopted_fd >= 0:
            self._close_adopted()
        else:
            self._close_now()

    async def aclose(self) -> None:
        """:meth:`close`, and a checkpoint."""
        self.close()
        await trio.lowlevel.checkpoint()

    # -- extras ----------------------------------------------------------------------------

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        """``setsockopt`` on the underlying socket."""
        self._raw.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> int | bytes:
        """``getsockopt`` on the underlying socket."""
        if buffersize:
            return self._raw.getsockopt(level, option, buffersize)
        return self._raw.getsockopt(level, option)

    def statistics(self) -> UnixDatagramStats:
        """Datagrams through the socket, drops, the queue, and the psock's
        counters when in a map."""
        psock = self.sk.psock
        return UnixDatagramStats(
            self.datagrams_sent,
            self.bytes_sent,
            self.datagrams_received,
            self.bytes_received,
            self.sk.drops,
            self.tx_drops,
            len(self._rxq),
            self._rxq_bytes,
            psock.statistics() if psock is not None else None,
        )

    def __repr__(self) -> str:
        return f"<UnixDatagramSocket {self.sk.describe()}>"
