"""``UdpSocket``: a UDP socket a user holds, with the kernel's sockmap hooks.

Theory of operation
-------------------
Outside any map a ``UdpSocket`` is a trio datagram socket: ``send``/``sendto``
one datagram, ``receive``/``recvfrom`` one datagram (its boundary kept), with
trio's checkpoints and errors. When it enters a map the core calls
``UdpProto.psock_update_sk_prot`` and the socket's operations change, as the
kernel's ``udp_bpf_update_proto`` swaps ``sk_prot``:

- with receive programs (an ``SK_SKB_STREAM_VERDICT`` or ``SK_SKB_VERDICT``;
  verdict mode, UDP has no stream parser) the runtime reads the socket in
  bursts (:meth:`UdpSocket.rx_datagrams`: nonblocking ``recvfrom`` until the
  socket would block) and runs the verdict **once per datagram**: PASS puts
  the datagram (and its source address) on this socket's receive queue;
  DROP discards it; a redirect sends it out of another connected socket
  (egress: one datagram, or one message's bytes on a TCP stream) or puts it on
  another socket's receive queue (``BPF_F_INGRESS``: one datagram, or one
  message's bytes on a TCP stream's ingress queue). ``receive`` then reads
  the queue only.
- with an ``SK_MSG_VERDICT`` program (beyond the kernel, which runs no SK_MSG
  program on UDP) every ``send``/``sendto`` runs it once on its datagram:
  PASS sends it, DROP fails the call with ``EACCES``, a redirect hands the
  datagram to the target. ``msg_apply_bytes`` and ``msg_cork_bytes`` cannot
  apply to a datagram: a program that calls them fails the send with
  ``EOPNOTSUPP`` saying so, and nothing is sent.
- with a psock but no receive programs, ``receive`` reads the queue first
  (datagrams other sockets redirected here) and the socket otherwise.

Queues are bounded by the psock's ``rcvbuf`` (bytes). A datagram arriving at
a full queue is dropped and counted in ``sk.drops`` (UDP's contract); the
receive loop never waits for a reader. Egress out of a UDP socket never waits
either: a send that would block drops the datagram (``tx_drops``).

All I/O is on the stdlib socket with ``MSG_DONTWAIT``, waiting with trio's
``wait_readable``/``wait_writable``, so a socket adopted from a user's file
descriptor (:func:`skmsg_udp.adopt_fd`, a map update by fd) never changes that fd's
blocking mode.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket as stdsocket
from collections import deque
from typing import Any

import trio

import skmsg_core as sk
from skmsg_core.runtime import Runtime, current_runtime, escapes_boundary, ingress_try, tx_redirect

from ._proto import UDP_PROTO
from ._util import SendError, UdpStats, _is_udp, _name, _writable_now, cookie_of

__all__ = ["SendError", "UdpSocket", "UdpStats"]

#: The largest UDP payload (IPv4: 65535 - 20 - 8); receive buffers are this big.
MAX_DATAGRAM = 65507
#: The receive queue's limit when the socket has no psock (``SO_RCVBUF``'s default).
DEFAULT_QUEUE_BYTES = 212992
#: Datagrams one burst handles before it lets other tasks run.
RX_BURST = 64
_DONTWAIT = stdsocket.MSG_DONTWAIT
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
#: Errors a UDP socket reports once from an earlier ICMP message (``sk_err``):
#: the next receive raises them; the receive loop keeps going.
_SOFT_ERRORS = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.EMSGSIZE,
}
_PASS, _REDIRECT, _NONE = sk.Verdict.PASS, sk.Verdict.REDIRECT, sk.Verdict.NONE
_EMPTY = memoryview(b"")

#: Sockets adopted from a user's fd (:func:`skmsg_udp.adopt_fd`), by that fd: the
#: maps hold them, as the kernel's do.
_adopted: dict[int, UdpSocket] = {}


class UdpSocket(trio.abc.AsyncResource):
    """A UDP socket (IPv4 or IPv6, bound or not, connected or not) that can sit
    in socket maps.

    Build one with :func:`open_udp_socket`, or from a trio or stdlib UDP socket
    (the object takes the socket over). ``sk`` is the core's view of it:
    ESTABLISHED while connected, CLOSE otherwise.

    Raises (constructor):
        TypeError: ``sock`` is not a socket object.
        ValueError: ``sock`` is not an AF_INET/AF_INET6 UDP socket.
    """

    #: The runtime's mark of a datagram endpoint: each message it is handed is
    #: one datagram.
    datagram = True

    def __init__(
        self,
        sock: trio.socket.SocketType | stdsocket.socket,
        *,
        proto: sk.SkProto | None = None,
        _adopted_fd: int = -1,
    ) -> None:
        if isinstance(sock, trio.socket.SocketType):
            family, stype, sproto = sock.family, sock.type, sock.proto
            raw = stdsocket.socket(family, stype, sproto, fileno=sock.detach())
        elif isinstance(sock, stdsocket.socket):
            raw = sock
        else:
            raise TypeError(f"UdpSocket requires a socket object, not {type(sock).__name__}")
        if not _is_udp(raw):
            raise ValueError(
                f"UdpSocket requires an AF_INET or AF_INET6 SOCK_DGRAM (UDP) socket, not {raw!r}"
            )
        if _adopted_fd < 0:
            raw.setblocking(False)
        self._raw = raw
        self._adopted_fd = _adopted_fd
        peer = _name(raw.getpeername)
        self.sk = sk.Sock(
            proto or UDP_PROTO,
            family=raw.family,
            type=stdsocket.SOCK_DGRAM,
            protocol=stdsocket.IPPROTO_UDP,
            state=sk.TcpState.ESTABLISHED if peer else sk.TcpState.CLOSE,
            local_addr=_name(raw.getsockname),
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
        self._send_lock = trio.Lock()
        self._runtime: Runtime | None = current_runtime()
        self._pending_error: OSError | None = None
        self._rx_error: BaseException | None = None
        self._closed = False
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.datagrams_received = 0
        self.bytes_received = 0
        self.tx_drops = 0
        sk.plugins().sock_created(self.sk)

    # -- addresses -----------------------------------------------------------------------

    @property
    def family(self) -> int:
        """``AF_INET`` or ``AF_INET6``."""
        return int(self._raw.family)

    def getsockname(self) -> Any:
        """The local address (``getsockname``)."""
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

    async def _resolve(self, address: Any) -> Any:
        """A numeric socket address for ``address`` (a host name is resolved
        through trio, off the event loop)."""
        if not isinstance(address, tuple) or len(address) < 2:
            raise ValueError(f"a UDP address is a (host, port) tuple, not {address!r}")
        host = address[0]
        try:
            ipaddress.ip_address(host if host else "0.0.0.0")
            return address
        except ValueError:
            pass
        infos = await trio.socket.getaddrinfo(
            host, address[1], self._raw.family, stdsocket.SOCK_DGRAM
        )
        if not infos:  # pragma: no cover - getaddrinfo raises instead
            raise OSError(errno.EADDRNOTAVAIL, f"{host!r} has no {self._raw.family!r} address")
        return infos[0][4]

    async def bind(self, address: Any) -> None:
        """Bind to ``address`` (``(host, port)``; port 0 picks one).

        Raises:
            OSError: the bind failed (``EADDRINUSE`` ...).
        """
        resolved = await self._resolve(address)
        self._check_open()
        self._raw.bind(resolved)
        self._refresh_state()

    async def connect(self, address: Any) -> None:
        """Connect to ``address``: the default destination of :meth:`send`, the
        only source :meth:`receive` accepts, and the state that makes this
        socket a redirect target (ESTABLISHED). Never blocks on the network.

        Raises:
            OSError: the connect failed.
        """
        resolved = await self._resolve(address)
        self._check_open()
        self._raw.connect(resolved)
        self._refresh_state()

    def connect_nowait(self, address: Any) -> None:
        """:meth:`connect` to a numeric ``address`` now: no name resolution, no
        checkpoint. Connecting a connected socket again re-targets it, as the
        kernel's ``connect`` does: from then on only the new peer's datagrams
        reach it (datagrams already queued stay queued), and it stays in its maps.

        Raises:
            ValueError: ``address`` is not a ``(host, port, ...)`` tuple with a
                numeric IP address.
            OSError: the connect failed.
            trio.ClosedResourceError: the socket was closed.
        """
        if not isinstance(address, tuple) or len(address) < 2:
            raise ValueError(f"a UDP address is a (host, port) tuple, not {address!r}")
        try:
            stdsocket.inet_pton(self._raw.family, address[0])
        except (OSError, TypeError):
            raise ValueError(
                f"connect_nowait needs a numeric IP address of the socket's family, "
                f"not {address[0]!r}"
            ) from None
        self._check_open()
        self._raw.connect(address)
        self._refresh_state()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this UDP socket was closed")

    def _refresh_state(self) -> None:
        """Bring ``sk`` up to date with the OS (``UdpProto.sk_refresh_state``)."""
        s = self.sk
        if self._closed or s.dead:
            s.state = sk.TcpState.CLOSE
            return
        if self._adopted_fd >= 0 and not self._adopted_fd_alive():
            self._close_adopted()
            return
        s.local_addr = _name(self._raw.getsockname)
        s.remote_addr = _name(self._raw.getpeername)
        s.state = sk.TcpState.ESTABLISHED if s.remote_addr else sk.TcpState.CLOSE

    # -- adoption (a map update by an fd no plugin wrapped) --------------------------------

    def _adopted_fd_alive(self) -> bool:
        """Whether the user's fd still refers to this socket (not closed, not reused)."""
        fd = self._adopted_fd
        try:
            probe = stdsocket.socket(fileno=fd)
        except OSError:
            return False
        try:
            return cookie_of(probe) == self.sk.cookie
        finally:
            probe.detach()

    def _close_adopted(self) -> None:
        """The user closed the fd, or the socket left its last map: let it go."""
        if self._closed:
            return
        if _adopted.get(self._adopted_fd) is self:
            del _adopted[self._adopted_fd]
        self._close_now()

    # -- the seam: called by UdpProto.psock_update_sk_prot ---------------------------------

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

    # -- Endpoint: what the runtime calls --------------------------------------------------

    async def transport_recv(self, max_bytes: int) -> bytes:
        data, _ = await self._recvfrom_socket(max_bytes)
        return data

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
        """Send each buffer as one datagram, below this socket's SK_MSG program.
        A datagram that cannot go without waiting is dropped (``tx_drops``).

        Raises:
            OSError: the socket failed (``ECONNREFUSED`` from an earlier ICMP ...).
        """
        for buf in bufs:
            self.egress_send_nowait(buf)
        await trio.lowlevel.checkpoint()

    def egress_send_nowait(self, data: bytes | memoryview) -> bool:
        """Send ``data`` as one datagram now, or drop it (``tx_drops``) if the
        socket's send buffer is full. Returns whether it was sent.

        Raises:
            trio.ClosedResourceError: the socket was closed.
            OSError: the send failed otherwise.
        """
        if self._closed:
            raise trio.ClosedResourceError("this UDP socket was closed")
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

    def _soft_error(self, exc: OSError) -> None:
        """An error an earlier ICMP message left: the next receive reports it once."""
        if self._pending_error is None:
            self._pending_error = exc
        self.wake_readers()

    def rx_eof(self) -> None:
        """UDP has no end of stream; nothing to do."""

    def wake_readers(self) -> None:
        scope = self._recv_scope
        if scope is not None:
            scope.cancel()

    def queue_datagram(self, data: bytes | memoryview, address: Any) -> bool:
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
        scope = self._recv_scope
        if scope is not None:
            scope.cancel()
        return True

    async def rx_datagrams(self, rt: Runtime, psock: sk.SkPsock) -> int:
        """One round of the receive path: ``recvfrom`` until the socket would
        block or :data:`RX_BURST` datagrams were handled, running the verdict
        once per datagram and carrying out its decision. Returns the count
        handled, as ``-count - 1`` when the socket would block
        (:meth:`skmsg_core.runtime.DatagramEndpoint.rx_datagrams`).

        Raises:
            OSError: the socket failed for good.
        """
        raw = self._raw
        recvfrom = raw.recvfrom
        prog = psock.stream_verdict or psock.skb_verdict
        run = prog.verdict_runner() if prog is not None else None
        skb: Any = self._skb
        # a program that declared its reads sees them only (skb.reset cuts data)
        skb._reads = sk.ALL_BYTES if prog is None or prog.reads is None else prog.reads
        queue = self.queue_datagram
        count = passed = redirected = dropped = nbytes = 0
        try:
            for _ in range(RX_BURST):
                try:
                    data, addr = recvfrom(MAX_DATAGRAM, _DONTWAIT)
                except BlockingIOError:
                    return -count - 1
                except OSError as exc:
                    if exc.errno in _SOFT_ERRORS:
                        self._soft_error(exc)
                        continue
                    raise
                n = len(data)
                count += 1
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
                    tp = target.psock
                    if tp is None or target.dead or not tp.tx_enabled:
                        dropped += n
                        continue
                    redirected += n
                    if skb.flags & sk.BPF_F_INGRESS:
                        ingress_try(target, view)
                        continue
                    owner = target.owner
                    try:
                        send_now = getattr(owner, "egress_send_nowait", None)
                        if send_now is not None:
                            send_now(view)
                        elif owner is not None:
                            await self._egress_stream(target, owner, view)
                        else:
                            raise trio.ClosedResourceError
                    except BaseException as exc:  # the target's failure, never ours
                        if escapes_boundary(exc):
                            raise
                        rt.redirect_errors += 1
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

    async def _egress_stream(self, target: sk.Sock, owner: Any, view: memoryview) -> None:
        """A datagram out of a stream target (TCP): one message's bytes, in order
        with the stream's other writes. A target that cannot take bytes now (not
        writable) drops the datagram and counts it in ``target.drops``: the
        receive loop does not wait on a stalled stream."""
        fd = owner.transport_fileno()
        if fd >= 0 and not _writable_now(fd):
            target.drops += 1
            return
        await owner.egress_write([view], False)

    # -- sending -------------------------------------------------------------------------

    async def send(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` as one datagram to the connected peer; with an SK_MSG
        program, through its verdict. Returns ``len(data)``.

        Raises:
            OSError(EDESTADDRREQ): the socket is not connected.
            SendError: (a ``PermissionError``) the program dropped the datagram
                (EACCES), or its redirect target failed (EPIPE).
            OSError(EOPNOTSUPP): the program called ``msg_apply_bytes`` or
                ``msg_cork_bytes``, which do not apply to datagrams; nothing
                was sent.
            OSError: the OS refused the send (``EMSGSIZE``, ``ECONNREFUSED`` ...).
            trio.ClosedResourceError: the socket was closed.

        Cancellation: the datagram was either sent whole or not at all.
        """
        self._check_open()
        if self.sk.remote_addr is None and _name(self._raw.getpeername) is None:
            await trio.lowlevel.checkpoint()
            raise sk.kernel_error(
                errno.EDESTADDRREQ, f"send on {self.sk.describe()}: the socket is not connected"
            )
        return await self._send(data, None)

    async def sendto(self, data: bytes | bytearray | memoryview, address: Any) -> int:
        """Send ``data`` as one datagram to ``address`` (``(host, port)``, or the
        4-tuple of IPv6); with an SK_MSG program, through its verdict.

        Raises:
            SendError, OSError, trio.ClosedResourceError: as :meth:`send`
                (never EDESTADDRREQ).
            ValueError: ``address`` is not a tuple.
        """
        self._check_open()
        resolved = await self._resolve(address)
        return await self._send(data, resolved)

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
            for name, value in (("msg_apply_bytes", msg.apply_bytes),
                                ("msg_cork_bytes", msg.cork_bytes))
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
            if self._closed:
                raise trio.ClosedResourceError("this UDP socket was closed")
            try:
                if address is None:
                    raw.send(data, _DONTWAIT)
                else:
                    raw.sendto(data, _DONTWAIT, address)
            except BlockingIOError:
                async with self._send_lock:
                    await trio.lowlevel.wait_writable(raw)
                continue
            except OSError as exc:
                if exc.errno in _CLOSED_ERRNOS:
                    raise trio.ClosedResourceError("this UDP socket was closed") from exc
                raise
            break
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        await trio.lowlevel.cancel_shielded_checkpoint()

    # -- receiving -------------------------------------------------------------------------

    async def receive(self, max_bytes: int = MAX_DATAGRAM) -> bytes:
        """Receive one datagram, at most ``max_bytes`` of it (the rest of a longer
        one is discarded, as ``recv`` does). With receive programs, the datagrams
        the verdict passed and those other sockets redirected here.

        Raises:
            ValueError: ``max_bytes`` < 1.
            trio.BusyResourceError: another task is receiving on this socket.
            trio.ClosedResourceError: the socket was closed.
            trio.BrokenResourceError: the receive pump failed while the socket
                has receive programs (the ``__cause__`` says why).
            OSError: an error an earlier ICMP message left (``ECONNREFUSED`` ...),
                reported once.
        """
        data, _ = await self.recvfrom(max_bytes)
        return data

    async def recvfrom(self, max_bytes: int = MAX_DATAGRAM) -> tuple[bytes, Any]:
        """Receive one datagram and its source address (``None`` for a datagram
        another socket redirected here: it has no address, as in the kernel).
        Errors as :meth:`receive`."""
        self._may_receive(max_bytes)
        self._receiving = True
        try:
            return await self._recvfrom(max_bytes)
        finally:
            self._receiving = False

    async def _recvfrom(self, max_bytes: int) -> tuple[bytes, Any]:
        while True:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("this UDP socket was closed")
            if self._rxq:
                await trio.lowlevel.checkpoint()
                if not self._rxq:
                    continue  # purged meanwhile
                data, addr = self._rxq.popleft()
                self._rxq_bytes -= len(data)
                return bytes(data[:max_bytes]), addr
            err = self._pending_error
            if err is not None:
                self._pending_error = None
                await trio.lowlevel.checkpoint()
                raise err
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

    def _may_receive(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is currently receiving on this UdpSocket")

    def recvfrom_nowait(self, max_bytes: int = MAX_DATAGRAM) -> tuple[bytes, Any] | None:
        """:meth:`recvfrom` without waiting or a checkpoint: the next datagram and
        its source address if one is there now, else None. For a loop that
        drains a busy socket before it waits (with :meth:`recvfrom`) again.

        Raises:
            ValueError: ``max_bytes`` < 1.
            trio.BusyResourceError: another task is receiving on this socket.
            trio.ClosedResourceError: the socket was closed.
            trio.BrokenResourceError: the receive pump failed while the socket
                has receive programs (the ``__cause__`` says why).
            OSError: an error an earlier ICMP message left (``ECONNREFUSED`` ...),
                reported once.
        """
        self._may_receive(max_bytes)
        self._check_open()
        if self._rxq:
            data, addr = self._rxq.popleft()
            self._rxq_bytes -= len(data)
            return bytes(data[:max_bytes]), addr
        err = self._pending_error
        if err is not None:
            self._pending_error = None
            raise err
        psock = self.sk.psock
        if psock is not None:
            rt = self._runtime
            if rt is not None and rt.pumping(self):
                return None  # the pump reads the socket: only its queue is ours
            if psock.rx_mode is not None:  # the pump stopped on an error: fail closed
                raise trio.BrokenResourceError(
                    f"{self.sk.describe()}: the receive pump stopped: {self._rx_error}"
                ) from self._rx_error
        return self._try_recvfrom(max_bytes)

    def _try_recvfrom(self, max_bytes: int) -> tuple[bytes, Any] | None:
        try:
            data, addr = self._raw.recvfrom(max_bytes, _DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _CLOSED_ERRNOS:
                raise trio.ClosedResourceError("this UDP socket was closed") from exc
            raise
        self.datagrams_received += 1
        self.bytes_received += len(data)
        return data, addr

    async def _recvfrom_socket(self, max_bytes: int) -> tuple[bytes, Any]:
        while True:
            got = self._try_recvfrom(max_bytes)
            if got is not None:
                return got
            await trio.lowlevel.wait_readable(self._raw)

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
        """Close the socket now, as trio's socket's ``close``: it leaves every map
        (queued datagrams are discarded), then the OS socket closes. Idempotent."""
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

    def statistics(self) -> UdpStats:
        """Datagrams through the transport, drops, the queue, and the psock's
        counters when in a map."""
        psock = self.sk.psock
        return UdpStats(
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
        return f"<UdpSocket {self.sk.describe()}>"
