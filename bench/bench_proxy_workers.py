"""``skmsg proxy --workers 2`` against ``--workers 1`` under 1,000 steady clients.

``proxy.workers``: messages per second, two workers as a multiple of one
------------------------------------------------------------------------
Both proxies are the real command, started side by side in subprocesses
(``skmsg proxy --workers 2`` and ``--workers 1``, the single-process proxy),
each with its embedded echo backends (so a worker's backends are its own and
scale with it). The load generator is this process: 1,000 clients on each
proxy, connected before timing, each keeping a window of 4 length-prefixed
16-byte messages in flight (send 4, wait for the 4 replies, send 4 again: a
closed loop), all on one ``epoll`` loop that counts reply bytes rather than
parse them, so its cost per message stays small next to the proxy's. It runs
on the same two cores as the proxies: the figure is what a second worker buys
on a machine whose cores the load shares.

Rounds interleave (1 worker, 2 workers, then 2, 1, ...), 5 of each after a
warm-up of each (quick: 1, short). **Timed**: from the first window sent until
the last reply of a round that sends for 2 s (quick 0.3 s). The figure prints
microseconds per message of each side (medians) and the paired ratio
``baseline/value``: the two-worker message rate as a multiple of the one-worker
rate, target >= 1.4.

``proxy.workers.cpu`` (report only): the proxies' CPU seconds per message
(every worker and the supervisor, from ``/proc/PID/stat``; the load generator
not counted), two workers as a cost ratio of one.

Every reply must arrive, byte for byte in size; at the end each proxy is
stopped with SIGTERM and its final table must count exactly the messages sent
to it (``# proxy.workers: counted ...``), or the run is an error.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import attrs

from bench._harness import Figure

TARGET = 1.4
CLIENTS = 1000
WINDOW = 4
PAYLOAD = b"0123456789abcdef"
MESSAGE = struct.pack("!I", len(PAYLOAD)) + PAYLOAD
REPLY = 4 + len(b"[backend 0] ") + len(PAYLOAD)  # the echo backends' tagged reply


@attrs.define
class Side:
    """One running proxy: its process, worker pids, port, the clients' sockets,
    and the messages sent through it."""

    name: str
    proc: subprocess.Popen[str]
    pids: list[int]
    port: int
    socks: list[socket.socket] = attrs.field(factory=list)
    sent: int = 0


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def _proxy(workers: int) -> Iterator[Side]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "skmsg", "proxy", "--listen", "127.0.0.1:0", "--workers",
         str(workers), "--stats-interval", "0", "--max-clients", str(2 * CLIENTS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        port, pids = 0, [proc.pid]
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"skmsg proxy --workers {workers} did not start: "
                                   f"{proc.communicate(timeout=60)[1][-2000:]}")
            if m := re.search(r"listening on \S+:(\d+)$", line):
                port = int(m.group(1))
            if m := re.search(r"workers \(pids ([\d, ]+)\)", line):
                pids += [int(p) for p in m.group(1).split(", ")]
            if "Ctrl-C stops" in line and (workers == 1 or len(pids) > 1):
                break
            if workers > 1 and len(pids) > 1:
                break
        yield Side(f"{workers} worker{'s' if workers > 1 else ''}", proc, pids, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def _connect(side: Side) -> None:
    for _ in range(CLIENTS):
        s = socket.create_connection(("127.0.0.1", side.port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        side.socks.append(s)


def _drive(side: Side, seconds: float) -> tuple[int, float]:
    """Run the closed loop for ``seconds``; the messages answered and the time
    until the last reply."""
    batch = MESSAGE * WINDOW
    want = REPLY * WINDOW
    sel = selectors.EpollSelector()
    left: dict[int, int] = {}
    buf = bytearray(1 << 16)
    t0 = time.perf_counter()
    end = t0 + seconds
    for s in side.socks:
        s.send(batch)
        left[s.fileno()] = want
        sel.register(s, selectors.EVENT_READ, s)
    active = len(side.socks)
    done = 0
    while active:
        events = sel.select(timeout=30)
        if not events:
            raise RuntimeError(f"{side.name}: no reply for 30 s")
        now = time.perf_counter()
        for key, _ in events:
            s = key.data
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError(f"{side.name}: the proxy closed a client")
            fd = key.fd
            rest = left[fd] - n
            if rest < 0:
                raise RuntimeError(f"{side.name}: {-rest} bytes more than the replies")
            if rest == 0:
                done += WINDOW
                if now < end:
                    s.send(batch)
                    rest = want
                else:
                    sel.unregister(s)
                    active -= 1
            left[fd] = rest
    took = time.perf_counter() - t0
    sel.close()
    side.sent += done
    return done, took


def _counted(side: Side) -> int:
    """Stop ``side`` with SIGTERM; the messages its final table counted."""
    for s in side.socks:
        s.close()
    side.proc.send_signal(signal.SIGTERM)
    _, err = side.proc.communicate(timeout=120)
    m = re.search(r"^all clients +([\d,]+)", err, re.MULTILINE)
    if side.proc.returncode != 0 or m is None:
        raise RuntimeError(f"{side.name}: exit {side.proc.returncode}: {err[-2000:]}")
    return int(m.group(1).replace(",", ""))


def bench_workers(quick: bool) -> list[Figure]:
    seconds, rounds = (0.3, 1) if quick else (2.0, 5)
    per: dict[str, list[float]] = {"1": [], "2": []}
    cpu: dict[str, list[float]] = {"1": [], "2": []}
    with ExitStack() as stack:
        sides = {"1": stack.enter_context(_proxy(1)), "2": stack.enter_context(_proxy(2))}
        for side in sides.values():
            _connect(side)
        for side in sides.values():  # warm-up, untimed
            _drive(side, seconds / 2)
        for r in range(rounds):
            for key in (("1", "2") if r % 2 == 0 else ("2", "1")):
                side = sides[key]
                c0 = _cpu(side.pids)
                n, took = _drive(side, seconds)
                used = _cpu(side.pids) - c0
                per[key].append(took / n * 1e6)
                cpu[key].append(used / n * 1e6)
        counted = {k: _counted(s) for k, s in sides.items()}
        print(f"# proxy.workers: counted {counted['1']:,} and {counted['2']:,} messages, "
              f"sent {sides['1'].sent:,} and {sides['2'].sent:,} (1 and 2 workers); "
              f"CPU us/msg {statistics.median(cpu['1']):.1f} and "
              f"{statistics.median(cpu['2']):.1f}", flush=True)
        for k, s in sides.items():
            if counted[k] != s.sent:
                raise RuntimeError(f"{s.name}: counted {counted[k]} messages, sent {s.sent}")
    return [
        Figure.speedup(
            "proxy.workers", value=statistics.median(per["2"]), unit="us/msg",
            baseline="--workers 1", baseline_value=statistics.median(per["1"]), target=TARGET,
            paired=statistics.median(a / b for a, b in zip(per["1"], per["2"], strict=True)),
        ),
        Figure.cost_ratio(
            "proxy.workers.cpu", value=statistics.median(cpu["2"]), unit="us/msg",
            baseline="--workers 1 (CPU)", baseline_value=statistics.median(cpu["1"]),
        ),
    ]


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "proxy.workers": bench_workers,
}
