"""``skmsg proxy --udp``: a datagram L7 proxy and load balancer on socket maps.

Theory of operation
-------------------
Every datagram is one message: there is no parser. The data path is the
runtime's, both ways; the proxy's own tasks set sessions up and expire them.

- A *listener*, an unconnected :class:`~skmsg_udp.UdpSocket` bound to
  ``--listen`` with ``SO_REUSEPORT``, receives a new client's first datagram.
  The proxy then opens the client's *session*: a socket bound to the same
  address and connected to the client (the kernel delivers a connected UDP
  socket the datagrams of its 4-tuple, ahead of the listener), and one socket
  connected to each backend. Later datagrams of that client never reach the
  listener.
- ``clients``, a :class:`~skmsg_core.SockHash` keyed by socket cookie, holds
  every client socket with the route program as its ``SK_SKB_VERDICT``: once
  per datagram it hands the policy's ``verdict(skb, backends)`` this client's
  backend sockets (a per-session :class:`~skmsg_core.SockMap`, index ``i`` =
  the ``i``-th backend: the kernel's hash-of-maps), and the runtime sends the
  datagram out of the backend socket the policy picked.
- Each session's backend map has the reply program as its ``SK_SKB_VERDICT``:
  it redirects every datagram a backend answers to the client socket's egress
  (``sk_redirect_hash(skb, clients, key, 0)``), so the reply leaves from the
  proxy's address to the client that asked.
- The first datagram of a session (and any that reached the listener before
  the session's socket was connected) is carried in user space with the same
  program: the verdict runs on it with the client socket as ``skb.sk``, and a
  redirect is sent out of the chosen backend socket.

A session with no datagram either way for ``idle_timeout`` seconds is closed
(UDP has no end of stream). Whatever is raised while opening, carrying or
closing one session (cancellation and Ctrl-C aside) closes that session and is
counted (``client_errors``) and logged, rate-limited: the proxy and the other
sessions carry on, as in the TCP proxy. Counters and the table are the TCP proxy's
(:mod:`._stats`): ``clients`` are sessions; ``backend connect`` errors are
sessions that could not be opened (``--max-clients`` reached, no socket).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import attrs
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime, escapes_boundary, open_runtime

from ._policy import Policy, PolicyError
from ._proxy import Address, ProxyError, ProxyPrograms, _why
from ._stats import ProxyCounters

__all__ = ["UdpProxy", "UdpProxyConfig", "run_udp_demo", "run_udp_proxy", "serve_udp_echo"]

log = logging.getLogger("skmsg")

#: What the UDP demo client sends, one datagram each.
UDP_DEMO_PAYLOADS = (b"hello", b"kiwi", b"zebra", b"!secret")
DEMO_TIMEOUT = 5.0


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


@attrs.define(eq=False)
class _Session:
    peer: Any
    client: skmsg_udp.UdpSocket
    conns: list[skmsg_udp.UdpSocket]
    backends: sk.SockMap
    activity: int = 0
    last_active: float = attrs.field(factory=trio.current_time)


class UdpProxy(ProxyPrograms):
    """A running UDP proxy: its maps, programs, sessions and counters.

    Built by :func:`run_udp_proxy`, which hands it to ``task_status.started``.
    The attributes the command's announcement and demo read are the TCP
    :class:`~skmsg.Proxy`'s: ``listen``, ``backends``, ``embedded``,
    ``policy``, ``framing``, ``counters``, ``verdict``, :meth:`statistics`.
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
        backends: tuple[Address, ...],
        backend_addrs: tuple[Any, ...],
        runtime: Runtime,
    ) -> None:
        self.config = config
        self.policy = policy
        self.framing = _Datagrams()
        self.listener = listener
        self.listen = (Address.of(listener.getsockname()),)
        self.backends = backends
        self._backend_addrs = backend_addrs
        self.embedded = not config.backends
        self.runtime = runtime
        self.counters = ProxyCounters([str(b) for b in backends])
        self.clients = sk.SockHash(max_entries=config.max_clients, name="udp clients")
        self.sessions: dict[int, _Session] = {}
        self._by_peer: dict[Any, _Session] = {}
        self._owner: dict[int, int] = {}  # backend socket cookie -> client socket cookie
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
        session = self.sessions.get(skb.sk.cookie) if skb.sk is not None else None
        return self._judge(skb, session.backends if session is not None else None)

    def _reply(self, skb: sk.SkBuff) -> int:
        """The backend sockets' verdict: back to the client that owns the session."""
        cookie = skb.sk.cookie if skb.sk is not None else 0
        key = self._owner.get(cookie)
        ret: int = sk.SK_DROP if key is None else sk.sk_redirect_hash(skb, self.clients, key, 0)
        return self._count_reply(skb, cookie, ret)

    # -- sessions ----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Receive new clients' datagrams on the listener until cancelled.

        A datagram whose session cannot be opened or carried (anything raised
        but cancellation and Ctrl-C) closes that session, is counted
        (``client_errors``) and logged; the next datagram is served.

        Cancellation closes every session.
        """
        try:
            while True:
                data, peer = await self.listener.recvfrom()
                try:
                    session = self._by_peer.get(peer)
                    if session is None:
                        session = self._open_session(peer)
                        if session is None:
                            continue
                    self._carry(session, data)
                except BaseException as exc:
                    if escapes_boundary(exc):
                        raise
                    await self._session_failed(peer, exc)
        finally:
            with trio.CancelScope(shield=True):
                for session in list(self.sessions.values()):
                    await self._close_session(session)

    def _open_session(self, peer: Any) -> _Session | None:
        """Sockets and maps for a new client ``peer``; None (counted, logged) if
        it cannot be served.

        Raises:
            BaseException: what opening raised, if not an ``OSError`` (nothing
                it opened is left open).
        """
        c = self.counters
        label = _fmt(peer)
        conns: list[skmsg_udp.UdpSocket] = []
        client: skmsg_udp.UdpSocket | None = None
        backends: sk.SockMap | None = None
        try:
            client = skmsg_udp.UdpSocket(_reuseport_socket(self.listener, peer))
            for addr in self._backend_addrs:
                raw = socket.socket(_family(addr), socket.SOCK_DGRAM)
                try:
                    raw.connect(addr)
                except OSError:
                    raw.close()
                    raise
                conns.append(skmsg_udp.UdpSocket(raw))
            backends = sk.SockMap(max_entries=len(conns), name=f"backends of {label}")
            backends.attach(self.reply, sk.SK_SKB_VERDICT)
            key = client.sk.cookie
            for i, conn in enumerate(conns):
                self._owner[conn.sk.cookie] = key
                self._index[conn.sk.cookie] = i
                backends.update(i, conn)
            session = _Session(peer, client, conns, backends)
            self.sessions[key] = session
            self.clients.update(key, client)
        except BaseException as exc:  # nothing half-made stays behind, whatever it was
            if client is not None:
                self.sessions.pop(client.sk.cookie, None)
                client.close()
            for conn in conns:
                self._owner.pop(conn.sk.cookie, None)
                self._index.pop(conn.sk.cookie, None)
                conn.close()
            if backends is not None:
                backends.close()
            if not isinstance(exc, OSError):
                raise
            c.connect_errors += 1
            log.warning("client %s refused: %s", label, exc.strerror or exc)
            return None
        self._by_peer[peer] = session
        c.clients_total += 1
        c.clients_open += 1
        log.info("client %s: session opened", label)
        return session

    def _carry(self, session: _Session, data: bytes) -> None:
        """What the runtime does for datagrams on the client socket, for one that
        reached the listener: the verdict, then the redirect's send."""
        skb = sk.SkBuff(session.client.sk)
        if self.verdict.run_verdict(skb.reset(memoryview(data))) is not sk.Verdict.REDIRECT:
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

    async def _session_failed(self, peer: Any, exc: BaseException) -> None:
        """Serving ``peer`` raised ``exc``: close its session (if it has one),
        count and log it."""
        session = self._by_peer.get(peer)
        if session is not None:
            try:
                await self._close_session(session)
            except BaseException as again:
                if escapes_boundary(again):
                    raise
        self._client_failed(_fmt(peer), exc)

    async def _close_session(self, session: _Session) -> None:
        key = session.client.sk.cookie
        self.sessions.pop(key, None)
        if self._by_peer.get(session.peer) is session:
            del self._by_peer[session.peer]
        for conn in session.conns:
            self._owner.pop(conn.sk.cookie, None)
            self._index.pop(conn.sk.cookie, None)
        session.backends.close()
        for sock in (session.client, *session.conns):
            await sock.aclose()
        self.counters.clients_open -= 1
        log.info("client %s: session closed", _fmt(session.peer))

    async def expire(self) -> None:
        """Close sessions with no datagram either way for ``idle_timeout``
        seconds (give or take a quarter of it), until cancelled."""
        timeout = self.config.idle_timeout
        while True:
            await trio.sleep(max(timeout / 4, 0.01))
            now = trio.current_time()
            for session in list(self.sessions.values()):
                activity = sum(
                    s.statistics().datagrams_received for s in (session.client, *session.conns)
                )
                if activity != session.activity:
                    session.activity, session.last_active = activity, now
                elif now - session.last_active >= timeout:
                    try:
                        await self._close_session(session)
                    except BaseException as exc:
                        if escapes_boundary(exc):
                            raise
                        self._client_failed(_fmt(session.peer), exc)


