"""``skmsg proxy --metrics HOST:PORT``: the proxy's counters for Prometheus.

Theory of operation
-------------------
Nothing is counted twice and nothing runs on the data path for metrics but
one cheap hook. The proxy already counts what it does (:mod:`._stats`,
``Program.statistics()``, the runtime's error counters); at scrape time a
custom collector (:class:`ProxyCollector`) takes one snapshot of all of it
and renders it as metric families. The reply latency histograms are the one
hook: :class:`LatencyHistogram` is a plain list of bucket counts that the
proxy's reply program bumps (a bisect and two additions, no lock: the trio
thread is its only writer), read by the collector at scrape time.

The HTTP server is ``prometheus_client``'s own (a daemon thread): a scrape
reads the counters from that thread while the trio thread bumps them. Each
counter is a Python int (reads are atomic under the GIL) and the snapshot
is taken field by field, so a scrape may see one counter a message ahead of
another, never a torn value.

Names and labels
----------------
Drawn from the statistics records' attrs fields, so a counter added to
``ProxyStats`` or ``BackendStats`` is exported with no code here:
:data:`PROXY_FIELDS` and :data:`BACKEND_FIELDS` name the ones with a
better metric name or help than the default (``skmsg_proxy_<field>_total``
for an int field, ``skmsg_proxy_backend_<field>_total`` per backend). A
field holding a ``dict`` (for example counts by reason) becomes one series
per key, labelled ``reason`` (or the field's ``metadata["label"]``, such as
``kind`` for timeouts). See ``docs/proxy.md`` for the list.
"""

from __future__ import annotations

import bisect
import errno
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

import skmsg_core as sk

from ._stats import ProxyStats

if TYPE_CHECKING:
    from ._proxy import Address, ProxyPrograms

__all__ = [
    "BUCKETS",
    "LatencyHistogram",
    "MetricsServer",
    "ProxyCollector",
    "Snapshot",
    "render",
    "snapshot",
    "start_metrics",
]

#: Upper bounds (seconds) of the reply latency buckets; +Inf is implied.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)


#: The listen backlog the proxy's TCP listeners ask for (trio's default).
LISTEN_BACKLOG = 0xFFFF


