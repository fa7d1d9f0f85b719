"""``skmsg proxy --udp``: a datagram L7 proxy and load balancer on socket maps.

Theory of operation
-------------------
Every datagram is one message: there is no parser. The data path is the
runtime's, both ways; the proxy's own tasks set sessions up and end them.

- A *listener*, an unconnected :class:`~skmsg_udp.UdpSocket` bound to
  ``--listen``, receives every client datagram; the proxy's serving task
  reads it in bursts and hands each datagram to its client's *session*
  (by source address), opening one for a new client: a *client slot* for the
  client and one socket connected to each backend.
- A client slot is a socket of the proxy's own (protocol ``client slot``,
  no file descriptor) that stands for the client in ``clients``, a
  :class:`~skmsg_core.SockHash` keyed by its cookie, as a connected socket
  would: sending out of it sends from the listener to the client
  (``sendto``). So a client costs no socket of its own on the listened
  address, where the kernel would look through every one for each datagram
  that reaches it.
- ``clients`` has the route program as its ``SK_SKB_VERDICT``. The serving
  task runs it on each client datagram with the client's slot as
  ``skb.sk``: it hands the policy's ``verdict(skb, backends)`` this client's
  backend sockets (a per-session :class:`~skmsg_core.SockMap`, index ``i`` =
  the ``i``-th backend: the kernel's hash-of-maps), and the datagram is sent
  out of the backend socket the policy picked.
- Each session's backend map has the reply program as its ``SK_SKB_VERDICT``,
  run by the runtime's receive pumps: it redirects every datagram a backend
  answers to the client slot's egress (``sk_redirect_hash(skb, clients, key,
  0)``), so the reply leaves from the proxy's address to the client that
  asked. The reply table is keyed by the backend socket: its cookie names the
  slot it answers for.

Units: sockets kept across sessions
-----------------------------------
A resolver sends each query from a fresh source port, so every query is a
session, and building one (a socket per backend, each entering a map) costs
more than carrying its datagrams. The sockets of a session are therefore a
*unit* that outlives it: when a session ends its unit is kept, and the next
new client gets it (its slot now standing for that client). The backend
sockets, their map and their place in the reply table stay as they are; at
most ``max_clients`` units exist, and a kept unit unused for ``idle_timeout``
seconds is closed. Before a unit changes hands, the replies its backends sent
before the session ended are carried to the client they answer (through the
reply program): none is lost or misdelivered.

When sessions end
-----------------
A session with no datagram either way for ``idle_timeout`` seconds ends
(UDP has no end of stream; reason ``idle``). When ``max_clients`` sessions
exist and a new client arrives, the least recently active session that is
not waiting for a reply (its last datagram was a backend's answer) gives its
unit to the new client (reason ``evicted``), as conntrack drops an entry
early when its table is full; if the sixteen least recently active sessions
all wait for replies the new client is refused (counted in
``connect_errors``). A reply that arrives after its session ended is dropped
and counted (``reply_dropped_bytes``).

Whatever is raised while opening, carrying or ending one session (cancellation
and Ctrl-C aside) ends that session, closes its unit and is counted
(``client_errors``) and logged, rate-limited: the proxy and the other
sessions carry on, as in the TCP proxy. Counters and the table are the TCP
proxy's (:mod:`._stats`): ``clients`` are sessions; ``backend connect``
errors are sessions that could not be opened (no socket, or every session
waiting for a reply).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime, escapes_boundary, log_event, open_runtime

from ._policy import Policy, PolicyError
from ._proxy import Address, ProxyError, ProxyPrograms, _why
from ._stats import ProxyCounters

__all__ = ["UdpProxy", "UdpProxyConfig", "run_udp_demo", "run_udp_proxy", "serve_udp_echo"]

log = logging.getLogger("skmsg")

#: What the UDP demo client sends, one datagram each.
UDP_DEMO_PAYLOADS = (b"hello", b"kiwi", b"zebra", b"!secret")
DEMO_TIMEOUT = 5.0
#: How many of the least recently active sessions a full proxy looks at for one
#: that is not waiting for a reply.
EVICT_SCAN = 16
#: The most datagrams taken off one socket when a unit changes hands (a socket
#: that keeps receiving cannot hold the proxy).
DRAIN_LIMIT = 256
#: The listener's ``SO_RCVBUF`` asked for (bytes).
LISTENER_RCVBUF = 4 << 20
#: The most datagrams the listener takes in one go (no checkpoint between them).
LISTEN_BURST = 16
_MAX_DATAGRAM = 65535
_DONTWAIT = socket.MSG_DONTWAIT


@attrs.frozen
class UdpProxyConfig:
    """What ``skmsg proxy --udp`` was asked to do. No backends: embedded echo backends."""

    listen: Address = attrs.field(factory=lambda: Address("127.0.0.1", 7000))
    backends: tuple[Address, ...] = ()
    policy: str | None = None
    max_clients: int = 1024
    echo_backends: int = 2
    idle_timeout: float = 30.0
    #: ``--policy-budget``: see :class:`~skmsg.ProxyConfig`.
    policy_budget: float = sk.DEFAULT_BUDGET


@attrs.frozen
class _Datagrams:
    """What the announcement says about framing: none, a datagram is a message."""

    name: str = "none (--udp: one message per datagram)"


class _ClientSlotProto(sk.SkProtoBase):
    """The protocol of client slots: the kernel's rules for a connected UDP
    socket, and no operations to swap (a slot has no receive side)."""

    name = "client slot"


CLIENT_SLOT_PROTO = _ClientSlotProto()


class _ClientSlot:
    """A client, as ``clients`` holds it (see the module): a redirect to it
    sends the datagram from the listener (``send``: a stdlib socket bound to
    ``--listen``) to ``peer``. A datagram the listener's send buffer cannot
    take now is dropped and counted (``tx_drops``), as a UDP socket's own
    non-blocking send would drop it."""

    __slots__ = ("bytes_sent", "datagrams_sent", "peer", "send", "sk", "tx_drops")

    def __init__(self, send: socket.socket, family: int) -> None:
        self.send = send
        self.peer: Any = None
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.tx_drops = 0
        self.sk = sk.Sock(
            CLIENT_SLOT_PROTO,
            family=family,
            type=socket.SOCK_DGRAM,
            protocol=socket.IPPROTO_UDP,
            state=sk.TcpState.ESTABLISHED,
            local_addr=send.getsockname(),
            owner=self,
        )

    def serve(self, peer: Any) -> None:
        """Stand for ``peer`` from now on (None: for nobody)."""
        self.peer = peer
        self.sk.remote_addr = peer

    # -- what the runtime calls on a redirect target ------------------------------------

    def egress_send_nowait(self, data: bytes | memoryview) -> bool:
        """Send ``data`` to the client as one datagram now, or drop it (counted
        in ``tx_drops``) if the listener's send buffer is full. Returns whether
        it was sent.

        Raises:
            trio.ClosedResourceError: the slot stands for no client.
            OSError: the send failed otherwise.
        """
        peer = self.peer
        if peer is None:
            raise trio.ClosedResourceError("this client slot serves no client")
        try:
            self.send.sendto(data, _DONTWAIT, peer)
        except BlockingIOError:
            self.tx_drops += 1
            return False
        self.datagrams_sent += 1
        self.bytes_sent += len(data)
        return True

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Send each buffer as one datagram (see :meth:`egress_send_nowait`).

        Raises:
            trio.ClosedResourceError, OSError: as :meth:`egress_send_nowait`.
        """
        for buf in bufs:
            self.egress_send_nowait(buf)
        await trio.lowlevel.checkpoint()

    def rx_failed(self, exc: BaseException) -> None:
        """A slot has no receive side: nothing to do."""

    def rx_eof(self) -> None:
        """A slot has no receive side: nothing to do."""

    def wake_readers(self) -> None:
        """A slot has no readers: nothing to do."""

    def __repr__(self) -> str:
        return f"<client slot {self.sk.cookie} for {_fmt(self.peer)}>"