def _reuseport_socket(listener: skmsg_udp.UdpSocket, peer: Any) -> socket.socket:
    """A socket bound to the listener's address and connected to ``peer``."""
    raw = socket.socket(listener.family, socket.SOCK_DGRAM)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        raw.bind(listener.getsockname())
        raw.connect(peer)
    except OSError:
        raw.close()
        raise
    return raw


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


async def _open_listener(addr: Address) -> skmsg_udp.UdpSocket:
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_DGRAM)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock = skmsg_udp.UdpSocket(raw)
    except (OSError, ValueError) as exc:
        raw.close()
        raise ProxyError(f"--listen {addr}: cannot listen: {_why(exc)}") from exc
    try:
        await sock.bind((addr.host, addr.port))
    except OSError as exc:
        await sock.aclose()
        raise ProxyError(f"--listen {addr}: cannot listen: {_why(exc)}") from exc
    return sock


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
    listener = await _open_listener(config.listen)
    try:
        async with open_runtime() as runtime, trio.open_nursery() as nursery:
            backends = config.backends
            if not backends:
                backends = tuple([
                    Address(*await nursery.start(serve_udp_echo, i))
                    for i in range(config.echo_backends)
                ])
                addrs = [(b.host, b.port) for b in backends]
            proxy = UdpProxy(config, policy=policy, listener=listener, backends=backends,
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

