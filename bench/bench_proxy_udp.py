"""``skmsg proxy --udp`` under DNS load, against the same load sent straight to the servers.

``proxy_udp.dns``: queries per second through the proxy, as a fraction of direct
------------------------------------------------------------------------------
Peers (``bench/_dns_peers.py``): two dnslib DNS servers on ``127.0.0.1`` (as
shipped: a thread per request) and dnspython clients, 16 threads calling
``dns.query.udp``, each query from a new socket and so a fresh source port,
as resolvers send them; names alternate between ``corp.example`` and public
ones. The proxy is the real command (``skmsg proxy --udp`` in a subprocess)
with ``examples/dns_route.py`` routing each query by its name.

- **direct** (the baseline): each query goes straight to the server the
  policy would pick;
- **proxy**: each query goes to the proxy.

Every process (this one with its client and server threads, and the proxy)
is pinned to **one CPU** for ``proxy_udp.dns``, so the figure is what the
proxy costs next to what the DNS peers cost, whatever else the machine runs,
not whether a spare core hides it. ``proxy_udp.dns.2cpu`` (report only) is
the same unpinned.

One round resolves 1,000 names (quick: 200) each way; rounds interleave
(direct, proxy, then proxy, direct, ...), 4 of each (quick: 1), after an
untimed warm-up of each path (which also fills the proxy's kept sockets, its
steady state). **Timed**: from the first query sent until the last answer.
The figure prints microseconds per query of each side (medians) and the paired
ratio ``baseline/value``: the proxy's query rate as a fraction of the direct
rate (higher is better), target >= 0.7.

Every query must be answered correctly: the count of those that were not is
printed (``# proxy_udp.dns: unanswered ...``), and a run with any is an error.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench._dns_peers import ask, dns_servers, names, proxy_command
from bench._harness import Figure

TARGET = 0.7
THREADS = 16
TIMEOUT = 2.0


@contextmanager
def _pinned(pin: bool) -> Iterator[None]:
    """This thread (and every thread and process it starts) on one CPU."""
    before = os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _measure(pin: bool, n: int, rounds: int) -> tuple[list[float], list[float], int, int]:
    """Per-query microseconds of each round, direct and through the proxy, and the
    unanswered counts (direct, proxy)."""
    queries = names(n)
    with _pinned(pin), dns_servers() as (internal, public), \
            proxy_command(internal, public) as (proc, port):
        paths = {
            "direct": {"internal": ("127.0.0.1", internal), "public": ("127.0.0.1", public)},
            "proxy": {"internal": ("127.0.0.1", port), "public": ("127.0.0.1", port)},
        }
        lost = {"direct": 0, "proxy": 0}
        took: dict[str, list[float]] = {"direct": [], "proxy": []}
        for path, targets in paths.items():  # warm-up, untimed
            lost[path] += len(ask(targets, queries, threads=THREADS, timeout=TIMEOUT).unanswered)
        for r in range(rounds):
            for path in (("direct", "proxy") if r % 2 == 0 else ("proxy", "direct")):
                t0 = time.perf_counter()
                got = ask(paths[path], queries, threads=THREADS, timeout=TIMEOUT)
                took[path].append((time.perf_counter() - t0) / n * 1e6)
                lost[path] += len(got.unanswered)
    if proc.returncode not in (0, -15):
        raise RuntimeError(f"skmsg proxy exited {proc.returncode}: {proc.stderr_text[-2000:]}")
    return took["direct"], took["proxy"], lost["direct"], lost["proxy"]


def bench_dns(quick: bool) -> list[Figure]:
    n, rounds = (200, 1) if quick else (1000, 4)
    figures = []
    for pin, name, target in ((True, "proxy_udp.dns", TARGET),
                              (False, "proxy_udp.dns.2cpu", None)):
        direct, proxy, lost_direct, lost_proxy = _measure(pin, n, rounds)
        asked = n * (rounds + 1)
        print(f"# {name}: unanswered {lost_proxy} of {asked:,} through the proxy, "
              f"{lost_direct} of {asked:,} direct", flush=True)
        if lost_proxy or lost_direct:
            raise RuntimeError(f"{name}: {lost_proxy} queries unanswered through the proxy, "
                               f"{lost_direct} direct")
        figures.append(Figure.speedup(
            name, value=statistics.median(proxy), unit="us/q", baseline="direct to servers",
            baseline_value=statistics.median(direct), target=target,
            paired=statistics.median(d / p for d, p in zip(direct, proxy, strict=True)),
        ))
    return figures


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "proxy_udp.dns": bench_dns,
}