@attrs.define(slots=True)
class LatencyHistogram:
    """Observed durations in :data:`BUCKETS` (plus +Inf), their sum and count.

    ``counts[i]`` counts observations ``<= BUCKETS[i]`` and above the bucket
    before (not cumulative: the collector adds them up); ``counts[-1]`` those
    above the last bound. Only the trio thread writes.
    """

    counts: list[int] = attrs.field(factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        out: list[tuple[str, int]] = []
        total = 0
        counts = list(self.counts)  # one copy: a consistent read of the buckets
        for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out



# -- what a scrape reads, taken on the trio thread -------------------------------------------


@attrs.frozen
class Listener:
    """A listening socket's queue, from ``/proc/net`` (None where unknown)."""

    address: str
    queue: int | None  # TCP: connections waiting for accept; UDP: bytes queued
    backlog: int | None  # TCP: the accept queue's limit
    drops: int | None  # UDP: datagrams dropped on a full receive queue


@attrs.frozen
class Snapshot:
    """Everything one scrape renders, read in one go on the trio thread."""

    proto: str
    policy: str
    stats: ProxyStats
    programs: tuple[sk.ProgStats, ...]
    #: per backend: cumulative ``(le, count)`` buckets and the sum of observations
    latency: tuple[tuple[tuple[tuple[str, int], ...], float], ...]
    connections: tuple[int, ...]
    closed: Mapping[str, int]
    socket_errors: int
    listeners: tuple[Listener, ...]
    #: UDP only: socket sets in all and kept idle
    udp: Mapping[str, int] = attrs.field(factory=dict)


def _proto(proxy: ProxyPrograms) -> str:
    if getattr(proxy, "udp", False):
        return "udp"
    tls = getattr(getattr(proxy, "config", None), "tls", None)
    return "tls" if tls is not None and tls.server is not None else "tcp"


def snapshot(proxy: ProxyPrograms) -> Snapshot:
    """Read ``proxy``'s counters (call on the trio thread)."""
    programs = [proxy.verdict, getattr(proxy, "reply", None), getattr(proxy, "parser", None)]
    connections = proxy.backend_connections()
    udp: dict[str, int] = {}
    if getattr(proxy, "udp", False):
        udp = {"units": len(getattr(proxy, "_units", ())),
               "kept": len(getattr(proxy, "_kept", ())),
               "reply_send_drops": proxy.reply_send_drops()}  # type: ignore[attr-defined]
    return Snapshot(
        proto=_proto(proxy),
        policy=proxy.policy.name,
        stats=proxy.statistics(),
        programs=tuple(p.statistics() for p in programs if p is not None),
        latency=tuple((tuple(h.cumulative()), h.sum) for h in proxy.latency),
        connections=tuple(connections),
        closed=dict(proxy.closed),
        socket_errors=proxy.runtime.socket_errors,
        listeners=tuple(_listeners(proxy)),
        udp=udp,
    )


def _listeners(proxy: ProxyPrograms) -> Iterator[Listener]:
    socks: list[Any] = list(getattr(proxy, "listen_sockets", ()))
    udp_listener = getattr(proxy, "listener", None)
    if udp_listener is not None:
        socks.append(udp_listener)
    for s in socks:
        try:
            name = s.getsockname()
            inode = os.fstat(s.fileno()).st_ino
        except (OSError, ValueError):
            continue
        yield _proc_net(str(_address(name)), inode, udp=udp_listener is s,
                        v6=getattr(s, "family", socket.AF_INET) == socket.AF_INET6)


def _address(name: tuple[Any, ...]) -> Address:
    from ._proxy import Address  # noqa: PLC0415 (the proxy imports this module)

    return Address.of(name)


def _proc_net(address: str, inode: int, *, udp: bool, v6: bool) -> Listener:
    """The ``/proc/net/{tcp,udp}{,6}`` line of socket ``inode``: for a TCP
    listener ``rx_queue`` is its accept queue (its limit is not shown there:
    the backlog the proxy asks for, :data:`LISTEN_BACKLOG`, capped by
    ``net.core.somaxconn``); for UDP ``rx_queue`` is the bytes queued and the
    last column the drops."""
    path = f"/proc/net/{'udp' if udp else 'tcp'}{'6' if v6 else ''}"
    try:
        with open(path, encoding="ascii") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) > 9 and cols[9] == str(inode):
                    rx = int(cols[4].split(":")[1], 16)
                    if udp:
                        return Listener(address, rx, None, int(cols[-1]) if len(cols) > 12
                                        else None)
                    return Listener(address, rx, _backlog(), None)
    except OSError:
        pass
    return Listener(address, None, None, None)


def _backlog() -> int | None:
    try:
        with open("/proc/sys/net/core/somaxconn", encoding="ascii") as f:
            return min(LISTEN_BACKLOG, int(f.read()))
    except (OSError, ValueError):
        return None


# -- rendering --------------------------------------------------------------------------------


@attrs.frozen
class Spec:
    """How one statistics field is exported: a metric ``name`` (without the
    ``_total`` a counter gets), its ``kind``, ``help``, and a constant label
    (``label``, ``value``: the fields that share one metric, such as verdicts)."""

    name: str
    kind: str  # "counter", "gauge" or "skip"
    help: str
    label: str | None = None
    value: str | None = None


SKIP = Spec("", "skip", "")

