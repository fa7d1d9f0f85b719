"""``skmsg proxy``: a message-based L7 proxy and load balancer on socket maps.

Theory of operation
-------------------
The data path is the kernel's sockmap proxy (a stream verdict's redirect), carried by the
runtime's receive pumps; the proxy's own tasks only set connections up, watch
them end and tear them down. No proxy task reads or writes a message (but for
clients that half-closed before they could enter the map: see below).

- ``clients``, a :class:`~skmsg_core.SockHash` keyed by socket cookie, holds
  every accepted client stream, with the stream parser (the ``--parser``
  framing, or the policy file's ``parse``) and the stream verdict attached.
  Inserting a client starts its receive pump: read, frame, verdict, redirect.
- Each client gets its own connection to every backend, held in a per-client
  :class:`~skmsg_core.SockMap` (index ``i`` = the ``i``-th backend), found
  from the client's cookie in ``sessions``: the kernel's hash-of-maps. The
  stream verdict hands that map to the policy's ``verdict(skb, backends)``,
  which picks a backend with ``sk_redirect_map``; the runtime writes the
  message out of that backend connection (redirect egress, batched).
- Every per-client backend map has one ``reply`` program attached as its
  ``SK_SKB_VERDICT`` (verdict mode: once per chunk read, no framing). It looks
  the connection's client up (``owner``: backend cookie → client cookie, a
  plain hash map) and redirects the bytes to that client's egress with
  ``sk_redirect_hash(skb, clients, key, 0)``. Replies therefore reach the
  client that asked, in the order its backend wrote them.

Each program is loaded once (:meth:`skmsg_core.Program.load`) and shared, so
``Program.statistics()`` are the proxy's verdict counts. The verdict wrapper
adds per-backend counts; see :mod:`._stats`.

Lifecycle of a client: connect to every backend (or refuse the client); fill
its backend map; insert it into ``clients``. Client EOF is passed on to every
backend (half-close); a backend's EOF closes that connection (later picks of
it find an empty slot and drop); when all backends have closed the client gets
EOF. Once one direction has finished the other has ``drain_timeout`` seconds,
then everything closes. A client whose stream cannot be framed is closed (an
HTTP client is told why first).

The boundary around a client
----------------------------
Nothing one client does, and nothing raised while serving it, ends the proxy
or another client's service. The programs fail closed (a policy verdict that
raises, returns something that is not a verdict or runs longer than its budget,
``--policy-budget``, is a counted DROP); the runtime contains each socket's
receive service; and each client's task here contains what escapes its own
serving (a plugin's or the proxy's exception of any kind, cancellation and
Ctrl-C aside): that client's connections are closed, the error is counted
(``client_errors``) and logged once per kind (rate-limited, no traceback).

Clients that half-closed before they could enter the map
--------------------------------------------------------
The kernel refuses a TCP socket that is not ESTABLISHED (or LISTEN) into a
socket map (``sock_map_sk_state_allowed``), and so does skmsg: a client that
sent its request and ``shutdown(SHUT_WR)`` before the proxy accepted it is in
CLOSE_WAIT and cannot be inserted. A kernel proxy avoids the race by inserting
from a sock_ops program at establishment; user space cannot run that early.
Such a client is therefore carried in user space, with the same programs: its
bytes go through the same parser and verdict programs (the core's
:class:`~skmsg_core.StrParser` and :meth:`~skmsg_core.Program.run_verdict`), a
redirect is written out of the chosen backend connection, and the backends'
reply program passes their bytes up (SK_PASS) for the proxy to send to the
client. It is counted (``userspace_clients``); everything else is the same.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator

import attrs
import trio

import skmsg_core as sk
import skmsg_tcp
from skmsg_core import describe_error
from skmsg_core.runtime import (
    RateLimitedLog,
    Runtime,
    escapes_boundary,
    log_event,
    open_runtime,
)

from ._echo import serve_echo
from ._metrics import LatencyHistogram
from ._parsers import FRAMINGS, Framing, FramingError
from ._policy import Policy, PolicyError
from ._stats import ProxyCounters, ProxyStats
from ._tls import TlsOptions, originate, terminate

__all__ = ["Address", "Proxy", "ProxyConfig", "ProxyError", "run_proxy"]

log = logging.getLogger("skmsg")
#: One line per kind of failure (and per kind of error) every few seconds, however
#: many clients hit it.
limited_log = RateLimitedLog(log)


class ProxyError(Exception):
    """The proxy cannot start: a bad argument, policy, address or backend (the
    user's to fix). The message names what was wrong, in one line."""


@attrs.frozen
class Address:
    """A ``HOST:PORT`` (``[v6]:PORT`` for IPv6 literals)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, listen: bool = False) -> Address:
        """Parse ``HOST:PORT``; port 0 (any free port) only when ``listen``.

        Raises:
            ValueError: not ``HOST:PORT``, or the port is not 1-65535 (0-65535).
        """
        host, colon, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address as [ADDR]:PORT")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not HOST:PORT")
        low = 0 if listen else 1
        if not low <= int(port) <= 65535:
            raise ValueError(f"{text!r}: port must be {low}-65535")
        return cls(host, int(port))

    @classmethod
    def of(cls, sockaddr: tuple[object, ...]) -> Address:
        """The address of a socket name (``getsockname()``)."""
        return cls(str(sockaddr[0]), int(str(sockaddr[1])))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@attrs.frozen
class ProxyConfig:
    """What ``skmsg proxy`` was asked to do. No backends: embedded echo backends."""

    listen: Address = Address("127.0.0.1", 7000)
    backends: tuple[Address, ...] = ()
    parser: str = "length-prefixed"
    policy: str | None = None
    max_clients: int = 1024
    echo_backends: int = 2
    connect_timeout: float = 5.0
    drain_timeout: float = 5.0
    #: ``--tls`` / ``--backend-tls``: see :mod:`._tls` (None: plain TCP both ways).
    tls: TlsOptions | None = None
    #: ``--policy-budget``: the seconds one run of the policy's programs (and the
    #: proxy's own) may last before it is interrupted and counted as a DROP.
    policy_budget: float = sk.DEFAULT_BUDGET
    #: Bind the listener with ``SO_REUSEPORT``, so other processes (``--workers``)
    #: join its reuseport group and the kernel spreads connections over them.
    reuseport: bool = False


class ProxyPrograms:
    """What the TCP and UDP proxies share: the verdict around the policy's, the
    reply counters, the policy error log, the statistics.

    A subclass sets ``policy``, ``counters``, ``verdict``, ``listen``,
    ``runtime``, ``_index`` (backend cookie -> backend index) and
    ``_logged_errors``, and calls :meth:`_observe` with its backend count;
    ``unit`` names what one verdict judges in the log, ``client`` what one
    client's service is.

    Observability: ``latency[i]`` is backend ``i``'s reply latency (from a
    message's redirect to that backend connection until the next bytes it
    sends back; ``_pending``: backend connection cookie -> when the oldest
    unanswered message left), ``closed`` counts clients closed by reason
    (:meth:`_closed` logs the event too).
    """

    unit = "message"
    client = "client"
    policy: Policy
    counters: ProxyCounters
    verdict: sk.Program
    listen: tuple[Address, ...]
    runtime: Runtime
    _index: dict[int, int]
    _logged_errors: int
    latency: list[LatencyHistogram]
    closed: Counter[str]
    _pending: dict[int, float]
    #: The listening sockets, for their accept queues in the metrics.
    listen_sockets: tuple[socket.socket | trio.socket.SocketType, ...] = ()

    def _observe(self, backends: int) -> None:
        """Set up the reply latency histograms and the closed-by-reason counts."""
        self.latency = [LatencyHistogram() for _ in range(backends)]
        self.closed = Counter()
        self._pending = {}

    def _closed(self, peer: str, reason: str, **fields: object) -> None:
        """Client ``peer`` was closed for ``reason``: count it, log the event."""
        self.closed[reason] += 1
        log_event(log, logging.INFO, "client_closed", client=peer, reason=reason, **fields)

    def _judge(self, skb: sk.SkBuff, backends: sk.SockMap | None) -> int:
        """Run the policy's verdict on a client's ``skb`` given that client's
        ``backends`` (``None``: an unknown client, a DROP), counting per backend.

        The per-backend counts read the return as the runner does
        (:func:`skmsg_core.verdict_of`): none of its code runs.

        Raises:
            BaseException: whatever the policy raised (logged; the program fails
                closed: a counted DROP).
        """
        c = self.counters
        n = skb.len
        c.msgs += 1
        c.bytes += n
        if backends is None:
            c.judged()
            return sk.SK_DROP
        try:
            ret = self.policy.verdict(skb, backends)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                self._policy_failed(exc)
            c.judged()
            raise
        redir = skb.sk_redir
        if redir is not None:
            i = self._index.get(redir.cookie)
            if i is not None:
                b = c.backends[i]
                if sk.verdict_of(ret):
                    b.msgs += 1
                    b.bytes += n
                    self._pending.setdefault(redir.cookie, time.monotonic())
                else:
                    b.dropped += 1
        c.judged()
        return ret

    def _count_reply(self, skb: sk.SkBuff, cookie: int, ret: int) -> int:
        """Count a backend's reply ``skb`` (arrived on ``cookie``) as passed back
        or dropped by ``ret``; returns ``ret``."""
        i = self._index.get(cookie)
        if i is not None:
            sent = self._pending.pop(cookie, None)
            if sent is not None:
                self.latency[i].observe(time.monotonic() - sent)
            if ret == sk.SK_PASS:
                self.counters.backends[i].reply_bytes += skb.len
            else:
                self.counters.backends[i].reply_dropped_bytes += skb.len
        return ret

    def _policy_failed(self, exc: BaseException) -> None:
        self._logged_errors += 1
        if self._logged_errors <= 3:
            more = {} if self._logged_errors < 3 else {"next": "counted, not logged"}
            log_event(log, logging.WARNING, "policy_error", policy=self.policy.name,
                      error=describe_error(exc), dropped=self.unit, **more)

    def _client_failed(self, peer: str, exc: BaseException) -> None:
        """Serving the client ``peer`` raised ``exc``, which is not to go up
        (:func:`~skmsg_core.runtime.escapes_boundary`): count it, log it
        (rate-limited); its connections are closed by then."""
        self.counters.client_errors += 1
        limited_log.event(
            ("client", type(exc)), "client_error", client=peer, error=describe_error(exc),
            closed=self.client,
        )

    def statistics(self) -> ProxyStats:
        """A snapshot of the proxy's counters."""
        return self.counters.snapshot(
            self.verdict, tuple(str(a) for a in self.listen), self.runtime.redirect_errors
        )


