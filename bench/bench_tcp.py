"""skmsg_tcp against bare trio: a redirecting proxy's throughput, and idle streams' memory.

Three benchmarks, each side by side with its baseline in one ``bench/run.py``
run. Everything is TCP on ``127.0.0.1``.

``tcp.bulk_redirect``: bulk bytes through an skmsg proxy
--------------------------------------------------------
Topology, built once::

    client --> proxy-side == receive pump: verdict, sk_redirect_map ==> backend-side --> sink

The client, proxy-side, backend-side and sink are four :class:`skmsg_tcp.SkStream`
over two loopback connections (client-proxy-side, backend-side-sink). The
proxy-side and backend-side streams sit at keys 0 and 1 of one ``SockMap``
with an ``SK_SKB_STREAM_VERDICT`` program (no parser) that returns
``sk_redirect_map(skb, map, 1)``: the runtime's receive pump of the
proxy-side stream reads up to 64 KiB at a time, runs the verdict once per
read and writes the bytes out of the backend-side stream (its
``egress_write``). The backend-side stream's own pump runs the same program
but never receives a byte. The client and the sink stay outside any map.

Baseline: the same two connections as plain ``trio.SocketStream`` and a bare
trio relay task between the middle two: ``receive_some(65536)`` ->
``send_all``.

One round sends 256 MiB (quick: 4 MiB) as ``send_all`` of one 64 KiB buffer
again and again; **timed** from the client's first ``send_all`` until the
sink has ``receive_some``'d every byte.

``tcp.msgs_redirect``: 64-byte length-prefixed messages, one verdict each
-------------------------------------------------------------------------
The same topology with an ``SK_SKB_STREAM_PARSER`` program as well, the
built-in ``LengthPrefixParser(4)`` (a 4-byte big-endian length prefix, framed
by the stream parser's own loop, as the CLI's ``length-prefixed`` framing is),
so every 68-byte message is framed and the verdict (a Python program calling
``sk_redirect_map``) runs once per message; the psock merges the messages for
one target into one action, written with one ``egress_write``.

Baseline: a bare trio relay that parses the same framing in Python (it walks
every length prefix with ``struct.unpack_from`` and keeps a partial message
for the next read) and forwards each read's whole messages with one
``send_all`` (batched: one write per read, as the psock's merged actions are).

One round sends 200,000 messages (13.6 MB; quick: 20,000) as one prepared
buffer in 64 KiB ``send_all`` slices, so messages straddle writes; **timed**
as above. Messages = bytes the sink received / 68.

How the throughput rounds run
-----------------------------
The client, the relay (the runtime's pump, or the trio relay task) and the
sink are tasks of **one** ``trio.run`` (one process). That measures the pipeline's total CPU cost
on one core, free of the scheduling noise of three processes on two cores.
Both topologies are built in that one run and their rounds interleave
(skmsg, trio, then trio, skmsg, ...): 5 rounds each for the bulk figure, 12
for the messages (quick: 2; many short rounds give both sides the same chance
at this VM's quiet moments: its speed swings by up to 2x over seconds), after
an untimed warm-up transfer per side that also checks every byte arrives
intact and in order. After the timed rounds the counters prove the path: the
proxy-side psock redirected every byte (with the parser: one verdict per
message) and the verdict program dropped nothing. The garbage collector is
off while a round is timed, after a collection.

Figures print a cost, microseconds per MiB or nanoseconds per message, of the
best round per side, and the ratio ``baseline/value``: skmsg's throughput as
a fraction of the baseline's (higher is better). Targets: bulk >= 0.9;
messages >= 0.3 of the baseline, and (``.absolute``) >= 1 against the goal
of 1,000,000 msg/s, that is 1000 ns per message. Each ``.cpu`` figure (report
only) is the same from this process's CPU time (``time.process_time``) over
the round instead of the wall clock: on a shared, loaded machine it is the
steadier of the two.

``tcp.idle_memory``: 10,000 idle SkStreams in a map
---------------------------------------------------
Python memory per idle connected stream: ``SkStream`` in a ``SockMap`` with an
``SK_MSG_VERDICT`` and an ``SK_SKB_STREAM_VERDICT`` program attached (both
return ``SK_PASS``), so every stream has a psock and a running receive pump
(blocked in ``recv``), against plain ``trio.SocketStream``.

The 10,000 streams (quick: 500) are both ends of 5,000 loopback connections,
so one population needs 10,000 fds. One stream per connection would need
20,000 fds plus the listener's and trio's, over this host's hard
``RLIMIT_NOFILE`` of 20,000. The benchmark raises the soft ``RLIMIT_NOFILE``
to what it needs, within the hard limit, with ``resource.setrlimit`` (and
fails, saying so, if the hard limit is too low).

Each population is built in its own **forked child** of the bench process,
with its own ``trio.run``, so both sides start from the same heap (in one
process the second population would reuse the pages the first one freed and
its RSS would show less than it costs). One warm-up connection is made first
(not counted); then the **measured** growth is that of building the
population (connect, accept, wrap, and for skmsg insert into the map and let
every pump start and block), each end point after ``gc.collect()``:

- ``py``: growth of ``tracemalloc``'s traced memory (every Python
  allocation), in a child that traces from its start. It is exact and the
  same from run to run, so one child per side;
- ``rss``: growth of the resident set (``/proc/self/statm``), in a child that
  does not trace, each end point after ``malloc_trim(0)`` so that freed heap
  pages are not reused unseen. Three children per side (quick: one),
  alternating sides; the median.

Figures per stream: skmsg's extra over plain against the 4 KiB budget (ratio
``value/baseline``, target <= 1, i.e. <= 4 KiB), and skmsg's total against
plain's (report only). An extra below zero prints as 0 and a growth below one
byte per stream as one byte (only quick mode's noise could make either).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import statistics
import struct
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Literal

import attrs
import trio
import trio.testing

import skmsg_core as sk
from bench._harness import Figure
from bench._tcp_helpers import (
    Throughput,
    in_child,
    interleaved,
    open_listener,
    raise_nofile,
    rss_bytes,
    send_chunks,
    sink,
    socket_pair,
    timed_transfer,
)
from skmsg_core.runtime import Runtime, open_runtime
from skmsg_tcp import SkStream

__all__ = ["BENCHMARKS"]

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB

#: Map keys of the proxy's two streams.
PROXY, BACKEND = 0, 1

BULK_TARGET = 0.9
MSGS_RATIO_TARGET = 0.3
MSGS_ABSOLUTE = 1_000_000.0
MEMORY_BUDGET = 4 * KIB
#: Seconds one transfer may take before the benchmark fails instead of hanging
#: (bytes lost on the way would otherwise leave the sink waiting forever).
DEADLINE = 120.0

_LEN = struct.Struct(">I")
PAYLOAD = 64
MSG = _LEN.size + PAYLOAD


def _check(ok: bool, what: str) -> None:
    """Fail the benchmark loudly when it would not measure what it names."""
    if not ok:
        raise RuntimeError(f"bench_tcp: {what}")


# -- the two relays ----------------------------------------------------------------------------


def redirect_to_backend(smap: sk.SockMap) -> Callable[[sk.SkBuff], int]:
    """The stream verdict: every message out of the stream at ``BACKEND`` in ``smap``."""

    def to_backend(skb: sk.SkBuff) -> int:
        return sk.sk_redirect_map(skb, smap, BACKEND)

    return to_backend


async def trio_relay(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    """The bulk baseline: forward every read as it came."""
    while data := await src.receive_some(65536):
        await dst.send_all(data)


async def trio_parsing_relay(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    """The messages baseline: frame by the length prefix, forward each read's whole
    messages in one ``send_all``, keep the partial tail for the next read."""
    unpack_from = _LEN.unpack_from
    rest = b""
    while data := await src.receive_some(65536):
        buf = rest + data if rest else data
        n = len(buf)
        off = 0
        while n - off >= 4:
            end = off + 4 + unpack_from(buf, off)[0]
            if end > n:
                break
            off = end
        if off:
            await dst.send_all(memoryview(buf)[:off])
        rest = buf[off:]


@attrs.frozen
class Proxy:
    """One side's topology: where the client writes, where the sink reads, and
    (skmsg only) the proxy-side stream and the map."""

    client: trio.abc.Stream
    sink: trio.abc.Stream
    proxy: SkStream | None = None
    smap: sk.SockMap | None = None


async def skmsg_proxy(listener: trio.socket.SocketType, *, parser: bool) -> Proxy:
    """The skmsg topology (module docstring); call inside ``open_runtime``."""
    c, p = await socket_pair(listener)
    b, s = await socket_pair(listener)
    client, proxy, backend, dst = SkStream(c), SkStream(p), SkStream(b), SkStream(s)
    smap = sk.SockMap(2, name="bench.proxy")
    if parser:
        smap.attach(sk.LengthPrefixParser(4, "big"), sk.SK_SKB_STREAM_PARSER)
    smap.attach(redirect_to_backend(smap), sk.SK_SKB_STREAM_VERDICT)
    smap.update(PROXY, proxy)
    smap.update(BACKEND, backend)
    return Proxy(client, dst, proxy, smap)


async def trio_proxy(
    listener: trio.socket.SocketType,
    nursery: trio.Nursery,
    relay: Callable[[trio.SocketStream, trio.SocketStream], Awaitable[None]],
) -> Proxy:
    """The baseline topology, its ``relay`` task started in ``nursery``."""
    c, p = await socket_pair(listener)
    b, s = await socket_pair(listener)
    nursery.start_soon(relay, trio.SocketStream(p), trio.SocketStream(b))
    return Proxy(trio.SocketStream(c), trio.SocketStream(s))


async def check_intact(side: Proxy, data: memoryview, label: str) -> None:
    """Send ``data`` through ``side`` and check the sink gets exactly it (untimed)."""
    got = bytearray()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunks, side.client, data, CHUNK)
            await sink(side.sink, data.nbytes, got)
    _check(got == data, f"{label}: the sink got different bytes than the client sent")


def check_redirected(rt: Runtime, side: Proxy, nbytes: int, nmsgs: int | None) -> None:
    """The proxy-side psock redirected ``nbytes`` (in ``nmsgs`` verdicts), the verdict
    program dropped nothing and no redirect write failed."""
    assert side.proxy is not None and side.smap is not None
    _check(rt.redirect_errors == 0, f"{rt.redirect_errors} redirect writes failed")
    psock = side.proxy.sk.psock
    _check(psock is not None, "the proxy-side stream left its map")
    assert psock is not None
    st = psock.statistics()
    _check(
        st.rx_redirected_bytes == nbytes and st.rx_passed_bytes == 0 and st.rx_dropped_bytes == 0,
        f"proxy-side psock redirected {st.rx_redirected_bytes} of {nbytes} bytes "
        f"(passed {st.rx_passed_bytes}, dropped {st.rx_dropped_bytes})",
    )
    if nmsgs is not None:
        _check(st.rx_msgs == nmsgs, f"{st.rx_msgs} verdicts for {nmsgs} messages")
    prog = side.smap.progs["stream_verdict"]
    assert prog is not None
    ps = prog.statistics()
    _check(ps.dropped == 0 and ps.errors == 0, f"the verdict program dropped: {ps}")


# -- tcp.bulk_redirect -------------------------------------------------------------------------


async def _bulk(total: int, rounds: int) -> dict[str, Throughput]:
    chunk = memoryview(bytes(range(256)) * (CHUNK // 256))
    check = memoryview(bytearray((i * 7919) % 251 for i in range(MIB)))
    repeat = total // CHUNK
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        listener = await open_listener()
        skm = await skmsg_proxy(listener, parser=False)
        base = await trio_proxy(listener, nursery, trio_relay)
        await check_intact(skm, check, "skmsg")
        await check_intact(base, check, "trio relay")
        seconds = await interleaved(
            {
                "skmsg": lambda: timed_transfer(
                    skm.client, skm.sink, chunk, repeat=repeat, deadline=DEADLINE
                ),
                "trio": lambda: timed_transfer(
                    base.client, base.sink, chunk, repeat=repeat, deadline=DEADLINE
                ),
            },
            rounds,
        )
        check_redirected(rt, skm, check.nbytes + rounds * repeat * CHUNK, None)
        nursery.cancel_scope.cancel()
    return {k: Throughput.of(repeat * CHUNK / MIB, v) for k, v in seconds.items()}


def bench_bulk_redirect(quick: bool) -> list[Figure]:
    """256 MiB (quick: 4 MiB) in 64 KiB writes through the skmsg proxy and a trio relay."""
    total, rounds = (4 * MIB, 2) if quick else (256 * MIB, 5)
    t = trio.run(_bulk, total, rounds)
    us_per_mib = {k: 1e6 / v.best for k, v in t.items()}
    cpu_us_per_mib = {k: 1e6 / v.cpu_best for k, v in t.items()}
    return [
        Figure.speedup(
            "tcp.bulk_redirect",
            value=us_per_mib["skmsg"],
            unit="us/MiB",
            baseline="trio relay",
            baseline_value=us_per_mib["trio"],
            target=BULK_TARGET,
        ),
        Figure.speedup(
            "tcp.bulk_redirect.cpu",
            value=cpu_us_per_mib["skmsg"],
            unit="us/MiB",
            baseline="trio relay (CPU)",
            baseline_value=cpu_us_per_mib["trio"],
        ),
    ]


# -- tcp.msgs_redirect -------------------------------------------------------------------------


def _messages(n: int) -> memoryview:
    """``n`` messages: a 4-byte big-endian length (64) and 64 bytes that differ per message."""
    head = _LEN.pack(PAYLOAD)
    body = bytes(range(PAYLOAD))
    return memoryview(b"".join(head + i.to_bytes(4, "big") + body[4:] for i in range(n)))


async def _msgs(nmsgs: int, rounds: int) -> dict[str, Throughput]:
    data = _messages(nmsgs)
    check = _messages(10_000)
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        listener = await open_listener()
        skm = await skmsg_proxy(listener, parser=True)
        base = await trio_proxy(listener, nursery, trio_parsing_relay)
        await check_intact(skm, check, "skmsg")
        await check_intact(base, check, "trio parsing relay")
        seconds = await interleaved(
            {
                "skmsg": lambda: timed_transfer(skm.client, skm.sink, data, deadline=DEADLINE),
                "trio": lambda: timed_transfer(base.client, base.sink, data, deadline=DEADLINE),
            },
            rounds,
        )
        check_redirected(
            rt,
            skm, (check.nbytes + rounds * data.nbytes), check.nbytes // MSG + rounds * nmsgs
        )
        nursery.cancel_scope.cancel()
    return {k: Throughput.of(data.nbytes / MSG, v) for k, v in seconds.items()}


def bench_msgs_redirect(quick: bool) -> list[Figure]:
    """200,000 68-byte messages per round (quick: 20,000) through parser + verdict +
    redirect, and through a trio relay that parses and forwards batched."""
    nmsgs, rounds = (20_000, 2) if quick else (200_000, 12)
    t = trio.run(_msgs, nmsgs, rounds)
    ns_per_msg = {k: 1e9 / v.best for k, v in t.items()}
    cpu_ns_per_msg = {k: 1e9 / v.cpu_best for k, v in t.items()}
    return [
        Figure.speedup(
            "tcp.msgs_redirect",
            value=ns_per_msg["skmsg"],
            unit="ns/msg",
            baseline="trio parse+batch",
            baseline_value=ns_per_msg["trio"],
            target=MSGS_RATIO_TARGET,
        ),
        Figure.speedup(
            "tcp.msgs_redirect.absolute",
            value=ns_per_msg["skmsg"],
            unit="ns/msg",
            baseline="goal: 1M msg/s",
            baseline_value=1e9 / MSGS_ABSOLUTE,
            target=1.0,
        ),
        Figure.speedup(
            "tcp.msgs_redirect.cpu",
            value=cpu_ns_per_msg["skmsg"],
            unit="ns/msg",
            baseline="trio p+b (CPU)",
            baseline_value=cpu_ns_per_msg["trio"],
        ),
    ]


# -- tcp.idle_memory ---------------------------------------------------------------------------

Kind = Literal["plain", "skmsg"]
How = Literal["py", "rss"]


def _pass_msg(msg: sk.SkMsg) -> int:
    return sk.SK_PASS


def _pass_skb(skb: sk.SkBuff) -> int:
    return sk.SK_PASS


def _malloc_trim() -> None:
    """Give glibc's free heap pages back to the OS, where there is glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _measure(how: How) -> int:
    gc.collect()
    if how == "py":
        return tracemalloc.get_traced_memory()[0]
    _malloc_trim()
    return rss_bytes()


