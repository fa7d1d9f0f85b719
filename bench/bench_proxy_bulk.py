"""Large messages through the runtime's redirect: tails spliced, against a bare trio relay.

``proxy.bulk_tcp``: 1 MiB length-prefixed messages, a header-only program
---------------------------------------------------------------------------
Topology (the runtime-level set-up of ``tcp.bulk_redirect``, with a stream
parser)::

    client --> proxy-side == pump: strparser, verdict, sk_redirect_map ==> backend-side --> sink

The proxy-side stream sits in a ``SockMap`` with the built-in
``LengthPrefixParser(4)`` as its stream parser and a stream verdict that
returns ``sk_redirect_map(skb, backends, 0, 0)``; the backend-side stream sits
in ``backends`` (no programs). The verdict is attached with ``reads=4``: it
declares it reads the 4-byte length only, so each message is verdicted as
soon as its first bytes are in, and the rest of it (its tail) moves from the
proxy-side socket to the backend-side socket with ``splice(2)``, never read
into Python. The proxy-side psock's ``max_msg_size`` is raised to 2 MiB (the
default, the kernel's ``sk_rcvbuf``-like 208 KiB, refuses 1 MiB messages).

Messages are 1 MiB each (a 4-byte big-endian length, then 1 MiB - 4 bytes);
one round sends 256 of them (256 MiB; quick: 8), each with one ``send_all``,
and the sink reads with ``receive_some(262144)``. The client and the sink are
plain ``trio.SocketStream`` on both sides. **Timed** from the first
``send_all`` until the sink has every byte.

Baseline: the same two connections as plain ``trio.SocketStream`` with a bare
trio relay between the middle two (``receive_some(65536)`` -> ``send_all``),
as ``tcp.bulk_redirect``'s.

``proxy.bulk_tcp.command``: the same messages through ``skmsg proxy`` itself
(:func:`skmsg.run_proxy`, in this process: its real accept, sessions, backend
slots and programs) with its default policy, round-robin over one backend,
which declares it reads none of a message (``READS = 0``): the client
connects to the proxy, the proxy connects to the sink's listener when the
first message comes, and each message's tail is spliced into that
connection. ``--max-message-size`` is 2 MiB. Checked after the rounds: the
proxy judged and redirected every message, dropped none, and spliced the
tails.

``proxy.bulk_tcp.every_byte``: the same with a verdict that declares nothing
(it may read every byte): each message is held whole by the stream parser,
verdicted, and written with one ``egress_write``: the path every program
took before tails, and the one a program takes that reads the body. Report
only (its ratio is to be compared with the same figure of the code before
tails: it must not be lower).

How it runs
-----------
As ``bench_tcp``'s throughput rounds: the client, the relay (the pump or the
trio relay task) and the sink are tasks of one ``trio.run`` (the pipeline's
total CPU cost), the three topologies are built once in that run and their
rounds interleave (9 rounds each; quick: 2), after an untimed warm-up
transfer per side that checks every byte arrives intact and in order, with
messages of several sizes (small ones take the batched path). After the
timed rounds the counters prove the path: the header-only side's psock
spliced every tail (``rx_spliced_bytes``: all but the bytes read with each
message's header), the every-byte side's spliced nothing, neither dropped,
no redirect failed. The garbage collector is off while a round is timed.

The figures with a target are *paired* (as ``tls.bulk``): the median over
the rounds of each round's own ratio, printed with both sides' median
costs; this VM's speed swings within seconds, and the sides of one round
see the same moment. ``proxy.bulk_tcp.best`` (report only) is the ratio of
the two best rounds.

Figures print microseconds per MiB of the best round per side and the ratio
``baseline/value`` (higher is better); ``.cpu`` figures (report only) use
this process's CPU time instead of the wall clock.
"""

from __future__ import annotations

import gc
import statistics
import struct
import time
from collections.abc import Callable

import attrs
import trio

import skmsg_core as sk
from bench._harness import Figure
from bench._tcp_helpers import Round, Throughput, interleaved, open_listener, socket_pair
from bench.bench_tcp import trio_relay
from skmsg import Address, Proxy, ProxyConfig, run_proxy
from skmsg_core.runtime import Runtime, open_runtime
from skmsg_tcp import SkStream

__all__ = ["BENCHMARKS"]

MIB = 1 << 20
MSG = MIB
TARGET = 1.5
#: Seconds one transfer may take before the benchmark fails instead of hanging.
DEADLINE = 120.0
SINK_READ = 262144
_LEN = struct.Struct(">I")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"bench_proxy_bulk: {what}")


@attrs.frozen
class Side:
    """One topology: where the client writes, where the sink reads, and (skmsg)
    the proxy-side stream and its verdict program."""

    client: trio.SocketStream
    sink: trio.SocketStream
    proxy: SkStream | None = None
    verdict: sk.Program | None = None


