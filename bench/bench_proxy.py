"""``skmsg proxy`` against no proxy at all: many clients, each its own connection.

Topology: a backend process (``bench._load``, a ``selectors`` echo server that
accepts every waiting connection at each wake-up), the real ``skmsg proxy``
command in a process of its own in front of it (``--backend`` it, the
default round-robin policy, length-prefixed framing), and the clients in
this process (``selectors``, not trio, so they cost little). The baseline is
the same clients straight to the same backend: the *direct* path. Every
message is 64 bytes of payload; one message in flight per client.

``proxy.burst.p99`` / ``proxy.burst.max``
    1,000 clients (quick: 50) connect at once; each sends one message and
    waits for its reply. Timed from the first connect to each reply: the
    99th percentile and the slowest, in milliseconds. Rounds alternate
    direct and proxy (5 each; quick: 1), each once both processes are idle
    again (the last round's connections torn down). The values printed are
    the median rounds; the ratio is *paired*: the median of each round's own
    proxy/direct ratio (a round of each side run back to back sees the same
    moment of a shared machine). Target for ``max``: within 5x the direct
    path's max. ``proxy.burst.max.workers2``: the same through ``skmsg proxy
    --workers 2`` (report only; the load generator shares the two cores).
    ``proxy.burst.max.floor``: the same through a bare trio relay
    (``bench._relay``: accept, connect, copy both ways; report only): what
    a proxy on trio that does nothing else pays per client, so what ``max``
    shows above it is skmsg's own (framing, programs, maps, sessions).

``proxy.steady``
    1,000 clients (quick: 50) connected, each sending its next message as
    soon as its reply came, for 3 s (quick: 0.3 s) after all had a first
    reply: replies per second, as a fraction of the direct path's (higher is
    better; report only: three processes share this machine's cores, so the
    proxy's share of CPU is what it measures as much as its speed).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench._harness import Figure
from bench._load import burst, steady
from bench._tcp_helpers import raise_nofile

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
#: The target of ``proxy.burst.max``: the proxy's slowest first reply within
#: this many times the direct path's slowest.
BURST_MAX_TARGET = 5.0


@contextmanager
def _process(args: list[str], ready: str) -> Iterator[tuple[subprocess.Popen[str], re.Match[str]]]:
    """Run ``args`` until the block ends; ``ready`` (a pattern) must show on its
    stdout first: its match is given."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        seen = ""
        while (m := re.search(ready, seen)) is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{args[:4]} exited before {ready!r}: {proc.stderr.read()}"
                                   if proc.stderr else "exited")
            seen += line
        yield proc, m
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _cpu_seconds(pid: int) -> float | None:
    """The CPU time process ``pid`` used so far (Linux ``/proc``), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settle(pids: list[int]) -> None:
    """Wait until the processes ``pids`` are idle: their CPU time stays the same
    over 50 ms (a round's connections are all torn down), at most 10 s; a
    fixed 1 s where that cannot be read."""
    before = [_cpu_seconds(p) for p in pids]
    if None in before:
        time.sleep(1.0)
        return
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = [_cpu_seconds(p) for p in pids]
        if now == before:
            return
        before = now


@contextmanager
def _servers() -> Iterator[
    tuple[tuple[str, int], tuple[str, int], tuple[str, int], tuple[str, int], list[int]]
]:
    """The backend, and in front of it the proxy in one process, the proxy
    with ``--workers 2`` and the bare trio relay (``bench._relay``): (direct,
    proxy, workers, floor) addresses and the processes' ids."""
    with _process([sys.executable, "-m", "bench._load"], r"(\d+)") as (backend_proc, port):
        backend = (HOST, int(port[1]))
        with _process(
            [sys.executable, "-m", "bench._relay", str(backend[1])], r"(\d+)"
        ) as (relay_proc, relay_port), _process(
            [sys.executable, "-m", "skmsg", "proxy", "--listen", f"{HOST}:0",
             "--backend", f"{HOST}:{backend[1]}", "--max-clients", "8192",
             "--stats-interval", "0"],
            r"listening on 127\.0\.0\.1:(\d+)",
        ) as (proxy_proc, listening), _process(
            [sys.executable, "-m", "skmsg", "proxy", "--listen", f"{HOST}:0",
             "--backend", f"{HOST}:{backend[1]}", "--max-clients", "8192",
             "--stats-interval", "0", "--workers", "2"],
            r"listening on 127\.0\.0\.1:(\d+)",
        ) as (workers_proc, workers_listening):
            pids = [backend_proc.pid, proxy_proc.pid, workers_proc.pid, relay_proc.pid,
                    *_children(workers_proc.pid)]
            yield (backend, (HOST, int(listening[1])), (HOST, int(workers_listening[1])),
                   (HOST, int(relay_port[1])), pids)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the workers of a supervisor)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _p99(times: list[float]) -> float:
    return times[min(len(times) - 1, int(len(times) * 0.99))]