async def _populate(kind: Kind, nstreams: int, how: How) -> int:
    """Bytes the population of ``nstreams`` idle streams of ``kind`` grew by."""
    listener = await open_listener(backlog=min(nstreams, 4096))
    streams: list[object] = []
    pairs = nstreams // 2
    if kind == "plain":
        c, s = await socket_pair(listener)  # warm-up, not counted
        streams += [trio.SocketStream(c), trio.SocketStream(s)]
        before = _measure(how)
        for _ in range(pairs):
            c, s = await socket_pair(listener)
            streams += [trio.SocketStream(c), trio.SocketStream(s)]
        await trio.testing.wait_all_tasks_blocked()
        return _measure(how) - before
    async with open_runtime() as rt:
        smap = sk.SockMap(nstreams + 2, name="bench.idle")
        smap.attach(_pass_msg, sk.SK_MSG_VERDICT)
        smap.attach(_pass_skb, sk.SK_SKB_STREAM_VERDICT)
        key = 0

        async def add_pair() -> None:
            nonlocal key
            c, s = await socket_pair(listener)
            for stream in (SkStream(c), SkStream(s)):
                smap.update(key, stream)
                streams.append(stream)
                key += 1

        await add_pair()  # warm-up, not counted
        await trio.testing.wait_all_tasks_blocked()
        before = _measure(how)
        for _ in range(pairs):
            await add_pair()
        await trio.testing.wait_all_tasks_blocked()
        grown = _measure(how) - before
        _check(len(smap) == nstreams + 2, f"{len(smap)} streams in the map")
        _check(
            all(isinstance(x, SkStream) and _pumping(rt, x) for x in streams),
            "a stream has no running receive pump",
        )
        rt.nursery.cancel_scope.cancel()
        return grown