class Proxy(ProxyPrograms):
    """A running proxy: its maps and programs, and what it counted.

    Built by :func:`run_proxy`, which hands it to ``task_status.started``.
    ``listen``: the bound addresses; ``backends``: the backends' addresses
    (the embedded echo backends' when none were given).
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        policy: Policy,
        framing: Framing,
        listen: tuple[Address, ...],
        backends: tuple[Address, ...],
        runtime: Runtime,
    ) -> None:
        self.config = config
        self.policy = policy
        self.framing = framing
        self.listen = listen
        self.backends = backends
        self.embedded = not config.backends
        self.runtime = runtime
        self.counters = ProxyCounters([str(b) for b in backends])
        self._observe(len(backends))
        self.clients = sk.SockHash(max_entries=config.max_clients, name="clients")
        #: client cookie -> that client's backend connections (a hash of maps)
        self.sessions: dict[int, sk.SockMap] = {}
        self._owner: dict[int, int] = {}  # backend connection cookie -> client cookie
        self._index: dict[int, int] = {}  # backend connection cookie -> backend index
        self._userspace: set[int] = set()  # cookies of clients carried in user space
        self._logged_errors = 0
        budget = config.policy_budget
        if policy.parse is not None:
            policy.parse.set_budget(budget)
        self.parser = policy.parse or sk.Program.load(
            framing.parse, sk.BpfProgType.SK_SKB, name=f"parse ({framing.name})", budget=budget
        )
        self.verdict = sk.Program.load(
            self._route, sk.BpfProgType.SK_SKB, name=f"verdict ({policy.name})", budget=budget
        )
        self.reply = sk.Program.load(
            self._reply, sk.BpfProgType.SK_SKB, name="reply", budget=budget
        )
        self.clients.attach(self.parser, sk.SK_SKB_STREAM_PARSER)
        self.clients.attach(self.verdict, sk.SK_SKB_STREAM_VERDICT)

    # -- the programs --------------------------------------------------------------------

    def _route(self, skb: sk.SkBuff) -> int:
        """The clients' stream verdict: the policy's, given this client's backends."""
        return self._judge(skb, self.sessions.get(skb.sk.cookie) if skb.sk is not None else None)

    def _reply(self, skb: sk.SkBuff) -> int:
        """The backends' verdict: send the bytes back to the client that owns the
        connection they came on."""
        cookie = skb.sk.cookie if skb.sk is not None else 0
        key = self._owner.get(cookie)
        if key is None:
            ret: int = sk.SK_DROP
        elif key in self._userspace:
            ret = sk.SK_PASS  # up to the proxy, which sends it to the client
        else:
            ret = sk.sk_redirect_hash(skb, self.clients, key, 0)
        return self._count_reply(skb, cookie, ret)

    # -- connections -----------------------------------------------------------------------

    async def serve(
        self, listeners: list[skmsg_tcp.SkListener], handler_nursery: trio.Nursery
    ) -> None:
        """Accept clients on ``listeners`` until cancelled.

        Raises:
            OSError: an unexpected accept error.
        """
        await trio.serve_listeners(self.serve_client, listeners, handler_nursery=handler_nursery)

    async def serve_client(self, client: skmsg_tcp.SkStream) -> None:
        """Proxy one client until both directions end. Never raises but
        cancellation and Ctrl-C (:func:`~skmsg_core.runtime.escapes_boundary`):
        the connection's own failures are logged and counted, and anything
        else raised while serving it closes its connections and is counted in
        ``client_errors`` and logged (rate-limited); the proxy carries on.

        Cancellation closes the client and its backend connections.
        """
        try:
            await self._serve_client(client)
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
            self._client_failed(_fmt(client.sk.remote_addr), exc)

    async def _serve_client(self, client: skmsg_tcp.SkStream) -> None:
        c = self.counters
        c.clients_total += 1
        c.clients_open += 1
        peer = _fmt(client.sk.remote_addr)
        key = client.sk.cookie
        conns: list[skmsg_tcp.SkStream] = []
        backends: sk.SockMap | None = None
        proto = "tls" if self.config.tls is not None and self.config.tls.server else "tcp"
        log_event(log, logging.INFO, "client_accepted", client=peer, proto=proto)
        opened = time.monotonic()
        reason = "refused"
        try:
            try:
                with trio.fail_after(self.config.connect_timeout):
                    for addr in self.backends:
                        conns.append(await skmsg_tcp.open_tcp_stream(addr.host, addr.port))
            except (OSError, trio.TooSlowError) as exc:
                c.connect_errors += 1
                log_event(log, logging.WARNING, "client_refused", client=peer,
                          reason="backend_connect", backend=str(self.backends[len(conns)]),
                          error=_why(exc))
                return
            backends = sk.SockMap(max_entries=len(conns), name=f"backends of {peer}")
            backends.attach(self.reply, sk.SK_SKB_VERDICT)
            live = []
            for i, conn in enumerate(conns):
                self._owner[conn.sk.cookie] = key
                self._index[conn.sk.cookie] = i
                try:
                    backends.update(i, conn)
                except OSError as exc:  # it closed at once (not ESTABLISHED any more)
                    log_event(log, logging.INFO, "backend_closed", client=peer,
                              backend=str(self.backends[i]), error=exc.strerror)
                    continue
                tls = self.config.tls  # the kernel's order: into the map, then TLS
                if tls is not None and tls.client is not None and not await originate(
                    conn, tls, self.backends[i].host, self.config.connect_timeout
                ):
                    continue
                live.append(conn)
            if not live:
                c.connect_errors += 1
                log_event(log, logging.WARNING, "client_refused", client=peer,
                          reason="no_backend", error="every backend closed its connection")
                return
            self.sessions[key] = backends
            in_map = self._insert(client, key, peer)
            if in_map is None:
                return
            tls = self.config.tls  # the kernel's order: into the map, then TLS
            if tls is not None and tls.server is not None and not await terminate(
                client, tls, self.config.connect_timeout
            ):
                reason = "tls_handshake"
                return
            log_event(log, logging.INFO, "client_connected", client=peer,
                      backends=",".join(str(self.backends[self._index[x.sk.cookie]]) for x in live),
                      userspace=not in_map)
            reason = await self._session(client, live, peer, in_map)
        except BaseException as exc:
            reason = "shutdown" if escapes_boundary(exc) else "error"
            raise
        finally:
            stats = client.statistics()
            with trio.CancelScope(shield=True):
                self.sessions.pop(key, None)
                self._userspace.discard(key)
                for conn in conns:
                    self._owner.pop(conn.sk.cookie, None)
                    self._index.pop(conn.sk.cookie, None)
                    self._pending.pop(conn.sk.cookie, None)
                if backends is not None:
                    backends.close()
                for stream in (client, *conns):
                    await stream.aclose()
            c.clients_open -= 1
            self._closed(peer, reason, proto=proto, seconds=round(time.monotonic() - opened, 3),
                         bytes_in=stats.bytes_received, bytes_out=stats.bytes_sent)

    def _insert(self, client: skmsg_tcp.SkStream, key: int, peer: str) -> bool | None:
        """Put ``client`` into ``clients``: True; or mark it for user space when it
        half-closed already (False); or refuse it (None)."""
        try:
            self.clients.update(key, client)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP and client.sk.state == sk.TcpState.CLOSE_WAIT:
                self._userspace.add(key)
                self.counters.userspace_clients += 1
                return False
            log_event(log, logging.WARNING, "client_refused", client=peer, reason="clients_map",
                      error=exc.strerror)
            return None
        return True

    async def _session(
        self, client: skmsg_tcp.SkStream, conns: list[skmsg_tcp.SkStream], peer: str,
        in_map: bool,
    ) -> str:
        """Carry ``client``'s session until both directions end (or one did and
        the drain timeout passed); returns why it ended (see ``docs/proxy.md``)."""
        reason = ""
        up_done = trio.Event()  # the client sent EOF; every backend was told
        down_done = trio.Event()  # every backend closed; the client was told
        remaining = len(conns)
        to_client = trio.StrictFIFOLock()  # user space only: one sender at a time

        async def from_client() -> None:
            nonlocal reason
            try:
                if in_map:
                    while await client.receive_some():
                        pass  # SK_PASS without a redirect: delivered to the proxy, discarded
                else:
                    await self._carry_in_user_space(client)
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                if isinstance(cause, sk.StrParserError):
                    reason = "parse_error"
                    await self._parse_failed(client, peer, cause)
                else:
                    reason = "broken"
                    log_event(log, logging.INFO, "client_broken", client=peer,
                              error=str(cause or exc))
                nursery.cancel_scope.cancel()
                return
            except sk.StrParserError as exc:
                reason = "parse_error"
                await self._parse_failed(client, peer, exc)
                nursery.cancel_scope.cancel()
                return
            except trio.ClosedResourceError:
                reason = "closed"
                nursery.cancel_scope.cancel()
                return
            for conn in conns:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await conn.send_eof()
            up_done.set()

        async def from_backend(conn: skmsg_tcp.SkStream) -> None:
            nonlocal remaining
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while data := await conn.receive_some():
                    if not in_map:  # the reply program passed it up: the client is ours
                        async with to_client:
                            await client.send_all(data)
            await conn.aclose()  # it leaves the client's backend map
            remaining -= 1
            if not remaining:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await client.send_eof()
                down_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_client)
            for conn in conns:
                nursery.start_soon(from_backend, conn)
            await _wait_any(up_done, down_done)
            with trio.move_on_after(self.config.drain_timeout):
                await up_done.wait()
                await down_done.wait()
            nursery.cancel_scope.cancel()
        if reason:
            return reason
        return "done" if up_done.is_set() and down_done.is_set() else "drain_timeout"

    async def _carry_in_user_space(self, client: skmsg_tcp.SkStream) -> None:
        """What the runtime does for a client in ``clients``, for one that could not
        enter it: frame what it sent with the parser program, run the verdict
        program on each message, write each redirect out of its backend.

        Raises:
            StrParserError: the parser program failed.
            trio.BrokenResourceError: reading the client failed.
        """
        parser = sk.StrParser(self.parser.run, sk=client.sk)  # a psock's limits
        skb = sk.SkBuff(client.sk)
        redirect = sk.Verdict.REDIRECT
        while data := await client.receive_some():
            for msg in parser.feed(data):
                if self.verdict.run_verdict(skb.reset(msg)) is not redirect:
                    continue
                target = skb.sk_redir.owner if skb.sk_redir is not None else None
                try:
                    if target is None:
                        raise trio.ClosedResourceError
                    await target.egress_write([msg], False)
                except BaseException as exc:  # the target's failure, as in the runtime
                    if escapes_boundary(exc):
                        raise
                    self.runtime.redirect_errors += 1

    async def _parse_failed(
        self, client: skmsg_tcp.SkStream, peer: str, cause: sk.StrParserError
    ) -> None:
        self.counters.parse_errors += 1
        refused = cause.__cause__
        if isinstance(refused, FramingError):
            log_event(log, logging.WARNING, "parse_error", client=peer,
                      framing=self.framing.name, error=str(refused))
            if self.framing.refuse is not None:
                with trio.move_on_after(1), contextlib.suppress(OSError, trio.BrokenResourceError,
                                                                trio.ClosedResourceError):
                    await client.send_all(self.framing.refuse(refused))
        else:
            log_event(log, logging.WARNING, "parse_error", client=peer, error=str(cause))


