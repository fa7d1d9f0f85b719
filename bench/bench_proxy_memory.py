"""``skmsg proxy``'s memory under client churn: does it stay flat?

``proxy.churn.rss``
-------------------
The real command in a subprocess (``skmsg proxy``, one process, its garbage
collector tuned as it tunes it) in front of a trio backend. Each round holds
1,000 clients open (each answered once), makes three bursts of 1,000
short-lived clients meanwhile (so the held ones grow old, as long-lived
connections do among busy short ones), then closes the held ones and waits
until the proxy is idle; its resident set size (``VmRSS``) is read then.
8 rounds (quick: 2 of 50 clients).

The figure is the RSS after the last round as a cost ratio of the RSS after
the first (value/baseline, lower is better): 1.0 is flat. Target <= 1.2: a
closed client's objects are freed when it closes, not left to grow the heap
until a full collection. Every client of every round must be answered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench._harness import Figure
from bench._load import burst, hold
from bench._tcp_helpers import raise_nofile
from bench.bench_proxy import HOST, _process, _settle

#: The RSS after the last round, at most this many times the first round's.
CHURN_RSS_TARGET = 1.2


def _rss_mib(pid: int) -> float:
    """The resident set size of process ``pid`` in MiB (Linux ``/proc``).

    Raises:
        OSError: the process is gone.
        RuntimeError: its status has no ``VmRSS`` line.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def bench_churn(quick: bool) -> list[Figure]:
    """The churn rounds (see the module)."""
    n, rounds = (50, 2) if quick else (1000, 8)
    raise_nofile(6 * n + 256)
    with _process([sys.executable, "-m", "bench._load"], r"(\d+)") as (backend_proc, port), \
            _process([sys.executable, "-m", "skmsg", "proxy", "--listen", f"{HOST}:0",
                      "--backend", f"{HOST}:{port[1]}", "--max-clients", "8192",
                      "--stats-interval", "0"],
                     r"listening on 127\.0\.0\.1:(\d+)") as (proxy_proc, listening):
        addr = (HOST, int(listening[1]))
        pids = [backend_proc.pid, proxy_proc.pid]
        burst(addr, min(n, 50))  # warm-up: imports done, every path answered
        rss: list[float] = []
        for _ in range(rounds):
            held = hold(addr, n)
            try:
                for _ in range(3):
                    burst(addr, n)
            finally:
                for sock in held:
                    sock.close()
            _settle(pids)
            rss.append(_rss_mib(proxy_proc.pid))
    return [
        Figure.cost_ratio(
            "proxy.churn.rss", value=rss[-1], unit="MiB",
            baseline=f"after round 1 of {rounds}", baseline_value=rss[0],
            target=CHURN_RSS_TARGET,
        ),
    ]


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "proxy.churn": bench_churn,
}