def _pumping(rt: Runtime, stream: SkStream) -> bool:
    return stream.sk.psock is not None and rt.pumping(stream)


def _idle_probe(kind: Kind, nstreams: int, how: How) -> int:
    """In a fresh child: trace if ``how`` says so, then build the population."""
    if how == "py":
        tracemalloc.start()
    return trio.run(_populate, kind, nstreams, how)


def bench_idle_memory(quick: bool) -> list[Figure]:
    """Per-stream memory of 10,000 idle SkStreams in a map (quick: 500) beyond as
    many plain trio.SocketStream, by tracemalloc and by RSS."""
    nstreams = 500 if quick else 10_000
    rounds: dict[How, int] = {"py": 1, "rss": 1 if quick else 3}
    need = nstreams + 2 + 64  # the streams, the warm-up pair, the listener, trio, stdio
    limit = raise_nofile(need)
    _check(limit >= need, f"RLIMIT_NOFILE {limit} < {need} fds needed; raise the hard limit")
    grown: dict[tuple[Kind, How], list[int]] = {}
    kinds: list[Kind] = ["plain", "skmsg"]
    hows: list[How] = ["py", "rss"]
    for how in hows:
        for r in range(rounds[how]):
            for kind in kinds[r % 2 :] + kinds[: r % 2]:
                probe = functools.partial(_idle_probe, kind, nstreams, how)
                grown.setdefault((kind, how), []).append(in_child(probe))
    figures: list[Figure] = []
    for how in hows:
        # at least one byte per stream, so that a ratio stays finite in quick mode's noise
        plain = max(statistics.median(grown["plain", how]) / nstreams, 1.0) / KIB
        skmsg = max(statistics.median(grown["skmsg", how]) / nstreams, 1.0) / KIB
        figures += [
            Figure.cost_ratio(
                f"tcp.idle_memory.{how}_extra",
                value=max(skmsg - plain, 0.0),
                unit="KiB",
                baseline="budget per stream",
                baseline_value=MEMORY_BUDGET / KIB,
                target=1.0,
            ),
            Figure.cost_ratio(
                f"tcp.idle_memory.{how}_each",
                value=skmsg,
                unit="KiB",
                baseline=f"SocketStream ({how})",
                baseline_value=plain,
            ),
        ]
    return figures


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "tcp.bulk_redirect": bench_bulk_redirect,
    "tcp.msgs_redirect": bench_msgs_redirect,
    "tcp.idle_memory": bench_idle_memory,
}
