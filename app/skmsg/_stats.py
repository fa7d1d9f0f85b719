"""Counters of ``skmsg proxy`` and the table that shows them.

The proxy's programs and tasks count as they run (mutable, slotted, cheap to
bump); :meth:`ProxyCounters.snapshot` freezes them, together with the counts
the programs themselves keep (``Program.statistics()``: pass, drop, redirect,
errors), into a :class:`ProxyStats`; :func:`format_table` renders one.

Every fault the proxy handles is counted here, so that what an operator sees
(the table, metrics read from a snapshot) says what happened: a backend's
health and connections, clients lost with a backend's connection, timeouts
by kind, messages refused for their size, and why each client's connection
was closed. The names of the reasons and kinds are listed in
:data:`CLIENT_CLOSE_REASONS`, :data:`CONN_CLOSE_REASONS` and
:data:`TIMEOUT_KINDS`; a snapshot has a count (maybe 0) for each.
"""

from __future__ import annotations

import time
from collections import Counter

import attrs
import trio

import skmsg_core as sk

__all__ = [
    "CLIENT_CLOSE_REASONS",
    "CONN_CLOSE_REASONS",
    "TIMEOUT_KINDS",
    "BackendCounters",
    "BackendStats",
    "ProxyCounters",
    "ProxyStats",
    "format_table",
]

#: Why the proxy's connection to a client ended (``ProxyStats.client_closed``):
#:
#: - ``done``: the client half-closed and every reply it was owed was sent;
#: - ``client_closed``: the client closed or reset its connection;
#: - ``idle``: no byte either way for ``--idle-timeout``;
#: - ``write_timeout``: the client read nothing for ``--write-timeout``;
#: - ``handshake``: its TLS handshake failed or took over ``--handshake-timeout``;
#: - ``backend_lost``: a backend connection ended owing it a reply;
#: - ``no_backend``: a message of its could be taken by no backend;
#: - ``too_large``: a message over ``--max-message-size``;
#: - ``parse_error``: its stream could not be framed;
#: - ``refused``: it could not enter the clients map (``--max-clients``);
#: - ``error``: serving it raised (``client_errors``);
#: - ``shutdown``: the proxy stopped.
CLIENT_CLOSE_REASONS = (
    "done", "client_closed", "idle", "write_timeout", "handshake", "backend_lost",
    "no_backend", "too_large", "parse_error", "refused", "error", "shutdown",
)
#: Why one of the proxy's connections to a backend ended (``BackendStats.closed``):
#: ``eof`` (the backend closed it), ``reset`` (it broke: a reset, a TLS
#: error), ``idle`` (unused for ``--idle-timeout``, nothing owed: closed by
#: the proxy), ``response_timeout`` (a reply owed for ``--idle-timeout``),
#: ``write_timeout`` (it read nothing for ``--write-timeout``), ``client``
#: (its client's session ended).
CONN_CLOSE_REASONS = ("eof", "reset", "idle", "response_timeout", "write_timeout", "client")
#: Timeouts by kind: ``connect`` (a backend connect), ``handshake`` (a TLS
#: handshake, either hop), ``idle`` (a client), ``response`` (a backend owing a
#: reply), ``write`` (a peer that reads nothing; client or backend).
TIMEOUT_KINDS = ("connect", "handshake", "idle", "response", "write")


def _zeros(names: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(names, 0)


@attrs.define(slots=True)
class BackendCounters:
    """What went to and came from one backend, over every client's connection to it.

    ``msgs``/``bytes``: client messages redirected to it; ``dropped``: messages
    a policy sent its way and then dropped; ``reply_bytes``: bytes it answered
    that reached a client; ``reply_dropped_bytes``: bytes it answered after the
    client had gone.

    Health and connections: ``up`` (see :mod:`._health`); ``downs``: times it
    was marked down; ``connects``/``connect_errors``: connections made, and
    attempts that failed (refused, unreachable, timed out, TLS handshake
    failed); ``conns_open``; ``checks``/``check_failures``: active health
    checks; ``unavailable``: messages routed to it while it was down or could
    not be connected; ``rerouted``: messages that could not be written to it
    and were judged again; ``backend_lost``: clients closed because a
    connection to it ended owing them a reply; ``timeouts`` by kind
    (:data:`TIMEOUT_KINDS`) and ``closed`` by reason (:data:`CONN_CLOSE_REASONS`).
    """

    address: str
    msgs: int = 0
    bytes: int = 0
    dropped: int = 0
    reply_bytes: int = 0
    reply_dropped_bytes: int = 0
    up: bool = True
    downs: int = 0
    connects: int = 0
    connect_errors: int = 0
    conns_open: int = 0
    checks: int = 0
    check_failures: int = 0
    unavailable: int = 0
    rerouted: int = 0
    backend_lost: int = 0
    timeouts: dict[str, int] = attrs.field(factory=lambda: _zeros(TIMEOUT_KINDS))
    closed: dict[str, int] = attrs.field(factory=lambda: _zeros(CONN_CLOSE_REASONS))


@attrs.frozen
class BackendStats:
    """A snapshot of :class:`BackendCounters` (its dicts are copies)."""

    address: str
    msgs: int
    bytes: int
    dropped: int
    reply_bytes: int
    reply_dropped_bytes: int
    up: bool = True
    downs: int = 0
    connects: int = 0
    connect_errors: int = 0
    conns_open: int = 0
    checks: int = 0
    check_failures: int = 0
    unavailable: int = 0
    rerouted: int = 0
    backend_lost: int = 0
    timeouts: dict[str, int] = attrs.field(factory=lambda: _zeros(TIMEOUT_KINDS),
                                           metadata={"label": "kind"})
    closed: dict[str, int] = attrs.field(factory=lambda: _zeros(CONN_CLOSE_REASONS))


@attrs.frozen
class ProxyStats:
    """A snapshot of everything ``skmsg proxy`` counts.

    ``msgs``/``bytes``: client messages framed and judged; ``passed``,
    ``dropped``, ``redirected``: the verdicts (``dropped`` includes
    ``policy_errors``, verdicts that raised or returned something that is not
    a verdict; a message judged again after its backend failed, see
    ``rerouted``, is counted again); ``userspace_clients``: clients that had
    half-closed before they could enter the clients map, carried in user
    space with the same programs; ``parse_errors``: clients closed because
    their stream could not be framed; ``connect_errors``: backend connects
    that failed (UDP: sessions refused); ``redirect_errors``: redirects whose
    target failed while the bytes were written; ``client_errors``: clients
    (UDP: sessions) closed because serving them raised an error that was not
    their connection's own (a plugin's, the proxy's); the proxy and its other
    clients carried on.

    Faults (TCP and TLS): ``client_closed``: clients closed, by reason
    (:data:`CLIENT_CLOSE_REASONS`); ``timeouts`` of clients by kind
    (``idle``, ``write``, ``handshake``; a backend's are in its
    :class:`BackendStats`); ``too_large``: messages over
    ``--max-message-size`` (an HTTP client got a 413 for each);
    ``rerouted``: messages judged again because their backend could not take
    them; ``no_backend``: messages no backend could take (their client was
    told); ``backend_lost``: clients closed because a backend connection ended
    owing them a reply (all backends); ``accept_paused``: times accepting
    stopped at the file descriptor limit, ``fd_limit`` that limit
    (``RLIMIT_NOFILE``, 0 when not known).

    Policy reloads (``SIGHUP``): ``policy_generation`` (1 as started, one
    more per reload that took), ``policy_reloads`` (those that took),
    ``policy_reload_errors`` (files that failed to load or verify: the
    running policy was kept), ``policy_verdicts``: verdicts run, by the
    generation (a string) of the policy that ran them.
    """

    listen: tuple[str, ...]
    uptime: float
    clients_open: int
    clients_total: int
    userspace_clients: int
    msgs: int
    bytes: int
    passed: int
    dropped: int
    redirected: int
    policy_errors: int
    parse_errors: int
    connect_errors: int
    redirect_errors: int
    backends: tuple[BackendStats, ...]
    client_errors: int = 0
    client_closed: dict[str, int] = attrs.field(factory=lambda: _zeros(CLIENT_CLOSE_REASONS))
    timeouts: dict[str, int] = attrs.field(factory=lambda: _zeros(TIMEOUT_KINDS),
                                           metadata={"label": "kind"})
    too_large: int = 0
    rerouted: int = 0
    no_backend: int = 0
    backend_lost: int = 0
    accept_paused: int = 0
    fd_limit: int = attrs.field(default=0, metadata={"kind": "gauge"})
    policy_generation: int = attrs.field(default=1, metadata={"kind": "gauge"})
    policy_reloads: int = 0
    policy_reload_errors: int = 0
    policy_verdicts: dict[str, int] = attrs.field(factory=dict,
                                                  metadata={"label": "generation"})


class ProxyCounters:
    """The proxy's live counters. Not thread-safe; bumped from the trio thread."""

    def __init__(self, backends: list[str]) -> None:
        self.started = time.monotonic()
        self.backends = [BackendCounters(addr) for addr in backends]
        self.msgs = 0
        self.bytes = 0
        self.clients_open = 0
        self.clients_total = 0
        self.userspace_clients = 0
        self.parse_errors = 0
        self.connect_errors = 0
        self.client_errors = 0
        #: Verdicts that were no verdict (counted with the program's errors).
        self.bad_verdicts = 0
        #: Clients closed by reason (the proxy's ``closed``; UDP reasons too).
        self.client_closed: Counter[str] = Counter(_zeros(CLIENT_CLOSE_REASONS))
        self.timeouts = _zeros(TIMEOUT_KINDS)
        self.too_large = 0
        self.rerouted = 0
        self.no_backend = 0
        self.accept_paused = 0
        self.fd_limit = 0
        #: The policy's generation: 1 as started, one more per reload (SIGHUP).
        self.policy_generation = 1
        self.policy_reloads = 0
        self.policy_reload_errors = 0
        #: Verdicts run (messages judged by the policy) by policy generation.
        self.policy_verdicts: Counter[str] = Counter()
        self._lot = trio.lowlevel.ParkingLot()

    def judged(self) -> None:
        """A verdict ran: wake :meth:`wait_msgs` callers (none usually: cheap)."""
        if self._lot:
            self._lot.unpark_all()

    changed = judged  # anything else a waiter may be looking for changed

    async def wait_msgs(self, n: int) -> None:
        """Wait until at least ``n`` client messages have been judged.

        Cancellation: nothing to undo.
        """
        while self.msgs < n:
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    async def wait_for(self, ready: object) -> None:
        """Wait until ``ready()`` (a callable returning a truth value, looked at
        after each count that wakes waiters: verdicts, closes, health and
        timeouts) is true. For tests and demos that must see a fault counted.

        Cancellation: nothing to undo.
        """
        assert callable(ready)
        while not ready():
            await self._lot.park()
        await trio.lowlevel.checkpoint()

    def snapshot(
        self, verdict: sk.Program, listen: tuple[str, ...], redirect_errors: int
    ) -> ProxyStats:
        """Freeze the counters, with ``verdict``'s own (pass, drop, redirect, errors)."""
        v = verdict.statistics()
        return ProxyStats(
            listen,
            time.monotonic() - self.started,
            self.clients_open,
            self.clients_total,
            self.userspace_clients,
            self.msgs,
            self.bytes,
            v.passed,
            v.dropped,
            v.redirected,
            v.errors + self.bad_verdicts,
            self.parse_errors,
            self.connect_errors,
            redirect_errors,
            tuple(
                BackendStats(
                    b.address, b.msgs, b.bytes, b.dropped, b.reply_bytes,
                    b.reply_dropped_bytes, b.up, b.downs, b.connects, b.connect_errors,
                    b.conns_open, b.checks, b.check_failures, b.unavailable, b.rerouted,
                    b.backend_lost, dict(b.timeouts), dict(b.closed),
                )
                for b in self.backends
            ),
            self.client_errors,
            dict(self.client_closed),
            dict(self.timeouts),
            self.too_large,
            self.rerouted,
            self.no_backend,
            sum(b.backend_lost for b in self.backends),
            self.accept_paused,
            self.fd_limit,
            self.policy_generation,
            self.policy_reloads,
            self.policy_reload_errors,
            dict(self.policy_verdicts),
        )


def _n(x: int) -> str:
    return f"{x:,}"


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in counts.items() if v)


def format_table(s: ProxyStats) -> str:
    """Render ``s`` as a compact table (no trailing newline)::

        skmsg proxy 127.0.0.1:7000 | up 3.2s | clients 1 open, 3 total
                                    msgs     bytes   pass   drop  redirect  reply bytes  state
        all clients                    4        36      0      1         3           45
        [0] 127.0.0.1:40111            2        24      -      0         2           30  up
        [1] 127.0.0.1:40112            1        12      -      1         1           15  down
        errors: policy 0, parse 0, backend connect 0, redirect 0

    then, when something happened, a line of faults (``faults: ...``), one of
    closed clients by reason (``clients closed: ...``), one of policy
    reloads when there were any (``policy generation 2 (reloads 1, failed
    0); verdicts by generation: 1: 5, 2: 3``) and, for a backend that failed
    somehow, one with its connections' story (``[1] conns 0
    open, 3 made; downs 1, ...; closed: reset 2, client 1``).
    """
    width = max([len("all clients")] + [len(f"[{i}] {b.address}") for i, b in
                                        enumerate(s.backends)])
    head = (
        f"skmsg proxy {', '.join(s.listen)} | up {s.uptime:.1f}s | "
        f"clients {s.clients_open} open, {s.clients_total} total"
    )
    if s.userspace_clients:
        head += f" ({s.userspace_clients} half-closed early, carried in user space)"
    cols = f"{'':{width}}  {'msgs':>9} {'bytes':>11} {'pass':>7} {'drop':>7} {'redirect':>9}"
    cols += f" {'reply bytes':>12}  state"
    reply_total = sum(b.reply_bytes for b in s.backends)
    rows = [
        f"{'all clients':{width}}  {_n(s.msgs):>9} {_n(s.bytes):>11} {_n(s.passed):>7} "
        f"{_n(s.dropped):>7} {_n(s.redirected):>9} {_n(reply_total):>12}"
    ]
    for i, b in enumerate(s.backends):
        label = f"[{i}] {b.address}"
        rows.append(
            f"{label:{width}}  {_n(b.msgs):>9} {_n(b.bytes):>11} {'-':>7} {_n(b.dropped):>7} "
            f"{_n(b.msgs):>9} {_n(b.reply_bytes):>12}  {'up' if b.up else 'down'}"
        )
    errors = (
        f"errors: policy {s.policy_errors}, parse {s.parse_errors}, "
        f"backend connect {s.connect_errors}, redirect {s.redirect_errors}"
    )
    reply_lost = sum(b.reply_dropped_bytes for b in s.backends)
    if reply_lost:
        errors += f", reply bytes for gone clients {reply_lost}"
    if s.client_errors:
        errors += f", clients closed on an error {s.client_errors}"
    lines = [head, cols, *rows, errors]
    faults = _nonzero({
        "backend lost": s.backend_lost, "no backend": s.no_backend, "rerouted": s.rerouted,
        "too large": s.too_large, "accept paused at fd limit": s.accept_paused,
    })
    timeouts = _nonzero(s.timeouts)
    if timeouts:
        faults += ("; " if faults else "") + f"client timeouts: {timeouts}"
    if faults:
        lines.append(f"faults: {faults}")
    closed = _nonzero(s.client_closed)
    if closed:
        lines.append(f"clients closed: {closed}")
    if s.policy_reloads or s.policy_reload_errors:
        by_gen = ", ".join(f"{g}: {_n(n)}" for g, n in sorted(
            s.policy_verdicts.items(), key=lambda kv: int(kv[0])))
        lines.append(f"policy generation {s.policy_generation} (reloads {s.policy_reloads}, "
                     f"failed {s.policy_reload_errors}); verdicts by generation: {by_gen}")
    for i, b in enumerate(s.backends):
        story = _nonzero({
            "downs": b.downs, "connect errors": b.connect_errors, "unavailable": b.unavailable,
            "rerouted": b.rerouted, "clients lost": b.backend_lost,
            "checks failed": b.check_failures,
        })
        timeouts = _nonzero(b.timeouts)
        closes = _nonzero(b.closed)
        broken = any(b.closed[r] for r in ("reset", "response_timeout", "write_timeout"))
        if story or timeouts or broken:
            parts = [f"conns {b.conns_open} open, {b.connects} made"]
            parts += [x for x in (story, f"timeouts: {timeouts}" if timeouts else "",
                                  f"closed: {closes}" if closes else "") if x]
            lines.append(f"[{i}] " + "; ".join(parts))
    return "\n".join(lines)