@attrs.define(eq=False)
class _Unit:
    """A session's sockets, kept across sessions (see the module)."""

    client: _ClientSlot
    conns: list[skmsg_udp.UdpSocket]
    backends: sk.SockMap
    key: int  # the client slot's cookie
    #: every backend socket of the unit: which have datagrams (or an error)
    #: queued, in one ``poll``, so draining an empty unit raises and catches nothing
    queued: select.poll = attrs.field(factory=select.poll)
    session: _Session | None = None
    kept_since: float = 0.0

    def __attrs_post_init__(self) -> None:
        for conn in self.conns:
            self.queued.register(conn.fileno(), select.POLLIN)

    def ready(self) -> set[int]:
        """The file descriptors of the unit's sockets that have something queued."""
        return {fd for fd, _ in self.queued.poll(0)}


@attrs.define(eq=False)
class _Session:
    """One client (a source address) and the unit serving it."""

    peer: Any
    unit: _Unit
    opened: float
    last: float
    waiting: bool = False
    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0

    @property
    def label(self) -> str:
        """The client's address as the logs and the table show it."""
        return _fmt(self.peer)


class UdpProxy(ProxyPrograms):
    """A running UDP proxy: its maps, programs, sessions, units and counters.

    Built by :func:`run_udp_proxy`, which hands it to ``task_status.started``.
    The attributes the command's announcement and demo read are the TCP
    :class:`~skmsg.Proxy`'s: ``listen``, ``backends``, ``embedded``,
    ``policy``, ``framing``, ``counters``, ``verdict``, :meth:`statistics`.
    ``sessions`` holds the open sessions, least recently active first.
    """

    udp = True
    unit = "datagram"
    client = "client session"

    def __init__(
        self,
        config: UdpProxyConfig,
        *,
        policy: Policy,
        listener: skmsg_udp.UdpSocket,
        listener_raw: socket.socket,
        backends: tuple[Address, ...],
        backend_addrs: tuple[Any, ...],
        runtime: Runtime,
    ) -> None:
        self.config = config
        self.policy = policy
        self.framing = _Datagrams()
        self.listener = listener
        self._listener_raw = listener_raw  # what client slots send from
        self._listen_addr = listener.getsockname()
        self.listen = (Address.of(self._listen_addr),)
        self.backends = backends
        self._backend_addrs = backend_addrs
        self.embedded = not config.backends
        self.runtime = runtime
        self.counters = ProxyCounters([str(b) for b in backends])
        self._observe(len(backends))
        self.clients = sk.SockHash(max_entries=config.max_clients, name="udp clients")
        #: open sessions by client slot cookie, least recently active first
        self.sessions: OrderedDict[int, _Session] = OrderedDict()
        self._by_peer: dict[Any, _Session] = {}
        self._units: dict[int, _Unit] = {}  # every unit by client slot cookie
        self._kept: OrderedDict[int, _Unit] = OrderedDict()  # units between sessions
        self._tx_drops_closed = 0  # replies the closed units' client slots dropped
        self._owner: dict[int, int] = {}  # backend socket cookie -> client slot cookie
        self._index: dict[int, int] = {}  # backend socket cookie -> backend index
        self._logged_errors = 0
        budget = config.policy_budget
        self.verdict = sk.Program.load(
            self._route, sk.BpfProgType.SK_SKB, name=f"verdict ({policy.name})", budget=budget
        )
        self.reply = sk.Program.load(
            self._reply, sk.BpfProgType.SK_SKB, name="reply", budget=budget
        )
        self.clients.attach(self.verdict, sk.SK_SKB_VERDICT)

    # -- the programs --------------------------------------------------------------------

    def _route(self, skb: sk.SkBuff) -> int:
        """The clients' verdict: the policy's, given this client's backends."""
        key = skb.sk.cookie if skb.sk is not None else 0
        session = self.sessions.get(key)
        if session is None:
            return self._judge(skb, None)
        self.sessions.move_to_end(key)
        session.last = time.monotonic()
        session.datagrams_in += 1
        session.bytes_in += skb.len
        ret = self._judge(skb, session.unit.backends)
        if skb.sk_redir is not None and sk.verdict_of(ret):
            session.waiting = True  # a request went to a backend (the return read as
            # the runner reads it: none of its code runs)
        return ret

    def _reply(self, skb: sk.SkBuff) -> int:
        """The backend sockets' verdict: back to the client whose session owns
        the socket; dropped (and counted) when it has none now."""
        cookie = skb.sk.cookie if skb.sk is not None else 0
        key = self._owner.get(cookie)
        session = self.sessions.get(key) if key is not None else None
        if session is None or key is None:
            return self._count_reply(skb, cookie, sk.SK_DROP)
        self.sessions.move_to_end(key)
        session.last = time.monotonic()
        session.waiting = False
        session.datagrams_out += 1
        session.bytes_out += skb.len
        return self._count_reply(skb, cookie, sk.sk_redirect_hash(skb, self.clients, key, 0))

    # -- serving -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Receive new clients' datagrams on the listener until cancelled.

        A datagram whose session cannot be opened or carried (anything raised
        but cancellation and Ctrl-C) ends that session, is counted
        (``client_errors``) and logged; the next datagram is served.

        Cancellation closes every session and unit.
        """
        listener = self.listener
        try:
            while True:
                # what is queued, up to a burst, then one checkpoint: a scheduler
                # pass per burst, not per datagram
                for _ in range(LISTEN_BURST):
                    got = listener.recvfrom_nowait()
                    if got is None:
                        break
                    self._dispatch(*got)
                else:
                    await trio.lowlevel.checkpoint()
                    continue
                await trio.lowlevel.wait_readable(listener)
        finally:
            for session in list(self.sessions.values()):
                self._end(session, "shutdown", keep=False, deliver=False)
            for unit in list(self._units.values()):
                self._close_unit(unit)

    def _dispatch(self, data: bytes, peer: Any) -> None:
        """Serve one client datagram: its client's session, opened if need be,
        carries it."""
        try:
            session = self._by_peer.get(peer)
            if session is None:
                session = self._open_session(peer)
                if session is None:
                    return
            self._carry(session, data)
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
            self._session_failed(peer, exc)

    def _open_session(self, peer: Any) -> _Session | None:
        """A session for the new client ``peer``, on a kept unit, a new one or
        one a less recently active session gives up; None (counted, logged) if
        it cannot be served.

        Raises:
            BaseException: what opening raised, if not an ``OSError`` (a unit it
                was building is closed).
        """
        c = self.counters
        unit: _Unit | None = None
        if self._kept:
            _, unit = self._kept.popitem(last=False)
        elif len(self._units) >= self.config.max_clients:
            victim = self._evictable()
            if victim is None:
                c.connect_errors += 1
                log_event(log, logging.WARNING, "client_refused", client=_fmt(peer),
                          reason="max_clients", max_clients=self.config.max_clients,
                          error="every session is waiting for a reply")
                return None
            unit = victim.unit
            self._end(victim, "evicted", keep=False)
        if unit is None:
            try:
                unit = self._new_unit(peer)
            except OSError as exc:
                self._refused(peer, exc)
                return None
        else:
            unit.client.serve(peer)
        now = time.monotonic()
        session = _Session(peer, unit, now, now)
        unit.session = session
        self.sessions[unit.key] = session
        self._by_peer[peer] = session
        c.clients_total += 1
        c.clients_open += 1
        if log.isEnabledFor(logging.INFO):
            log_event(log, logging.INFO, "client_accepted", client=session.label, proto="udp",
                      socket=unit.key)
        return session

    def _refused(self, peer: Any, exc: OSError) -> None:
        """``peer`` cannot be served: no socket for it (counted, logged)."""
        self.counters.connect_errors += 1
        log_event(log, logging.WARNING, "client_refused", client=_fmt(peer), reason="socket",
                  error=_why(exc))

    def _new_unit(self, peer: Any) -> _Unit:
        """A client slot for ``peer`` and a socket per backend, in their maps.

        Raises:
            OSError: a socket could not be made (nothing made is left open).
        """
        client = _ClientSlot(self._listener_raw, self.listener.family)
        client.serve(peer)
        conns: list[skmsg_udp.UdpSocket] = []
        backends: sk.SockMap | None = None
        try:
            for addr in self._backend_addrs:
                braw = socket.socket(_family(addr), socket.SOCK_DGRAM)
                try:
                    braw.connect(addr)
                except OSError:
                    braw.close()
                    raise
                conns.append(skmsg_udp.UdpSocket(braw))
            key = client.sk.cookie
            backends = sk.SockMap(max_entries=len(conns), name=f"backends of session {key}")
            backends.attach(self.reply, sk.SK_SKB_VERDICT)
            for i, conn in enumerate(conns):
                self._owner[conn.sk.cookie] = key
                self._index[conn.sk.cookie] = i
                backends.update(i, conn)
            self.clients.update(key, client)
        except BaseException:  # nothing half-made stays behind, whatever it was
            for conn in conns:
                self._owner.pop(conn.sk.cookie, None)
                self._index.pop(conn.sk.cookie, None)
                conn.close()
            if backends is not None:
                backends.close()
            client.sk.close()
            raise
        unit = _Unit(client, conns, backends, key)
        self._units[key] = unit
        return unit

    def _evictable(self) -> _Session | None:
        """The least recently active session not waiting for a reply, among the
        first :data:`EVICT_SCAN`; None if they all wait."""
        for n, session in enumerate(self.sessions.values()):
            if n >= EVICT_SCAN:
                break
            if not session.waiting:
                return session
        return None

    def _carry(self, session: _Session, data: bytes) -> None:
        """The route program on one of ``session``'s client's datagrams (its slot
        as ``skb.sk``), then the redirect's send."""
        self._judge_and_send(self.verdict, sk.SkBuff(session.unit.client.sk), data)

    def _judge_and_send(self, prog: sk.Program, skb: sk.SkBuff, data: bytes) -> None:
        """Run ``prog`` on ``data`` (in ``skb``) and send a redirected datagram
        out of its target now; whatever the target raises is its failure,
        counted as the runtime counts a failed redirect."""
        if prog.run_verdict(skb.reset(memoryview(data))) is not sk.Verdict.REDIRECT:
            return
        target = skb.sk_redir.owner if skb.sk_redir is not None else None
        try:
            if target is None:
                raise trio.ClosedResourceError
            target.egress_send_nowait(data)
        except BaseException as exc:  # the target's failure, as in the runtime
            if escapes_boundary(exc):
                raise
            self.runtime.redirect_errors += 1

    # -- ending sessions -------------------------------------------------------------------

    def _end(self, session: _Session, reason: str, *, keep: bool = True,
             deliver: bool = True) -> None:
        """End ``session`` for ``reason`` (counted, logged): replies its backends
        already sent reach its client first (``deliver``); its unit is kept for
        the next client (``keep``) or left to the caller."""
        unit = session.unit
        if deliver:
            self._deliver_replies(unit)
        key = unit.key
        self.sessions.pop(key, None)
        if self._by_peer.get(session.peer) is session:
            del self._by_peer[session.peer]
        unit.session = None
        for conn in unit.conns:
            self._pending.pop(conn.sk.cookie, None)
        self.counters.clients_open -= 1
        if log.isEnabledFor(logging.INFO):
            self._closed(session.label, reason, proto="udp",
                         seconds=round(time.monotonic() - session.opened, 3),
                         datagrams_in=session.datagrams_in, bytes_in=session.bytes_in,
                         datagrams_out=session.datagrams_out, bytes_out=session.bytes_out)
        else:  # counted all the same; the event's fields are for the log only
            self._closed("", reason)
        unit.client.serve(None)
        if keep:
            unit.kept_since = time.monotonic()
            self._kept[key] = unit

    def _deliver_replies(self, unit: _Unit) -> None:
        """Carry the datagrams queued on ``unit``'s backend sockets through the
        reply program now, as the runtime would have."""
        ready = unit.ready()
        if not ready:
            return
        for conn in unit.conns:
            if conn.fileno() not in ready:
                continue
            skb = sk.SkBuff(conn.sk)
            for _ in range(DRAIN_LIMIT):
                data = conn.transport_recv_nowait(_MAX_DATAGRAM)
                if data is None:
                    break
                self._judge_and_send(self.reply, skb, data)

    def _close_unit(self, unit: _Unit) -> None:
        """Close ``unit``'s sockets and map (its session must have ended)."""
        key = unit.key
        self._units.pop(key, None)
        self._kept.pop(key, None)
        for conn in unit.conns:
            self._owner.pop(conn.sk.cookie, None)
            self._index.pop(conn.sk.cookie, None)
            self._pending.pop(conn.sk.cookie, None)
        self._tx_drops_closed += unit.client.tx_drops
        unit.backends.close()
        unit.client.sk.close()  # out of clients
        for conn in unit.conns:
            conn.close()

    def reply_send_drops(self) -> int:
        """Replies dropped because the listener's send buffer could not take
        them at once (every client slot's ``tx_drops``, closed ones included)."""
        return self._tx_drops_closed + sum(u.client.tx_drops for u in self._units.values())

    def _session_failed(self, peer: Any, exc: BaseException) -> None:
        """Serving ``peer`` raised ``exc``: end its session (if it has one) and
        close its unit, count and log it."""
        session = self._by_peer.get(peer)
        if session is not None:
            try:
                self._end(session, "error", keep=False, deliver=False)
                self._close_unit(session.unit)
            except BaseException as again:
                if escapes_boundary(again):
                    raise
        self._client_failed(_fmt(peer), exc)

    async def expire(self) -> None:
        """End sessions with no datagram either way for ``idle_timeout`` seconds
        (give or take a quarter of it), and close units kept that long unused,
        until cancelled."""
        timeout = self.config.idle_timeout
        while True:
            await trio.sleep(max(timeout / 4, 0.01))
            now = time.monotonic()
            while self.sessions:
                session = next(iter(self.sessions.values()))
                if now - session.last < timeout:
                    break
                try:
                    self._end(session, "idle")
                except BaseException as exc:
                    if escapes_boundary(exc):
                        raise
                    self._session_failed(session.peer, exc)
            while self._kept:
                unit = next(iter(self._kept.values()))
                if now - unit.kept_since < timeout:
                    break
                self._close_unit(unit)