#: ``ProxyStats`` fields with a name or help of their own; any other field is
#: exported by :func:`_default_spec`.
PROXY_FIELDS: dict[str, Spec] = {
    "listen": SKIP,
    "backends": SKIP,
    "uptime": Spec("skmsg_proxy_uptime_seconds", "gauge", "Seconds since the proxy started."),
    "clients_open": Spec("skmsg_proxy_clients_open", "gauge",
                         "Clients being served now (UDP: open sessions)."),
    "clients_total": Spec("skmsg_proxy_clients", "counter",
                          "Clients accepted (UDP: sessions opened)."),
    "userspace_clients": Spec("skmsg_proxy_userspace_clients", "counter",
                              "Clients that half-closed before they could enter the clients "
                              "map, carried in user space."),
    "msgs": Spec("skmsg_proxy_messages", "counter", "Client messages framed and judged."),
    "bytes": Spec("skmsg_proxy_message_bytes", "counter", "Bytes of client messages judged."),
    "passed": Spec("skmsg_proxy_verdicts", "counter", "Verdicts on client messages.",
                   "verdict", "pass"),
    "dropped": Spec("skmsg_proxy_verdicts", "counter", "", "verdict", "drop"),
    "redirected": Spec("skmsg_proxy_verdicts", "counter", "", "verdict", "redirect"),
    "policy_errors": Spec("skmsg_proxy_errors", "counter",
                          "Errors by reason (policy: a verdict that raised, timed out or "
                          "returned no verdict; parse: a client stream that could not be "
                          "framed; backend_connect: a client refused for want of a backend "
                          "or a socket; redirect: a redirect whose target failed; client: "
                          "a client whose serving raised).", "reason", "policy"),
    "parse_errors": Spec("skmsg_proxy_errors", "counter", "", "reason", "parse"),
    "connect_errors": Spec("skmsg_proxy_errors", "counter", "", "reason", "backend_connect"),
    "redirect_errors": Spec("skmsg_proxy_errors", "counter", "", "reason", "redirect"),
    "client_errors": Spec("skmsg_proxy_errors", "counter", "", "reason", "client"),
    "client_closed": SKIP,  # skmsg_proxy_clients_closed_total, from the same counts
    "timeouts": Spec("skmsg_proxy_timeouts", "counter",
                     "Client timeouts by kind (idle, write, handshake); a backend's are "
                     "skmsg_proxy_backend_timeouts_total."),
    "too_large": Spec("skmsg_proxy_messages_too_large", "counter",
                      "Client messages over --max-message-size (HTTP: answered 413); "
                      "each closed its client."),
    "rerouted": Spec("skmsg_proxy_messages_rerouted", "counter",
                     "Messages judged again because their backend could not take them "
                     "(down, not connectable, or its connection failed before writing)."),
    "no_backend": Spec("skmsg_proxy_messages_undeliverable", "counter",
                       "Messages no backend could take; each closed its client (HTTP: "
                       "answered 503)."),
    # clients_closed_total{reason="backend_lost"}, and per backend backend_lost_clients
    "backend_lost": SKIP,
    "accept_paused": Spec("skmsg_proxy_accept_paused", "counter",
                          "Times accepting paused at the file descriptor limit (EMFILE, "
                          "ENFILE, or the proxy's own reckoning)."),
    "policy_generation": Spec("skmsg_proxy_policy_generation", "gauge",
                              "The running policy's generation: 1 as started, one more per "
                              "reload (SIGHUP) that took."),
    "policy_reloads": Spec("skmsg_proxy_policy_reloads", "counter",
                           "Policy reloads (SIGHUP) that took."),
    "policy_verdicts": Spec("skmsg_proxy_policy_verdicts", "counter",
                            "Verdicts the policy ran, by the generation that ran them."),
    "fd_limit": Spec("skmsg_proxy_fd_limit", "gauge",
                     "The file descriptor limit accepting works within (RLIMIT_NOFILE)."),
}

