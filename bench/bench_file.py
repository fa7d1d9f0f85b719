"""``SkStream.send_file`` (the kernel's sendpage) against ``send_all`` of the same bytes.

``file.send_file``: a 256 MiB file sent over loopback by ``send_file`` on a
stream whose SK_MSG program pulls each message's first 8 bytes (a header
check: what it does not pull goes out with ``sendfile(2)``), against trio's
``SocketStream.send_all`` of the same bytes from memory (64 KiB writes, the
file already read: the baseline pays no read). Both sides drain into the same
sink in this process; rounds are interleaved. Higher is better.

``file.send_file_no_program``: the same with no program (pure ``sendfile``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

import skmsg_core as sk
from bench._harness import Figure
from bench._tcp_helpers import (
    Round,
    Throughput,
    interleaved,
    open_listener,
    send_chunks,
    sink,
    socket_pair,
)
from skmsg_core.runtime import open_runtime
from skmsg_tcp import SkStream

__all__ = ["BENCHMARKS"]

MIB = 1 << 20
#: send_file should at least keep up with send_all of bytes already in memory.
TARGET = 1.0


def _header_check(msg: sk.SkMsg) -> int:
    """A program that reads each message's first 8 bytes, as a header check would."""
    if sk.msg_pull_data(msg, 0, 8, 0) != 0:
        return sk.SK_DROP
    return sk.SK_PASS


async def _timed(
    send: Callable[[], Awaitable[object]], dst: trio.abc.ReceiveStream, n: int
) -> Round:
    t0, c0 = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await sink(dst, n)
    return Round(time.perf_counter() - t0, time.process_time() - c0)


async def _run(size: int, rounds: int) -> dict[str, Throughput]:
    with tempfile.TemporaryFile() as f:
        block = os.urandom(MIB)
        for _ in range(size // MIB):
            f.write(block)
        f.flush()
        data = memoryview(block * (size // MIB))
        async with open_runtime():
            listener = await open_listener()
            a_sock, b_sock = await socket_pair(listener)
            c_sock, d_sock = await socket_pair(listener)
            e_sock, f_sock = await socket_pair(listener)
            listener.close()
            stream, stream_peer = SkStream(a_sock), trio.SocketStream(b_sock)
            bare, bare_peer = SkStream(c_sock), trio.SocketStream(d_sock)
            base, base_peer = trio.SocketStream(e_sock), trio.SocketStream(f_sock)
            smap = sk.SockMap(1)
            prog = smap.attach(_header_check, sk.SK_MSG_VERDICT)
            smap.update(0, stream)
            fd = f.fileno()
            seconds = await interleaved(
                {
                    "send_file": lambda: _timed(lambda: stream.send_file(fd), stream_peer, size),
                    "no_program": lambda: _timed(lambda: bare.send_file(fd), bare_peer, size),
                    "send_all": lambda: _timed(
                        lambda: send_chunks(base, data, 65536), base_peer, size
                    ),
                },
                rounds,
            )
            runs = prog.statistics()
            expect = rounds * -(-size // sk.FILE_MSG_BYTES)
            if runs.run_cnt != expect or runs.passed != expect:
                raise RuntimeError(f"the program ran {runs.run_cnt} times, not {expect}")
            for s in (stream, stream_peer, bare, bare_peer, base, base_peer):
                await s.aclose()
            smap.close()
    return {k: Throughput.of(size / MIB, v) for k, v in seconds.items()}


def bench_send_file(quick: bool) -> list[Figure]:
    """256 MiB (quick: 8 MiB) by send_file, with and without a program, vs send_all."""
    size, rounds = (8 * MIB, 2) if quick else (256 * MIB, 5)
    t = trio.run(_run, size, rounds)
    us = {k: 1e6 / v.best for k, v in t.items()}
    cpu = {k: 1e6 / v.cpu_best for k, v in t.items()}
    return [
        Figure.speedup(
            "file.send_file",
            value=us["send_file"],
            unit="us/MiB",
            baseline="trio send_all",
            baseline_value=us["send_all"],
            target=TARGET,
        ),
        Figure.speedup(
            "file.send_file.cpu",
            value=cpu["send_file"],
            unit="us/MiB",
            baseline="send_all (CPU)",
            baseline_value=cpu["send_all"],
        ),
        Figure.speedup(
            "file.send_file_no_program",
            value=us["no_program"],
            unit="us/MiB",
            baseline="trio send_all",
            baseline_value=us["send_all"],
        ),
    ]


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {"file.send_file": bench_send_file}
