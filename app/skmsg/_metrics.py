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
per key, labelled ``reason``. See ``docs/proxy.md`` for the list.
"""

from __future__ import annotations

import bisect

import attrs

__all__ = ["BUCKETS", "LatencyHistogram"]

#: Upper bounds (seconds) of the reply latency buckets; +Inf is implied.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)


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