#: ``BackendStats`` fields with a name or help of their own.
BACKEND_FIELDS: dict[str, Spec] = {
    "address": SKIP,
    "msgs": Spec("skmsg_proxy_backend_messages", "counter",
                 "Client messages redirected to the backend."),
    "bytes": Spec("skmsg_proxy_backend_bytes", "counter",
                  "Bytes of client messages redirected to the backend."),
    "dropped": Spec("skmsg_proxy_backend_dropped_messages", "counter",
                    "Messages a policy redirected to the backend, then dropped (its "
                    "connection was gone)."),
    "reply_bytes": Spec("skmsg_proxy_backend_reply_bytes", "counter",
                        "Bytes the backend answered that reached a client."),
    "reply_dropped_bytes": Spec("skmsg_proxy_backend_reply_dropped_bytes", "counter",
                                "Bytes the backend answered after their client had gone."),
    "up": Spec("skmsg_proxy_backend_up", "gauge",
               "1 while the backend is up, 0 while it is marked down (see docs/proxy.md)."),
    "downs": Spec("skmsg_proxy_backend_downs", "counter", "Times the backend was marked down."),
    "connects": Spec("skmsg_proxy_backend_connects", "counter",
                     "Connections made to the backend (TLS: handshake done)."),
    "connect_errors": Spec("skmsg_proxy_backend_connect_errors", "counter",
                           "Connects to the backend that failed: refused, unreachable, "
                           "timed out, TLS handshake failed."),
    "conns_open": SKIP,  # skmsg_proxy_backend_connections
    "checks": Spec("skmsg_proxy_backend_checks", "counter",
                   "Active health checks of the backend (--health-interval)."),
    "check_failures": Spec("skmsg_proxy_backend_check_failures", "counter",
                           "Active health checks of the backend that failed."),
    "unavailable": Spec("skmsg_proxy_backend_unavailable_messages", "counter",
                        "Messages routed to the backend while it was down or could not be "
                        "connected (judged again)."),
    "rerouted": Spec("skmsg_proxy_backend_rerouted_messages", "counter",
                     "Messages the backend could not take, judged again."),
    "backend_lost": Spec("skmsg_proxy_backend_lost_clients", "counter",
                         "Clients closed because a connection to the backend ended owing "
                         "them a reply (reset, EOF, response or write timeout)."),
    "timeouts": Spec("skmsg_proxy_backend_timeouts", "counter",
                     "The backend's timeouts by kind (connect, handshake, response, write)."),
    "closed": Spec("skmsg_proxy_backend_connections_closed", "counter",
                   "Connections to the backend closed, by reason (eof, reset, idle, "
                   "response_timeout, write_timeout, client)."),
}


def _default_spec(prefix: str, field: attrs.Attribute[Any]) -> Spec:
    """A field nobody named: ``<prefix>_errors{reason}`` for ``*_errors``, a
    counter ``<prefix>_<name>_total`` for an int, a gauge for a bool or float,
    a counter with a ``reason`` label for a mapping (see the module). A field's
    ``metadata`` may say ``metric`` (a name), ``kind`` and ``help``."""
    meta = field.metadata
    name = str(meta.get("metric", f"{prefix}_{field.name.removesuffix('_total')}"))
    doc = str(meta.get("help", f"{field.name} ({prefix.removeprefix('skmsg_')} statistics)."))
    kind = meta.get("kind")
    if kind is None and field.name.endswith("_errors") and "metric" not in meta:
        return Spec(f"{prefix}_errors", "counter", doc, "reason",
                    field.name.removesuffix("_errors"))
    if kind is None:
        kind = "gauge" if field.type in (bool, float, "bool", "float") else "counter"
    return Spec(name, str(kind), doc)