async def run_proxy(
    config: ProxyConfig, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``skmsg proxy`` until cancelled; ``task_status.started`` gets the
    :class:`Proxy` once it listens and its backends are up.

    Everything it opened is closed when it returns.

    Raises:
        ProxyError: before it starts: a bad policy file, an address that cannot
            be listened on (taken, ``EADDRINUSE``), a backend that cannot be
            reached.
    """
    framing, policy = load(config)
    for addr in config.backends:
        await probe(addr, config.connect_timeout)
    listeners = await _listen(config.listen, reuseport=config.reuseport)
    try:
        listen = tuple(Address.of(lst.socket.getsockname()) for lst in listeners)
        async with open_runtime() as runtime, trio.open_nursery() as nursery:
            backends = config.backends
            if not backends:
                echo_framing = framing
                if policy.parse is not None:
                    echo_framing = Framing.custom(policy.parse.func, "custom")
                backends = tuple([
                    Address(*await nursery.start(serve_echo, i, echo_framing))
                    for i in range(config.echo_backends)
                ])
            proxy = Proxy(config, policy=policy, framing=framing, listen=listen,
                          backends=backends, runtime=runtime)
            proxy.listen_sockets = tuple(lst.socket for lst in listeners)
            nursery.start_soon(proxy.serve, listeners, nursery)
            task_status.started(proxy)
    finally:
        with trio.CancelScope(shield=True):
            for lst in listeners:
                await lst.aclose()


def load(config: ProxyConfig) -> tuple[Framing, Policy]:
    """The framing and the verified policy ``config`` names.

    Raises:
        ProxyError: no backends at all, an unknown parser, or a policy file that
            cannot be used.
    """
    if not config.backends and config.echo_backends < 1:
        raise ProxyError("no --backend and no embedded echo backends: nothing to proxy to")
    framing = FRAMINGS.get(config.parser)
    if framing is None:
        raise ProxyError(f"--parser {config.parser!r}: choose one of {', '.join(FRAMINGS)}")
    try:
        policy = Policy.from_file(config.policy) if config.policy else Policy.round_robin()
    except PolicyError as exc:
        raise ProxyError(f"--policy: {exc}") from exc
    return framing, policy


async def probe(addr: Address, timeout: float) -> None:
    """Check that ``addr`` accepts connections (connect, then close).

    Raises:
        ProxyError: refused, unresolvable, or no answer within ``timeout``.
    """
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(addr.host, addr.port)
    except (OSError, trio.TooSlowError) as exc:
        raise ProxyError(f"--backend {addr}: unreachable: {_why(exc)}") from exc
    await stream.aclose()


async def _listen(addr: Address, *, reuseport: bool = False) -> list[skmsg_tcp.SkListener]:
    try:
        listeners: list[skmsg_tcp.SkListener] = await skmsg_tcp.open_tcp_listeners(
            addr.port, host=addr.host, reuseport=reuseport
        )
    except OSError as exc:
        raise ProxyError(f"--listen {addr}: cannot listen: {_why(exc)}") from exc
    return listeners


async def _wait_any(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(e: trio.Event = event) -> None:
                await e.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


def _walk(exc: BaseException) -> Iterator[BaseException]:
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _walk(sub)
    if exc.__cause__ is not None:
        yield from _walk(exc.__cause__)


def _why(exc: BaseException) -> str:
    """A short reason for a connect or bind failure: ``connection refused (ECONNREFUSED)``."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer (timed out)"
    for e in _walk(exc):
        if isinstance(e, socket.gaierror):
            return f"cannot resolve the host: {e.strerror}"
        if isinstance(e, OSError) and e.errno:
            name = errno.errorcode.get(e.errno, str(e.errno))
            return f"{os.strerror(e.errno).lower()} ({name})"
    return str(exc)


def _fmt(addr: sk.SockAddr) -> str:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return "?"
    return str(Address.of(addr))