async def skmsg_side(listener: trio.socket.SocketType, reads: int | None) -> Side:
    """The skmsg topology (module docstring); call inside ``open_runtime``."""
    c, p = await socket_pair(listener)
    b, s = await socket_pair(listener)
    proxy, backend = SkStream(p), SkStream(b)
    clients = sk.SockMap(1, name=f"bench.clients.{reads}")
    backends = sk.SockMap(1, name=f"bench.backends.{reads}")

    def route(skb: sk.SkBuff) -> int:
        return sk.sk_redirect_map(skb, backends, 0, 0)

    clients.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    prog = clients.attach(route, sk.SK_SKB_STREAM_VERDICT, reads=reads)
    clients.update(0, proxy)
    backends.update(0, backend)
    psock = proxy.sk.psock
    assert psock is not None and psock.strp is not None
    psock.strp.max_msg_size = 2 * MIB
    return Side(trio.SocketStream(c), trio.SocketStream(s), proxy, prog)


async def command_side(nursery: trio.Nursery) -> tuple[Side, Proxy]:
    """``skmsg proxy`` (its default, header-free policy) between a client and a
    sink it connects to on the first message."""
    sinks = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = sinks[0].socket.getsockname()[1]
    config = ProxyConfig(listen=Address("127.0.0.1", 0), backends=(Address("127.0.0.1", port),),
                         max_message_size=2 * MIB, max_clients=16)
    proxy: Proxy = await nursery.start(run_proxy, config)
    await (await sinks[0].accept()).aclose()  # the proxy's start-up probe of its backend
    client = await trio.open_tcp_stream("127.0.0.1", proxy.listen[0].port)
    first = _message(64, 0)
    await client.send_all(first)  # the proxy connects to the sink now
    sink = await sinks[0].accept()
    await sinks[0].aclose()
    await _drain(sink, len(first))
    return Side(client, sink), proxy


async def trio_side(listener: trio.socket.SocketType, nursery: trio.Nursery) -> Side:
    c, p = await socket_pair(listener)
    b, s = await socket_pair(listener)
    nursery.start_soon(trio_relay, trio.SocketStream(p), trio.SocketStream(b))
    return Side(trio.SocketStream(c), trio.SocketStream(s))