def _fmt(addr: Any) -> str:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    return str(Address.of(addr))


# -- the embedded backends and the demo ------------------------------------------------------


async def serve_udp_echo(
    index: int, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve a UDP echo backend named ``backend {index}`` on 127.0.0.1 (a free
    port) until cancelled: each datagram is answered with itself, tagged
    ``[backend {index}] ``. ``task_status.started`` gets its ``(host, port)``.

    Raises:
        OSError: it cannot bind.
    """
    tag = f"[backend {index}] ".encode()
    async with await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as sock:
        host, port = sock.getsockname()[:2]
        task_status.started((str(host), int(port)))
        while True:
            data, addr = await sock.recvfrom()
            await sock.sendto(tag + data, addr)


async def run_udp_demo(proxy: UdpProxy, say: Callable[[str], None]) -> int:
    """Send :data:`UDP_DEMO_PAYLOADS` through ``proxy``, one datagram each, and
    ``say`` what came back. Returns 0 when every datagram the policy
    redirected got a reply, else 1.

    Raises:
        OSError: the demo client cannot reach the proxy.
    """
    addr = proxy.listen[0]
    missing = 0
    async with await skmsg_udp.open_udp_socket(remote_address=(addr.host, addr.port)) as sock:
        for payload in UDP_DEMO_PAYLOADS:
            judged = proxy.counters.msgs
            before = proxy.verdict.statistics()
            await sock.send(payload)
            with trio.move_on_after(DEMO_TIMEOUT):
                await proxy.counters.wait_msgs(judged + 1)
            stats = proxy.verdict.statistics()
            sent = f"demo: sent {payload!r}"
            if stats.redirected == before.redirected:
                what = "delivered to the proxy (SK_PASS)" if stats.passed > before.passed else (
                    "dropped")
                say(f"{sent}  ->  {what} by the policy")
                continue
            reply = None
            with trio.move_on_after(DEMO_TIMEOUT):
                reply = await sock.receive()
            if reply is not None:
                say(f"{sent}  ->  reply {reply!r}")
            else:
                missing += 1
                say(f"{sent}  ->  no reply within {DEMO_TIMEOUT:g}s")
    return 1 if missing else 0


# -- running --------------------------------------------------------------------------------


def load_udp_policy(config: UdpProxyConfig) -> Policy:
    """The verified policy ``config`` names (default: round-robin).

    Raises:
        ProxyError: no backends at all, a policy file that cannot be used, or one
            that brings a ``parse`` (a datagram is one message: nothing to frame).
    """
    if not config.backends and config.echo_backends < 1:
        raise ProxyError("no --backend and no embedded echo backends: nothing to proxy to")
    try:
        policy = Policy.from_file(config.policy) if config.policy else Policy.round_robin()
    except PolicyError as exc:
        raise ProxyError(f"--policy: {exc}") from exc
    if policy.parse is not None:
        raise ProxyError(
            f"--policy: policy file {config.policy!r} defines parse(skb), which --udp does "
            "not use: every datagram is one message"
        )
    return policy


async def resolve_backend(addr: Address) -> Any:
    """The socket address of backend ``addr``.

    Raises:
        ProxyError: the host cannot be resolved.
    """
    try:
        infos = await trio.socket.getaddrinfo(addr.host, addr.port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ProxyError(f"--backend {addr}: unreachable: {_why(exc)}") from exc
    return infos[0][4]


async def _open_listener(addr: Address) -> tuple[skmsg_udp.UdpSocket, socket.socket]:
    """The listener bound to ``addr``, and its stdlib socket (what client slots
    send from).

    Raises:
        ProxyError: ``addr`` cannot be listened on (one line naming it).
    """
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # room for bursts of new clients (the kernel caps it at net.core.rmem_max)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LISTENER_RCVBUF)
        sock = skmsg_udp.UdpSocket(raw)
    except (OSError, ValueError) as exc:
        raw.close()
        raise ProxyError(f"--listen {addr}: cannot listen: {_why(exc)}") from exc
    try:
        await sock.bind((addr.host, addr.port))
    except OSError as exc:
        await sock.aclose()
        raise ProxyError(f"--listen {addr}: cannot listen: {_why(exc)}") from exc
    return sock, raw


async def run_udp_proxy(
    config: UdpProxyConfig, *, task_status: trio.TaskStatus[UdpProxy] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``skmsg proxy --udp`` until cancelled; ``task_status.started`` gets the
    :class:`UdpProxy` once it listens. Everything it opened is closed when it
    returns.

    Raises:
        ProxyError: before it starts: a bad policy file, a backend host that does
            not resolve, an address that cannot be listened on (``EADDRINUSE``).
    """
    policy = load_udp_policy(config)
    addrs = [await resolve_backend(b) for b in config.backends]
    listener, listener_raw = await _open_listener(config.listen)
    try:
        async with open_runtime() as runtime, trio.open_nursery() as nursery:
            backends = config.backends
            if not backends:
                backends = tuple([
                    Address(*await nursery.start(serve_udp_echo, i))
                    for i in range(config.echo_backends)
                ])
                addrs = [(b.host, b.port) for b in backends]
            proxy = UdpProxy(config, policy=policy, listener=listener,
                             listener_raw=listener_raw, backends=backends,
                             backend_addrs=tuple(addrs), runtime=runtime)
            nursery.start_soon(proxy.serve)
            nursery.start_soon(proxy.expire)
            task_status.started(proxy)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()


def udp_config(args: Any, listen: Address) -> UdpProxyConfig:
    """The :class:`UdpProxyConfig` of the command line ``args``."""
    return UdpProxyConfig(
        listen=listen,
        backends=tuple(args.backend),
        policy=args.policy,
        max_clients=args.max_clients,
        policy_budget=args.policy_budget,
    )


def _family(addr: Any) -> int:
    return socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET

