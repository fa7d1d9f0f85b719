"""Counters of ``skmsg proxy`` and the table that shows them.

The proxy's programs count as they run (mutable, slotted, cheap to bump);
:meth:`ProxyCounters.snapshot` freezes them, together with the counts the
programs themselves keep (``Program.statistics()``: pass, drop, redirect,
errors), into a :class:`ProxyStats`; :func:`format_table` renders one.
"""

from __future__ import annotations

import time

import attrs
import trio

import skmsg_core as sk

__all__ = ["BackendCounters", "BackendStats", "ProxyCounters", "ProxyStats", "format_table"]


@attrs.define(slots=True)
class BackendCounters:
    """What went to and came from one backend, over every client's connection to it.

    ``msgs``/``bytes``: client messages redirected to it; ``dropped``: messages
    a policy sent its way and then dropped; ``reply_bytes``: bytes it answered
    that reached a client; ``reply_dropped_bytes``: bytes it answered after the
    client had gone.
    """

    address: str
    msgs: int = 0
    bytes: int = 0
    dropped: int = 0
    reply_bytes: int = 0
    reply_dropped_bytes: int = 0


@attrs.frozen
class BackendStats:
    """A snapshot of :class:`BackendCounters`."""

    address: str
    msgs: int
    bytes: int
    dropped: int
    reply_bytes: int
    reply_dropped_bytes: int


@attrs.frozen
class ProxyStats:
    """A snapshot of everything ``skmsg proxy`` counts.

    ``msgs``/``bytes``: client messages framed and judged; ``passed``,
    ``dropped``, ``redirected``: the verdicts (``dropped`` includes
    ``policy_errors``, verdicts that raised); ``userspace_clients``: clients
    that had half-closed before they could enter the clients map, carried in
    user space with the same programs; ``parse_errors``: clients closed
    because their stream could not be framed; ``connect_errors``: clients
    refused because a backend could not be reached; ``redirect_errors``:
    redirects whose target failed while the bytes were written;
    ``client_errors``: clients (UDP: sessions) closed because serving them
    raised an error that was not their connection's own (a plugin's, the
    proxy's); the proxy and its other clients carried on.
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
        self._lot = trio.lowlevel.ParkingLot()

    def judged(self) -> None:
        """A verdict ran: wake :meth:`wait_msgs` callers (none usually: cheap)."""
        if self._lot:
            self._lot.unpark_all()

    async def wait_msgs(self, n: int) -> None:
        """Wait until at least ``n`` client messages have been judged.

        Cancellation: nothing to undo.
        """
        while self.msgs < n:
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
            v.errors,
            self.parse_errors,
            self.connect_errors,
            redirect_errors,
            tuple(
                BackendStats(b.address, b.msgs, b.bytes, b.dropped, b.reply_bytes,
                             b.reply_dropped_bytes)
                for b in self.backends
            ),
            self.client_errors,
        )


def _n(x: int) -> str:
    return f"{x:,}"


def format_table(s: ProxyStats) -> str:
    """Render ``s`` as a compact table (no trailing newline)::

        skmsg proxy 127.0.0.1:7000 | up 3.2s | clients 1 open, 3 total
                                    msgs     bytes   pass   drop  redirect  reply bytes
        all clients                    4        36      0      1         3           45
        [0] 127.0.0.1:40111            2        24      -      0         2           30
        [1] 127.0.0.1:40112            1        12      -      1         1           15
        errors: policy 0, parse 0, backend connect 0, redirect 0
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
    cols += f" {'reply bytes':>12}"
    reply_total = sum(b.reply_bytes for b in s.backends)
    rows = [
        f"{'all clients':{width}}  {_n(s.msgs):>9} {_n(s.bytes):>11} {_n(s.passed):>7} "
        f"{_n(s.dropped):>7} {_n(s.redirected):>9} {_n(reply_total):>12}"
    ]
    for i, b in enumerate(s.backends):
        label = f"[{i}] {b.address}"
        rows.append(
            f"{label:{width}}  {_n(b.msgs):>9} {_n(b.bytes):>11} {'-':>7} {_n(b.dropped):>7} "
            f"{_n(b.msgs):>9} {_n(b.reply_bytes):>12}"
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
    return "\n".join([head, cols, *rows, errors])
