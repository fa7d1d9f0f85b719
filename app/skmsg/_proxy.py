"""``skmsg proxy``: a message-based L7 proxy and load balancer on socket maps.

Theory of operation
-------------------
The data path is the kernel's sockmap proxy (seed 003), carried by the
runtime's receive pumps; the proxy's own tasks only set connections up, watch
them end and tear them down. No proxy task reads or writes a message (but for
clients that half-closed before they could enter the map: see below).

- ``clients``, a :class:`~skmsg_core.SockHash` keyed by socket cookie, holds
  every accepted client stream, with the stream parser (the ``--parser``
  framing, or the policy file's ``parse``) and the stream verdict attached.
  Inserting a client starts its receive pump: read, frame, verdict, redirect.
- Each client has a :class:`~._health.BackendMap` (index ``i`` = the ``i``-th
  backend), found from the client's cookie in ``sessions``: the kernel's
  hash-of-maps. Every index holds the client's *slot* for that backend, a
  socket standing for its connection there, made when the first message is
  routed to it (:mod:`._session`): a client costs connections only to the
  backends its messages go to. The stream verdict hands that map to the
  policy's ``verdict(skb, backends)``, which picks a backend with
  ``sk_redirect_map`` (and may ask ``backends.up(i)``); the runtime writes the
  message out of the slot, and so out of the backend connection (redirect
  egress, batched). A message the slot cannot write (its backend is down, the
  connection cannot be made or breaks first) is judged again.
- Backend connections are in ``upstreams``, a hash keyed by cookie, with one
  ``reply`` program as its ``SK_SKB_VERDICT`` (verdict mode: once per chunk
  read, no framing). It finds the connection's client and redirects the bytes
  to that client's egress with ``sk_redirect_hash(skb, clients, key, 0)``,
  counting the replies (one per message sent) so the proxy knows what a
  connection still owes. Replies therefore reach the client that asked, in
  the order its backend wrote them.

Each program is loaded once (:meth:`skmsg_core.Program.load`) and shared, so
``Program.statistics()`` are the proxy's verdict counts. The verdict wrapper
adds per-backend counts; see :mod:`._stats`.

Faults (see :mod:`._session`, :mod:`._health`, :mod:`._accept`): a backend
that fails is marked down for a back-off and its messages go elsewhere; a
connection that ends owing a client a reply closes that client
(``backend_lost``); every connection has timeouts (``--connect-timeout``,
``--idle-timeout``, ``--handshake-timeout``, ``--write-timeout``), checked by
one sweep over every session; clients are accepted in batches within the
file descriptor limit. Client EOF is passed on to its backend connections
(half-close); the session ends once no reply is owed to the client.

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
redirect is written out of the chosen backend slot, and the backends'
reply program passes their bytes up (SK_PASS) for the proxy to send to the
client. It is counted (``userspace_clients``); everything else is the same.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
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

from ._accept import FdBudget, accept_clients
from ._echo import serve_echo
from ._health import BACKOFF_MAX, BACKOFF_MIN, BackendHealth, run_health_checks
from ._metrics import LatencyHistogram
from ._parsers import DEFAULT_MAX_MESSAGE, FRAMINGS, Framing
from ._policy import Policy, PolicyError
from ._reuseport import select_by_cpu
from ._session import BackendSlot, Session
from ._stats import ProxyCounters, ProxyStats
from ._tls import TlsOptions, terminate
from ._upstream import BackendConn, DialError, dial

__all__ = ["Address", "Proxy", "ProxyConfig", "ProxyError", "run_proxy"]

log = logging.getLogger("skmsg")
#: One line per kind of failure (and per kind of error) every few seconds, however
#: many clients hit it.
limited_log = RateLimitedLog(log)


#: The smallest ``--max-message-size`` (an HTTP request line alone is longer).
MIN_MESSAGE_LIMIT = 16


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
        return _hostport(self.host, self.port)


def _hostport(host: str, port: object) -> str:
    """``HOST:PORT``, or ``[HOST]:PORT`` for an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class ProxyConfig:
    """What ``skmsg proxy`` was asked to do. No backends: embedded echo backends."""

    listen: Address = Address("127.0.0.1", 7000)
    backends: tuple[Address, ...] = ()
    parser: str = "length-prefixed"
    policy: str | None = None
    max_clients: int = 1024
    echo_backends: int = 2
    #: ``--tls`` / ``--backend-tls``: see :mod:`._tls` (None: plain TCP both ways).
    tls: TlsOptions | None = None
    #: ``--policy-budget``: the seconds one run of the policy's programs (and the
    #: proxy's own) may last before it is interrupted and counted as a DROP.
    policy_budget: float = sk.DEFAULT_BUDGET
    #: Bind the listener with ``SO_REUSEPORT``, so other processes (``--workers``)
    #: join its reuseport group and the kernel spreads connections over them.
    reuseport: bool = False
    #: With ``reuseport``: the group's sockets are chosen by the CPU a new
    #: connection arrives on, the ``i``-th listener to join for ``select_cpus[i]``
    #: (:func:`._reuseport.select_by_cpu`; ``--worker-select cpu``); empty: the
    #: kernel's hash.
    select_cpus: tuple[int, ...] = ()
    #: ``--connect-timeout``: seconds a backend connect may take.
    connect_timeout: float = 5.0
    #: ``--handshake-timeout``: seconds a TLS handshake (either hop) may take.
    handshake_timeout: float = 10.0
    #: ``--idle-timeout``: seconds a client or backend connection may move no
    #: byte (a backend owing a reply that long has timed out).
    idle_timeout: float = 300.0
    #: ``--write-timeout``: seconds a peer may read nothing while the proxy
    #: has bytes for it.
    write_timeout: float = 30.0
    #: ``--health-interval``: seconds between active checks of every backend
    #: (None: passive health only).
    health_interval: float | None = None
    #: ``--max-message-size``: the longest message, in bytes, any framing takes.
    max_message_size: int = DEFAULT_MAX_MESSAGE
    #: The first and the longest back-off of a backend marked down (see :mod:`._health`).
    backoff_min: float = BACKOFF_MIN
    backoff_max: float = BACKOFF_MAX

    def check(self) -> None:
        """Refuse values the proxy cannot run with.

        Raises:
            ProxyError: a timeout, interval or back-off that is not a positive
                number of seconds, a back-off minimum over its maximum, or a
                ``max_message_size`` below 16 bytes.
        """
        for name in ("connect_timeout", "handshake_timeout", "idle_timeout", "write_timeout",
                     "backoff_min", "backoff_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ProxyError(f"{name} {value!r} is not a number of seconds > 0")
        interval = self.health_interval
        if interval is not None and not 0 < interval < math.inf:
            raise ProxyError(f"health_interval {interval!r} is not a number of seconds > 0")
        if self.backoff_min > self.backoff_max:
            raise ProxyError(
                f"backoff_min {self.backoff_min} is over backoff_max {self.backoff_max}"
            )
        if type(self.max_message_size) is not int or self.max_message_size < MIN_MESSAGE_LIMIT:
            raise ProxyError(
                f"max_message_size {self.max_message_size!r} is not a number of bytes "
                f">= {MIN_MESSAGE_LIMIT}"
            )


class ProxyPrograms:
    """What the TCP and UDP proxies share: the verdict around the policy's, the
    reply counters, the policy error log, the statistics.

    A subclass sets ``policy``, ``counters``, ``verdict``, ``listen``,
    ``runtime``, ``_index`` (backend cookie -> backend index) and
    ``_logged_errors``, and calls :meth:`_observe` with its backend count;
    ``unit`` names what one verdict judges in the log, ``client`` what one
    client's service is.

    Observability: ``latency[i]`` is backend ``i``'s reply latency (from a
    message's redirect to that backend until the next bytes it sends back;
    ``_pending``: redirect target cookie -> when the oldest unanswered message
    left), ``closed`` counts clients closed by reason (:meth:`_closed` logs
    the event too).
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

    def backend_connections(self) -> list[int]:
        """Open connections (UDP: sockets) to each backend, for the metrics."""
        connections = [0] * len(self.latency)
        for i in list(self._index.values()):
            connections[i] += 1
        return connections

    def _judge(self, skb: sk.SkBuff, backends: sk.SockMap | None, *, again: bool = False) -> int:
        """Run the policy's verdict on a client's ``skb`` given that client's
        ``backends`` (``None``: an unknown client, a DROP), counting per backend.
        ``again``: the message was judged before (its backend failed): it is not
        counted as a new message.

        A return that is not a verdict (see :func:`skmsg_core.verdict_of`:
        ``None``, a string, ``True``, an int other than 0 and 1, ...) is made a
        DROP here, counted with the policy's errors and logged, rate-limited,
        with the policy's name and the value's type. The per-backend counts read
        the return as the runner does: none of its code runs.

        Raises:
            BaseException: whatever the policy raised (logged; the program fails
                closed: a counted DROP).
        """
        c = self.counters
        n = skb.len
        if not again:
            c.msgs += 1
            c.bytes += n
        if backends is None:
            c.judged()
            return sk.SK_DROP
        c.policy_verdicts[self._generation] += 1
        try:
            ret = self.policy.verdict(skb, backends)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                self._policy_failed(exc)
            c.judged()
            raise
        ok = True if ret is sk.SK_PASS else sk.verdict_of(ret)
        if ok is None:
            self._not_a_verdict(ret)
            ret = sk.SK_DROP
        redir = skb.sk_redir
        if redir is not None:
            i = self._index.get(redir.cookie)
            if i is not None:
                b = c.backends[i]
                if ok:
                    b.msgs += 1
                    b.bytes += n
                    self._pending.setdefault(redir.cookie, time.monotonic())
                else:
                    b.dropped += 1
        c.judged()
        return ret

    def _count_reply(
        self, skb: sk.SkBuff, cookie: int, ret: int, sent_via: int | None = None
    ) -> int:
        """Count a backend's reply ``skb`` (arrived on ``cookie``; the messages it
        answers were redirected to ``sent_via``, by default the same socket) as
        passed back or dropped by ``ret``, and its latency; returns ``ret``."""
        i = self._index.get(cookie)
        if i is not None:
            sent = self._pending.pop(cookie if sent_via is None else sent_via, None)
            if sent is not None:
                self.latency[i].observe(time.monotonic() - sent)
            if ret == sk.SK_PASS:
                self.counters.backends[i].reply_bytes += skb.len
            else:
                self.counters.backends[i].reply_dropped_bytes += skb.len
        return ret

    #: The running policy's generation, as ``policy_verdicts`` counts it.
    _generation = "1"

    def reload_policy(self) -> bool:
        """Load the ``--policy`` file again and, when it loads and verifies, judge
        every message from now on with it (``SIGHUP``): connected clients
        included, mid-stream; its generation is one more. A message being
        judged finishes with the policy it started with (the swap happens
        between verdicts: one thread runs them). The framing stays as started:
        a file whose ``parse(skb)`` is not the running one's is refused (for
        UDP, any ``parse``). Returns whether the new policy took; either way
        it is counted and logged (``policy_reloaded``, or
        ``policy_reload_failed`` naming why, the running policy kept).
        """
        c = self.counters
        path: str | None = getattr(getattr(self, "config", None), "policy", None)
        kept = {"kept": self.policy.name, "generation": c.policy_generation}
        if path is None:
            c.policy_reload_errors += 1
            log_event(log, logging.WARNING, "policy_reload_failed", policy="-",
                      error="no --policy file: the default policy has nothing to reload",
                      **kept)
            return False
        try:
            new = Policy.from_file(path)
            if not _same_parse(self.policy.parse, new.parse):
                raise PolicyError(
                    f"policy file {path!r}: its parse(skb) is not the running one's; the "
                    "framing of connected clients cannot change (restart the proxy)"
                )
        except PolicyError as exc:
            c.policy_reload_errors += 1
            log_event(log, logging.WARNING, "policy_reload_failed", policy=path,
                      error=str(exc), **kept)
            c.changed()
            return False
        self.policy = new
        if not getattr(self, "udp", False):  # a datagram is read whole
            self.verdict.set_reads(new.reads)
        c.policy_generation += 1
        c.policy_reloads += 1
        self._generation = str(c.policy_generation)
        log_event(log, logging.WARNING, "policy_reloaded", policy=path,
                  generation=c.policy_generation)
        c.changed()
        return True

    def _policy_failed(self, exc: BaseException) -> None:
        self._logged_errors += 1
        limited_log.event(
            ("policy raised", self.policy.name, type(exc)), "policy_error",
            policy=self.policy.name, error=describe_error(exc), dropped=self.unit,
        )

    def _not_a_verdict(self, ret: object) -> None:
        self.counters.bad_verdicts += 1
        self._logged_errors += 1
        limited_log.event(
            ("policy returned", self.policy.name, type(ret)), "policy_not_a_verdict",
            policy=self.policy.name, type=type(ret).__name__, value=sk.describe_value(ret),
            dropped=self.unit,
        )

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
    """A running proxy: its maps and programs, its backends' health, and what
    it counted.

    Built by :func:`run_proxy`, which hands it to ``task_status.started``.
    ``listen``: the bound addresses; ``backends``: the backends' addresses
    (the embedded echo backends' when none were given); ``health``: each
    backend's :class:`~._health.BackendHealth`; ``sessions``: client cookie ->
    :class:`~._session.Session`.
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
        nursery: trio.Nursery,
    ) -> None:
        self.config = config
        self.policy = policy
        self.framing = framing
        self.listen = listen
        self.backends = backends
        self.embedded = not config.backends
        self.runtime = runtime
        #: Where sessions, backend connection watchers and sweeps run.
        self.nursery = nursery
        self.counters = ProxyCounters([str(b) for b in backends])
        self._observe(len(backends))
        self.closed = self.counters.client_closed  # one count, two names
        self.health = [
            BackendHealth(i, str(b), self.counters.backends[i], self.counters,
                          backoff_min=config.backoff_min, backoff_max=config.backoff_max)
            for i, b in enumerate(backends)
        ]
        self.fds = FdBudget(self.counters, per_conn=2 if self.embedded else 1)
        self.clients = sk.SockHash(max_entries=config.max_clients, name="clients")
        #: Every backend connection, keyed by cookie, with the reply program.
        self.upstreams = sk.SockHash(
            max_entries=config.max_clients * len(backends) + 1, name="upstreams"
        )
        #: Every backend connection's reply lane (:class:`~._session.ReplyLane`), keyed
        #: by the connection's cookie: what the reply program redirects to.
        self.reply_lanes = sk.SockHash(
            max_entries=config.max_clients * len(backends) + 1, name="reply lanes"
        )
        #: client cookie -> that client's session (its backends map: a hash of maps)
        self.sessions: dict[int, Session] = {}
        self._upstream: dict[int, BackendConn] = {}  # backend connection cookie -> it
        self._index: dict[int, int] = {}  # slot or backend connection cookie -> backend index
        self._again = False  # the verdict running now judges a message again
        self._logged_errors = 0
        budget = config.policy_budget
        limit = config.max_message_size
        if policy.parse is not None:
            policy.parse.set_budget(budget)
        self.parser = policy.parse or sk.Program.load(
            framing.parse_within(limit), sk.BpfProgType.SK_SKB,
            name=f"parse ({framing.name})", budget=budget,
        )
        #: How backend replies are framed to be counted (the clients' framing).
        self.reply_parse = policy.parse.func if policy.parse is not None else (
            framing.parse_within(limit)
        )
        self.verdict = sk.Program.load(
            self._route, sk.BpfProgType.SK_SKB, name=f"verdict ({policy.name})", budget=budget,
            reads=policy.reads,
        )
        self.reply = sk.Program.load(
            self._reply, sk.BpfProgType.SK_SKB, name="reply", budget=budget
        )
        self.clients.attach(self.parser, sk.SK_SKB_STREAM_PARSER)
        self.clients.attach(self.verdict, sk.SK_SKB_STREAM_VERDICT)
        self.upstreams.attach(self.reply, sk.SK_SKB_VERDICT)

    # -- the programs --------------------------------------------------------------------

    def _route(self, skb: sk.SkBuff) -> int:
        """The clients' stream verdict: the policy's, given this client's backends;
        a redirect to a slot is counted on the slot (see :class:`BackendSlot`)."""
        s = skb.sk
        session = self.sessions.get(s.cookie) if s is not None else None
        ret = self._judge(skb, session.backends if session is not None else None,
                          again=self._again)
        redir = skb.sk_redir
        if redir is not None and ret is not sk.SK_DROP:
            slot = redir.owner
            if type(slot) is BackendSlot:
                if skb.flags:  # BPF_F_INGRESS: a slot has no receive queue
                    b = self.counters.backends[slot.index]
                    b.msgs -= 1
                    b.dropped += 1
                    return sk.SK_DROP
                if ret is sk.SK_PASS or sk.verdict_of(ret):
                    slot.routed += 1
        return ret

    def _reply(self, skb: sk.SkBuff) -> int:
        """The backends' verdict: count the replies, then send the bytes back to
        the client that owns the connection they came on."""
        s = skb.sk
        cookie = s.cookie if s is not None else 0
        conn = self._upstream.get(cookie)
        if conn is None:
            ret: int = sk.SK_DROP
        else:
            counter = conn.counter
            if counter is not None and not counter.broken:
                conn.answered += counter.feed(skb.data)
            conn.unanswered = False
            session: Session = conn.session
            if session.userspace:
                ret = sk.SK_PASS  # up to the proxy, which sends it on (and then looks)
            else:
                # through the connection's reply lane to the client (whole messages
                # of one backend at a time)
                ret = sk.sk_redirect_hash(skb, self.reply_lanes, cookie, 0)
                if session.client_eof:
                    session.check_finish()
        return self._count_reply(
            skb, cookie, ret, conn.session.slots[conn.index].sk.cookie if conn is not None else None
        )

    def backend_connections(self) -> list[int]:
        return [b.conns_open for b in self.counters.backends]

    def rejudge(self, session: Session, msg: memoryview) -> BackendSlot | None:
        """Run the verdict again on ``msg``, a message of ``session``'s client its
        backend could not take; the slot it is redirected to now, or ``None``
        (dropped, or passed to the proxy)."""
        skb = session.skb.reset(msg)
        self._again = True
        try:
            verdict = self.verdict.run_verdict(skb)
        finally:
            self._again = False
        redir = skb.sk_redir
        if verdict is not sk.Verdict.REDIRECT or redir is None:
            return None
        owner = redir.owner
        return owner if type(owner) is BackendSlot and owner.belongs_to(session) else None

    # -- backend connections -------------------------------------------------------------

    def adopt(self, conn: BackendConn) -> None:
        """Put a new backend connection in the books and in ``upstreams``.

        Raises:
            OSError: it cannot enter the map (full, or no longer connected).
        """
        cookie = conn.stream.sk.cookie
        self._upstream[cookie] = conn
        self._index[cookie] = conn.index
        try:
            self.upstreams.update(cookie, conn.stream)
            self.reply_lanes.update(cookie, conn.lane.sk)
        except OSError:
            del self._upstream[cookie], self._index[cookie]
            conn.stream.sk.close()  # out of upstreams, if it got in
            raise
        self.counters.backends[conn.index].conns_open += 1

    def forget(self, conn: BackendConn, reason: str) -> None:
        """Take an ending backend connection out of the books, counting why it
        ended (its stream is closed by the caller). Idempotent."""
        cookie = conn.stream.sk.cookie
        if self._upstream.pop(cookie, None) is None:
            return
        self._index.pop(cookie, None)
        conn.lane.sk.close()  # out of reply_lanes
        conn.lane = None  # the lane names the connection: no cycle left behind
        b = self.counters.backends[conn.index]
        b.conns_open -= 1
        b.closed[reason] += 1
        self.fds.released()
        self.counters.changed()

    async def check_backend(self, i: int) -> bool | str:
        """One active check of backend ``i``: connect (and shake hands for
        ``--backend-tls``), then close. True when it worked, why it failed, or
        False when this process could not tell (out of file descriptors)."""
        addr = self.backends[i]
        config = self.config
        try:
            stream = await dial(addr.host, addr.port, connect_timeout=config.connect_timeout,
                                handshake_timeout=config.handshake_timeout, tls=config.tls)
        except DialError as exc:
            if not exc.backends_fault:
                return False
            if exc.kind.endswith("_timeout"):
                self.counters.backends[i].timeouts[exc.kind.removesuffix("_timeout")] += 1
            return str(exc)
        await stream.aclose()
        return True

    # -- connections -----------------------------------------------------------------------

    async def serve(
        self, listeners: list[skmsg_tcp.SkListener], handler_nursery: trio.Nursery
    ) -> None:
        """Accept clients on ``listeners`` until cancelled (see :mod:`._accept`),
        and run the timeout sweep and the health checks.

        Raises:
            OSError: an unexpected accept error.
        """
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_clients, listener, self.serve_client,
                                   handler_nursery, self.fds)
            nursery.start_soon(self._sweep)
            if self.config.health_interval is not None:
                nursery.start_soon(run_health_checks, self.health, self.check_backend,
                                   self.config.health_interval)

    async def _sweep(self) -> None:
        """Look for timeouts every fraction of the shortest (see :meth:`Session.sweep`)."""
        config = self.config
        tick = min(1.0, max(0.02, min(config.idle_timeout, config.write_timeout) / 4))
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for session in list(self.sessions.values()):
                try:
                    await session.sweep(now)
                except BaseException as exc:
                    if escapes_boundary(exc):
                        raise
                    self._client_failed(session.peer, exc)
                    session.end("error")

    async def serve_client(self, client: skmsg_tcp.SkStream) -> None:
        """Proxy one client until its session ends. Never raises but
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
        self.fds.started()
        peer = _fmt(client.sk.remote_addr)
        key = client.sk.cookie
        session: Session | None = None
        reason = "error"
        proto = "tls" if self.config.tls is not None and self.config.tls.server else "tcp"
        log_event(log, logging.INFO, "client_accepted", client=peer, proto=proto)
        opened = time.monotonic()
        try:
            session = Session(self, client, peer)
            self.sessions[key] = session
            in_map = self._insert(client, key, peer)
            if in_map is None:
                session.end("refused")
                return
            tls = self.config.tls  # the kernel's order: into the map, then TLS
            if tls is not None and tls.server is not None:
                failed = await terminate(client, tls, self.config.handshake_timeout)
                if failed is not None:
                    if failed == "timeout":
                        c.timeouts["handshake"] += 1
                    session.end("handshake")
                    return
            session.userspace = not in_map
            session.running = True
            log_event(log, logging.INFO, "client_connected", client=peer, userspace=not in_map)
            await self._session(session, in_map)
        except BaseException as exc:
            reason = "shutdown" if escapes_boundary(exc) else "error"
            raise
        finally:
            if session is not None:
                session.end(reason)  # no change if it ended already
                reason = session.ending or reason
            self.closed[reason] += 1  # counted before the client sees the close
            stats = client.statistics()
            with trio.CancelScope(shield=True):
                if session is not None:
                    if reason == "no_backend":
                        await session.tell_unavailable()
                    await self._close(session)
                else:
                    await client.aclose()
                self.sessions.pop(key, None)
            c.clients_open -= 1
            self.fds.released()
            c.changed()
            log_event(log, logging.INFO, "client_closed", client=peer, reason=reason, proto=proto,
                      seconds=round(time.monotonic() - opened, 3),
                      bytes_in=stats.bytes_received, bytes_out=stats.bytes_sent)

    async def _close(self, session: Session) -> None:
        """Close everything ``session`` holds: its backend connections, its slots,
        its client."""
        for slot in session.slots:
            self._index.pop(slot.sk.cookie, None)
            self._pending.pop(slot.sk.cookie, None)
        for conn in list(session.conns):
            await session.end_conn(conn, "client", failure=None)
        session.backends.close()
        await session.client.aclose()
        session.release()

    def _insert(self, client: skmsg_tcp.SkStream, key: int, peer: str) -> bool | None:
        """Put ``client`` into ``clients`` with the message size limit: True; or
        mark it for user space when it half-closed already (False); or refuse
        it (None)."""
        try:
            self.clients.update(key, client)
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP and client.sk.state == sk.TcpState.CLOSE_WAIT:
                self.counters.userspace_clients += 1
                return False
            log_event(log, logging.WARNING, "client_refused", client=peer, reason="clients_map",
                      error=exc.strerror)
            return None
        psock = client.sk.psock
        if psock is not None and psock.strp is not None:  # the kernel's sk_rcvbuf
            psock.strp.max_msg_size = self.config.max_message_size
        return True

    async def _session(self, session: Session, in_map: bool) -> None:
        """Serve ``session`` until it ends (see :class:`Session`): its client's
        receive side here; :meth:`Session.end` cancels what is left."""
        with trio.CancelScope() as scope:
            session.scope = scope
            if session.over():
                return
            await session.from_client(in_map)
            await session.done.wait()

    async def _carry_in_user_space(self, session: Session) -> None:
        """What the runtime does for a client in ``clients``, for one that could not
        enter it: frame what it sent with the parser program, run the verdict
        program on each message, write each redirect out of its backend slot.

        Raises:
            StrParserError: the parser program failed.
            trio.BrokenResourceError: reading the client failed.
        """
        client = session.client
        parser = sk.StrParser(self.parser.run, sk=client.sk,
                              max_msg_size=self.config.max_message_size)
        skb = sk.SkBuff(client.sk)
        redirect = sk.Verdict.REDIRECT
        while data := await client.receive_some():
            for msg in parser.feed(data):
                if self.verdict.run_verdict(skb.reset(msg)) is not redirect:
                    continue
                target = skb.sk_redir.owner if skb.sk_redir is not None else None
                if type(target) is BackendSlot:
                    await target.egress_write([msg], False)
                else:
                    self.runtime.redirect_errors += 1


async def run_proxy(
    config: ProxyConfig, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run ``skmsg proxy`` until cancelled; ``task_status.started`` gets the
    :class:`Proxy` once it listens.

    Each ``--backend`` is tried once first: one that cannot be reached starts
    *down* (see :mod:`._health`) with a warning naming it; the proxy starts
    unless none can be reached. Everything it opened is closed when it returns.

    Raises:
        ProxyError: before it starts: a bad policy file or setting, an address
            that cannot be listened on (taken, ``EADDRINUSE``), no backend that
            can be reached.
    """
    framing, policy = load(config)
    unreachable: dict[int, ProxyError] = {}
    for i, addr in enumerate(config.backends):
        try:
            await probe(addr, config.connect_timeout)
        except ProxyError as exc:
            unreachable[i] = exc
    if config.backends and len(unreachable) == len(config.backends):
        raise unreachable[0]
    listeners = await _listen(config.listen, reuseport=config.reuseport)
    if config.select_cpus:
        for listener in listeners:
            try:
                select_by_cpu(listener.socket, config.select_cpus)
            except OSError as exc:
                for lst in listeners:
                    lst.socket.close()
                raise ProxyError(f"--worker-select cpu: the kernel refused the program: "
                                 f"{_why(exc)}") from exc
    try:
        listen = tuple(Address.of(lst.socket.getsockname()) for lst in listeners)
        async with open_runtime() as runtime, trio.open_nursery() as nursery:
            backends = config.backends
            if not backends:
                echo_framing = framing
                if policy.parse is not None:
                    echo_framing = Framing.custom(policy.parse.func, "custom")
                echo = functools.partial(serve_echo, framing=echo_framing,
                                         max_message_size=config.max_message_size)
                backends = tuple([
                    Address(*await nursery.start(echo, i)) for i in range(config.echo_backends)
                ])
            proxy = Proxy(config, policy=policy, framing=framing, listen=listen,
                          backends=backends, runtime=runtime, nursery=nursery)
            proxy.listen_sockets = tuple(lst.socket for lst in listeners)
            for i, error in unreachable.items():
                proxy.health[i].failed(str(error).removeprefix(f"--backend {backends[i]}: "))
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
    config.check()
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


def _same_parse(old: sk.Program | None, new: sk.Program | None) -> bool:
    """Whether ``new`` (a reloaded policy's parse program) frames as ``old``
    does: both absent, or the same code and constants."""
    if old is None or new is None:
        return old is new
    a = getattr(old.func, "__code__", None)
    b = getattr(new.func, "__code__", None)
    return a is not None and b is not None and (a.co_code, a.co_consts, a.co_names) == (
        b.co_code, b.co_consts, b.co_names
    )


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
    return _hostport(str(addr[0]), addr[1])
