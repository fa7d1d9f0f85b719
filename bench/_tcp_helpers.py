"""Loopback plumbing shared by ``bench_tcp``: sockets, transfers, fd limits, forked probes.

Nothing here is timed by itself; :mod:`bench.bench_tcp` says what its figures
time. Every socket is TCP on ``127.0.0.1``.
"""

from __future__ import annotations

import gc
import os
import pickle
import resource
import socket as stdsocket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import attrs
import trio

__all__ = [
    "HOST",
    "Round",
    "Throughput",
    "in_child",
    "interleaved",
    "open_listener",
    "raise_nofile",
    "rss_bytes",
    "send_chunks",
    "sink",
    "socket_pair",
    "timed_transfer",
]

HOST = "127.0.0.1"
T = TypeVar("T")


# -- sockets ------------------------------------------------------------------------------------


async def open_listener(backlog: int = 4096) -> trio.socket.SocketType:
    """A trio TCP socket listening on ``127.0.0.1`` at a free port."""
    sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
    await sock.bind((HOST, 0))
    sock.listen(backlog)
    return sock


async def socket_pair(
    listener: trio.socket.SocketType,
) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A connected loopback pair of trio sockets: (connecting side, accepted side)."""
    client = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    return client, server


# -- transfers ----------------------------------------------------------------------------------


async def send_chunks(stream: trio.abc.SendStream, data: memoryview, chunk: int) -> None:
    """``send_all`` every ``chunk`` bytes of ``data`` in order (the last one may be short)."""
    for off in range(0, data.nbytes, chunk):
        await stream.send_all(data[off : off + chunk])


async def sink(stream: trio.abc.ReceiveStream, total: int, keep: bytearray | None = None) -> int:
    """Read until ``total`` bytes came (``receive_some(65536)``); append them to
    ``keep`` if given. Returns the byte count.

    Raises:
        RuntimeError: EOF before ``total`` bytes.
    """
    got = 0
    while got < total:
        data = await stream.receive_some(65536)
        if not data:
            raise RuntimeError(f"sink: EOF after {got} of {total} bytes")
        got += len(data)
        if keep is not None:
            keep += data
    return got


@attrs.frozen
class Round:
    """One timed round: wall-clock seconds and this process's CPU seconds (user +
    system, ``time.process_time``) over the same span."""

    wall: float
    cpu: float


async def timed_transfer(
    client: trio.abc.SendStream,
    dst: trio.abc.ReceiveStream,
    payload: memoryview,
    *,
    repeat: int = 1,
    chunk: int = 65536,
    deadline: float = float("inf"),
) -> Round:
    """Time from the first ``send_all`` on ``client`` until ``dst`` has received
    ``payload`` sent ``repeat`` times in ``chunk``-byte writes.

    The sender and the receiver are two tasks of the caller's trio run; the
    garbage collector is off while the clock runs (after a collection), as
    :func:`bench._harness.time_side_by_side` does.

    Raises:
        trio.TooSlowError: the transfer took over ``deadline`` seconds (bytes
            were lost, say).
    """
    total = payload.nbytes * repeat

    async def send() -> None:
        for _ in range(repeat):
            await send_chunks(client, payload, chunk)

    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with trio.fail_after(deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await sink(dst, total)
        return Round(time.perf_counter() - t0, time.process_time() - c0)
    finally:
        if was_enabled:
            gc.enable()


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


@attrs.frozen
class Throughput:
    """Rates per second of several timed rounds of one side: the best and the
    median round, by wall clock and by CPU time."""

    best: float
    median: float
    cpu_best: float
    cpu_median: float
    rounds: int

    @classmethod
    def of(cls, amount: float, rounds: list[Round]) -> Throughput:
        """``amount`` per round over each round's seconds."""
        wall = [amount / r.wall for r in rounds]
        cpu = [amount / r.cpu for r in rounds]
        return cls(max(wall), _median(wall), max(cpu), _median(cpu), len(rounds))


async def interleaved(
    sides: dict[str, Callable[[], Awaitable[Round]]], rounds: int
) -> dict[str, list[Round]]:
    """Run each side's timed round ``rounds`` times, in an order rotated by one every
    round (so no side always goes first). Returns each side's rounds."""
    names = list(sides)
    out: dict[str, list[Round]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(await sides[name]())
    return out


# -- the process: fds, memory, forked probes --------------------------------------------------


def raise_nofile(needed: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` towards ``needed`` fds, within the
    hard limit. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def rss_bytes() -> int:
    """This process's resident set size now (``/proc/self/statm``), or its peak
    (``ru_maxrss``) where there is no procfs."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident = int(f.read().split()[1])
        return resident * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def in_child(fn: Callable[[], T]) -> T:
    """``fn()`` run in a forked child of this process; its result comes back pickled.

    The child starts from this process's heap as it is now, so what ``fn``
    allocates shows as that child's growth alone, whatever ran before.

    Raises:
        RuntimeError: the child failed (its traceback is in the message).
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's stack
        code = 0
        try:
            os.close(rfd)
            try:
                payload: tuple[Literal["ok", "err"], Any] = ("ok", fn())
            except BaseException:
                payload = ("err", traceback.format_exc())
                code = 1
            with os.fdopen(wfd, "wb") as out:
                pickle.dump(payload, out)
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as inp:
        raw = inp.read()
    os.waitpid(pid, 0)
    if not raw:
        raise RuntimeError("bench child died without a result")
    status, value = pickle.loads(raw)
    if status != "ok":
        raise RuntimeError(f"bench child failed:\n{value}")
    result: T = value
    return result