class _Families:
    """Metric families by name, built as samples come (several fields may share one)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}

    def add(self, spec: Spec, labels: dict[str, str], value: float) -> None:
        if spec.kind == "skip":
            return
        if spec.label is not None and spec.value is not None:
            labels = {**labels, spec.label: spec.value}
        fam = self.by_name.get(spec.name)
        if fam is None:
            cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
            fam = cls(spec.name, spec.help or spec.name, labels=list(labels))
            self.by_name[spec.name] = fam
        elif not fam.documentation or fam.documentation == spec.name:
            fam.documentation = spec.help or fam.documentation
        fam.add_metric(list(labels.values()), value)  # type: ignore[attr-defined]

    def add_fields(self, record: Any, specs: Mapping[str, Spec], prefix: str,
                   labels: dict[str, str]) -> None:
        """One sample per field of the attrs ``record`` (see :func:`_default_spec`)."""
        for field in attrs.fields(type(record)):
            spec = specs.get(field.name) or _default_spec(prefix, field)
            value = getattr(record, field.name)
            if isinstance(value, Mapping):
                label = str(field.metadata.get("label", "reason"))
                for key, n in sorted(value.items()):
                    self.add(Spec(spec.name, spec.kind, spec.help, label, str(key)),
                             labels, float(n))
            elif isinstance(value, bool | int | float):
                self.add(spec, labels, float(value))


def render(snap: Snapshot) -> Iterable[Metric]:
    """The metric families of ``snap`` (see ``docs/proxy.md``)."""
    fams = _Families()
    proto = {"proto": snap.proto}
    info = GaugeMetricFamily("skmsg_proxy_info", "The proxy: what it listens on and "
                             "its policy (always 1).", labels=["proto", "listen", "policy"])
    info.add_metric([snap.proto, ", ".join(snap.stats.listen), snap.policy], 1)
    fams.by_name[info.name] = info
    fams.add_fields(snap.stats, PROXY_FIELDS, "skmsg_proxy", proto)
    closed = Spec("skmsg_proxy_clients_closed", "counter",
                  "Clients closed (UDP: sessions ended), by reason.")
    for reason, n in sorted(snap.closed.items()):
        fams.add(Spec(closed.name, "counter", closed.help, "reason", reason), proto, n)
    if not snap.closed:
        fams.by_name.setdefault(closed.name, CounterMetricFamily(
            closed.name, closed.help, labels=["proto", "reason"]))
    fams.add(Spec("skmsg_proxy_socket_errors", "counter",
                  "Sockets whose service ended on an error that was not the connection's "
                  "own (a plugin's or the runtime's), contained."), {}, snap.socket_errors)
    latency = HistogramMetricFamily(
        "skmsg_proxy_backend_reply_latency_seconds",
        "From a message's redirect to a backend connection until the next reply bytes "
        "from it.", labels=["backend", "index"])
    for i, b in enumerate(snap.stats.backends):
        labels = {"backend": b.address, "index": str(i)}
        fams.add_fields(b, BACKEND_FIELDS, "skmsg_proxy_backend", labels)
        fams.add(Spec("skmsg_proxy_backend_connections", "gauge",
                      "Open connections (UDP: sockets) to the backend."), labels,
                 snap.connections[i] if i < len(snap.connections) else 0)
        if i < len(snap.latency):
            buckets, total = snap.latency[i]
            latency.add_metric([b.address, str(i)], list(buckets), total)
    fams.by_name[latency.name] = latency
    for p in snap.programs:
        labels = {"program": p.name, "prog_type": p.prog_type.name}
        fams.add(Spec("skmsg_proxy_program_runs", "counter", "Runs of the program."),
                 labels, p.run_cnt)
        fams.add(Spec("skmsg_proxy_program_run_seconds", "counter",
                      "Time spent running the program (counted while --metrics is on)."),
                 labels, p.run_time_ns / 1e9)
        for verdict, n in (("pass", p.passed), ("drop", p.dropped),
                           ("redirect", p.redirected)):
            fams.add(Spec("skmsg_proxy_program_verdicts", "counter",
                          "The program's verdicts.", "verdict", verdict), labels, n)
        fams.add(Spec("skmsg_proxy_program_errors", "counter",
                      "Runs that raised, returned no verdict or overran their budget "
                      "(each a DROP)."), labels, p.errors)
        fams.add(Spec("skmsg_proxy_program_timeouts", "counter",
                      "Runs interrupted for overrunning their budget."), labels, p.timeouts)
        if p.budget is not None:
            fams.add(Spec("skmsg_proxy_program_budget_seconds", "gauge",
                          "The longest one run may last."), labels, p.budget)
    for lst in snap.listeners:
        labels = {"listen": lst.address}
        if lst.queue is not None:
            fams.add(Spec("skmsg_proxy_listen_queue", "gauge",
                          "TCP: connections waiting to be accepted; UDP: bytes waiting in "
                          "the listener's receive queue."), labels, lst.queue)
        if lst.backlog is not None:
            fams.add(Spec("skmsg_proxy_listen_backlog", "gauge",
                          "TCP: the accept queue's limit."), labels, lst.backlog)
        if lst.drops is not None:
            fams.add(Spec("skmsg_proxy_listen_drops", "counter",
                          "UDP: datagrams dropped because the listener's receive queue "
                          "was full."), labels, lst.drops)
    if snap.udp:
        fams.add(Spec("skmsg_proxy_udp_socket_sets", "gauge",
                      "Session socket sets (a client slot and a socket per backend), in use "
                      "or kept."), {}, snap.udp["units"])
        fams.add(Spec("skmsg_proxy_udp_socket_sets_kept", "gauge",
                      "Session socket sets kept for the next client."), {}, snap.udp["kept"])
        fams.add(Spec("skmsg_proxy_udp_reply_send_drops", "counter",
                      "Replies dropped because the listener's send buffer could not take "
                      "them at once."), {}, snap.udp["reply_send_drops"])
    return fams.by_name.values()


class ProxyCollector(Collector):
    """A ``prometheus_client`` collector of one proxy: each scrape takes a
    :func:`snapshot` on the proxy's trio thread (``trio_token``) and renders it.
    A scrape after the proxy's trio run ended yields nothing."""

    def __init__(self, proxy: ProxyPrograms, trio_token: trio.lowlevel.TrioToken) -> None:
        self.proxy = proxy
        self.token = trio_token

    def collect(self) -> Iterable[Metric]:
        try:
            snap = trio.from_thread.run_sync(snapshot, self.proxy, trio_token=self.token)
        except trio.RunFinishedError:
            return []
        return render(snap)