def _message(size: int, seed: int) -> bytes:
    body = (seed.to_bytes(4, "big") + bytes(range(256)) * ((size - 8) // 256 + 1))[: size - 4]
    return _LEN.pack(len(body)) + body


async def _drain(stream: trio.SocketStream, total: int, keep: bytearray | None = None) -> None:
    got = 0
    while got < total:
        data = await stream.receive_some(SINK_READ)
        if not data:
            raise RuntimeError(f"sink: EOF after {got} of {total} bytes")
        got += len(data)
        if keep is not None:
            keep += data


async def _transfer(side: Side, msgs: list[bytes], keep: bytearray | None = None) -> Round:
    total = sum(map(len, msgs))

    async def send() -> None:
        for m in msgs:
            await side.client.send_all(m)

    gc.collect()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                await _drain(side.sink, total, keep)
        return Round(time.perf_counter() - t0, time.process_time() - c0)
    finally:
        gc.enable()


async def _check_intact(side: Side, label: str) -> int:
    """Send messages of several sizes (small ones batched, large ones with
    tails) and check the sink gets exactly them; returns the bytes sent."""
    sizes = [70, MSG, 12, 3 * 65536 + 5, 65536, 100, 700_001, 8, MSG - 3]
    msgs = [_message(n, i) for i, n in enumerate(sizes)]
    got = bytearray()
    await _transfer(side, msgs, got)
    _check(bytes(got) == b"".join(msgs), f"{label}: the sink got different bytes than were sent")
    return sum(sizes)


def _paired(candidate: list[Round], baseline: list[Round]) -> float:
    """The median over rounds of each round's speedup (baseline time over the
    candidate's in the same round of the interleaving)."""
    return statistics.median(b.wall / c.wall for c, b in zip(candidate, baseline, strict=True))


async def _run(
    nmsgs: int, rounds: int
) -> tuple[dict[str, Throughput], dict[str, float], dict[str, sk.PsockStats]]:
    msg = _message(MSG, 7)
    msgs = [msg] * nmsgs
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        listener = await open_listener()
        command, proxy = await command_side(nursery)
        sides = {
            "header": await skmsg_side(listener, 4),
            "command": command,
            "every_byte": await skmsg_side(listener, None),
            "trio": await trio_side(listener, nursery),
        }
        warm = {name: await _check_intact(side, name) for name, side in sides.items()}
        seconds = await interleaved(
            {name: (lambda s=side: _transfer(s, msgs)) for name, side in sides.items()}, rounds
        )
        stats = _check_counters(rt, sides, warm, rounds * nmsgs * MSG)
        _check_proxy(proxy, rounds * nmsgs * MSG)
        nursery.cancel_scope.cancel()
    amount = nmsgs * MSG / MIB
    paired = {k: _paired(seconds[k], seconds["trio"]) for k in ("header", "command", "every_byte")}
    return {k: Throughput.of(amount, v) for k, v in seconds.items()}, paired, stats


def _check_counters(
    rt: Runtime, sides: dict[str, Side], warm: dict[str, int], timed: int
) -> dict[str, sk.PsockStats]:
    _check(rt.redirect_errors == 0, f"{rt.redirect_errors} redirect writes failed")
    out = {}
    for name in ("header", "every_byte"):
        side = sides[name]
        assert side.proxy is not None and side.verdict is not None
        psock = side.proxy.sk.psock
        _check(psock is not None, f"{name}: the proxy-side stream left its map")
        assert psock is not None
        st = psock.statistics()
        total = warm[name] + timed
        _check(
            st.rx_redirected_bytes == total and st.rx_dropped_bytes == 0,
            f"{name}: redirected {st.rx_redirected_bytes} of {total} bytes",
        )
        ps = side.verdict.statistics()
        _check(ps.dropped == 0 and ps.errors == 0, f"{name}: the verdict dropped: {ps}")
        if name == "every_byte":
            _check(st.rx_spliced_bytes == 0, f"every_byte spliced {st.rx_spliced_bytes} bytes")
        else:
            # every 1 MiB message's tail: all but what came with its first read
            _check(
                st.rx_spliced_bytes >= timed // 2,
                f"header: only {st.rx_spliced_bytes} of {timed} timed bytes were spliced",
            )
        out[name] = st
    return out


def _check_proxy(proxy: Proxy, timed: int) -> None:
    """``skmsg proxy`` redirected every message, dropped none, and spliced the
    timed messages' tails."""
    s = proxy.statistics()
    _check(s.msgs == s.redirected and s.dropped == 0 and s.policy_errors == 0,
           f"command: {s.msgs} messages, {s.redirected} redirected, {s.dropped} dropped")
    _check(proxy.runtime.redirect_errors == 0, "command: a redirect write failed")
    spliced = 0
    for session in proxy.sessions.values():
        psock = session.client.sk.psock
        if psock is not None:
            spliced += psock.statistics().rx_spliced_bytes
    _check(spliced >= timed // 2, f"command: only {spliced} of {timed} timed bytes were spliced")


def bench_bulk_tcp(quick: bool) -> list[Figure]:
    """256 (quick: 8) 1 MiB messages per round through the runtime's redirect, a
    header-only verdict (tails spliced) and an every-byte one, vs a trio relay."""
    nmsgs, rounds = (8, 2) if quick else (256, 9)
    t, paired, stats = trio.run(_run, nmsgs, rounds)
    us = {k: 1e6 / v.median for k, v in t.items()}
    best = {k: 1e6 / v.best for k, v in t.items()}
    cpu = {k: 1e6 / v.cpu_best for k, v in t.items()}
    st = stats["header"]
    python_share = 1 - st.rx_spliced_bytes / max(st.rx_redirected_bytes, 1)
    return [
        Figure.speedup(
            "proxy.bulk_tcp",
            value=us["header"],
            unit="us/MiB",
            baseline="trio relay",
            baseline_value=us["trio"],
            target=TARGET,
            paired=paired["header"],
        ),
        Figure.speedup(
            "proxy.bulk_tcp.best",
            value=best["header"],
            unit="us/MiB",
            baseline="trio relay",
            baseline_value=best["trio"],
        ),
        Figure.speedup(
            "proxy.bulk_tcp.cpu",
            value=cpu["header"],
            unit="us/MiB",
            baseline="trio relay (CPU)",
            baseline_value=cpu["trio"],
        ),
        Figure.speedup(
            "proxy.bulk_tcp.command",
            value=us["command"],
            unit="us/MiB",
            baseline="trio relay",
            baseline_value=us["trio"],
            target=TARGET,
            paired=paired["command"],
        ),
        Figure.speedup(
            "proxy.bulk_tcp.command.cpu",
            value=cpu["command"],
            unit="us/MiB",
            baseline="trio relay (CPU)",
            baseline_value=cpu["trio"],
        ),
        Figure.speedup(
            "proxy.bulk_tcp.every_byte",
            value=us["every_byte"],
            unit="us/MiB",
            baseline="trio relay",
            baseline_value=us["trio"],
            paired=paired["every_byte"],
        ),
        Figure.speedup(
            "proxy.bulk_tcp.every_byte.cpu",
            value=cpu["every_byte"],
            unit="us/MiB",
            baseline="trio relay (CPU)",
            baseline_value=cpu["trio"],
        ),
        Figure.cost_ratio(
            "proxy.bulk_tcp.python_bytes",
            value=100 * python_share,
            unit="%",
            baseline="every byte (today)",
            baseline_value=100.0,
        ),
    ]


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {"proxy.bulk_tcp": bench_bulk_tcp}