def _rounds(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(sides[name]())
    return out


def bench_proxy(quick: bool) -> list[Figure]:
    """Burst and steady figures, proxy and direct side by side (see the module)."""
    n, rounds, seconds = (50, 1, 0.3) if quick else (1000, 5, 3.0)
    raise_nofile(4 * n + 256)
    with _servers() as (direct, proxy, workers, floor, pids):
        for addr in (direct, proxy, workers, floor):  # warm-up: every path answers, imports done
            burst(addr, min(n, 50))
        paths = ("direct", "proxy", "workers", "floor")
        p99: dict[str, list[float]] = {name: [] for name in paths}
        worst: dict[str, list[float]] = {name: [] for name in paths}

        def burst_of(name: str, addr: tuple[str, int]) -> Callable[[], float]:
            def run() -> float:
                _settle(pids)  # the last round's clients are gone: each starts alike
                times = burst(addr, n)
                p99[name].append(_p99(times) * 1e3)
                worst[name].append(times[-1] * 1e3)
                return times[-1]
            return run

        _rounds({"direct": burst_of("direct", direct), "proxy": burst_of("proxy", proxy),
                 "workers": burst_of("workers", workers), "floor": burst_of("floor", floor)},
                rounds)
        def steady_of(addr: tuple[str, int]) -> Callable[[], float]:
            def run() -> float:
                _settle(pids)
                return steady(addr, n, seconds)
            return run

        rates = _rounds({"direct": steady_of(direct), "proxy": steady_of(proxy)}, 1)
    med = statistics.median

    def paired(side: dict[str, list[float]], name: str = "proxy") -> float:
        return med(p / d for p, d in zip(side[name], side["direct"], strict=True))

    return [
        Figure.cost_ratio(
            "proxy.burst.p99", value=med(p99["proxy"]), unit="ms",
            baseline=f"direct, {n} at once", baseline_value=med(p99["direct"]),
            paired=paired(p99),
        ),
        Figure.cost_ratio(
            "proxy.burst.max", value=med(worst["proxy"]), unit="ms",
            baseline=f"direct, {n} at once", baseline_value=med(worst["direct"]),
            target=BURST_MAX_TARGET, paired=paired(worst),
        ),
        Figure.cost_ratio(
            "proxy.burst.max.workers2", value=med(worst["workers"]), unit="ms",
            baseline=f"direct, {n} at once", baseline_value=med(worst["direct"]),
            paired=paired(worst, "workers"),
        ),
        Figure.cost_ratio(
            "proxy.burst.max.floor", value=med(worst["floor"]), unit="ms",
            baseline=f"direct, {n} at once", baseline_value=med(worst["direct"]),
            paired=paired(worst, "floor"),
        ),
        Figure.rate(
            "proxy.steady", value=rates["proxy"][0], unit="msg/s",
            baseline=f"direct, {n} clients", baseline_value=rates["direct"][0],
        ),
    ]


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "proxy.clients": bench_proxy,
}