@attrs.define(eq=False)
class MetricsServer:
    """The ``/metrics`` HTTP server of a proxy (a daemon thread). ``address``:
    where it listens."""

    httpd: Any
    thread: threading.Thread
    address: Address
    #: whether program run-time accounting was on before this server turned it on
    stats_were_enabled: bool = True

    def close(self) -> None:
        """Stop serving and close the socket (blocks up to half a second); turn
        program run-time accounting back off if this server turned it on."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
        if not self.stats_were_enabled:
            sk.enable_stats(False)


def start_metrics(proxy: ProxyPrograms, address: Address,
                  trio_token: trio.lowlevel.TrioToken) -> MetricsServer:
    """Serve ``proxy``'s metrics (and this process's: CPU, memory, open fds) at
    ``http://address/metrics``. Turns on programs' run-time accounting
    (:func:`skmsg_core.enable_stats`) until :meth:`MetricsServer.close`.

    Raises:
        OSError: it cannot listen on ``address`` (``EADDRINUSE`` ...).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(proxy, trio_token))
    registry.register(ProcessCollector(registry=None))
    try:
        httpd, thread = start_http_server(address.port, address.host, registry=registry)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {address.host!r}") from exc
    before = sk.stats_enabled()
    sk.enable_stats()
    host, port = httpd.server_address[:2]
    return MetricsServer(httpd, thread, _address((str(host), int(port))), before)
