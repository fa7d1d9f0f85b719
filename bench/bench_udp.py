"""skmsg_udp against bare trio: 512-byte datagrams through a verdict and a redirect.

``udp.redirect``: datagrams per second through an skmsg UDP relay
-----------------------------------------------------------------
Topology, built once, everything UDP on ``127.0.0.1``::

    client --> proxy-side == burst: verdict per datagram, sk_redirect_map ==> backend-side --> sink

The proxy-side and backend-side sockets are :class:`skmsg_udp.UdpSocket` at
keys 0 and 1 of one ``SockMap`` with an ``SK_SKB_VERDICT`` program (a Python
function) that returns ``sk_redirect_map(skb, map, 1, 0)``: the runtime reads
the proxy-side socket in bursts (nonblocking ``recvfrom`` until it would
block), runs the verdict once per datagram and sends each one out of the
backend-side socket, connected to the sink. The client and the sink are
the same on both sides and as cheap as can be, so the relay's cost shows:
plain nonblocking sockets, the client sending a window's worth at a time and
the sink reading until its socket would block, each waiting through trio.

Baseline: the same four sockets as plain trio sockets and a bare trio relay
task between the middle two: ``recv(65536)`` -> ``send``, one datagram at a
time.

One round sends 20,000 datagrams of 512 bytes (quick: 3,000). UDP has no
flow control, so the client keeps at most ``WINDOW`` datagrams in flight
(sent, not yet at the sink): far below what the sockets' receive buffers
hold, so nothing is lost; a lost datagram would stall the round, which then
fails (it is not counted as done). **Timed** from the client's first send
until the sink has received every datagram. The client, the relay and the
sink are tasks of **one** ``trio.run`` (one process), so the figure is the pipeline's total CPU
cost on one core. Rounds interleave (skmsg, trio, then trio, skmsg, ...): 5
each (quick: 2), after an untimed warm-up per side that checks every datagram
arrives whole, in order; afterwards the counters prove the path (every
datagram judged once and redirected, none dropped). The garbage collector is
off while a round is timed.

The figure prints nanoseconds per datagram of the best round per side and
the ratio ``baseline/value``: skmsg's rate as a fraction of the bare relay's
(higher is better), target >= 0.7. The ``.cpu`` figure (report only) is the
same from this process's CPU time.
"""

from __future__ import annotations

import gc
import socket as stdsocket
import time
from collections.abc import Callable

import attrs
import trio

import skmsg_core as sk
import skmsg_udp
from bench._harness import Figure
from bench._tcp_helpers import Round, Throughput, interleaved
from skmsg_core.runtime import Runtime, open_runtime

HOST = "127.0.0.1"
SIZE = 512
#: Datagrams in flight at most: ~40 KiB of payload, far below the receive buffers.
WINDOW = 32
TARGET = 0.7
DEADLINE = 120.0
#: A round with no datagram arriving for this long lost one: it fails.
STALL = 2.0


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"udp bench: {what}")


async def _trio_socket(peer: tuple[str, int] | None = None) -> trio.socket.SocketType:
    s = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    await s.bind((HOST, 0))
    if peer is not None:
        await s.connect(peer)
    return s


def _end(peer: tuple[str, int]) -> stdsocket.socket:
    """A client or sink socket: plain, nonblocking, connected to ``peer``."""
    s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind((HOST, 0))
    s.connect(peer)
    return s


@attrs.define(eq=False)
class Side:
    """One side's topology: where the client sends, where the sink receives."""

    client: stdsocket.socket
    sink: stdsocket.socket
    proxy: skmsg_udp.UdpSocket | None = None
    smap: sk.SockMap | None = None


async def skmsg_side() -> Side:
    """The skmsg relay (module docstring); call inside ``open_runtime``."""
    proxy = await skmsg_udp.open_udp_socket((HOST, 0))
    backend = await skmsg_udp.open_udp_socket((HOST, 0))
    sink = _end(backend.getsockname())
    await backend.connect(sink.getsockname())
    client = _end(proxy.getsockname())
    await proxy.connect(client.getsockname())
    smap = sk.SockMap(2, name="bench.udp")

    def to_backend(skb: sk.SkBuff) -> int:
        return sk.sk_redirect_map(skb, smap, 1, 0)

    smap.attach(to_backend, sk.SK_SKB_VERDICT)
    smap.update(0, proxy)
    smap.update(1, backend)
    return Side(client, sink, proxy, smap)


async def trio_relay(src: trio.socket.SocketType, dst: trio.socket.SocketType) -> None:
    """The baseline: one datagram at a time, ``recv`` then ``send``."""
    while True:
        data = await src.recv(65536)
        await dst.send(data)


async def trio_side(nursery: trio.Nursery) -> Side:
    """The baseline topology, its relay task started in ``nursery``."""
    proxy = await _trio_socket()
    backend = await _trio_socket()
    sink = _end(backend.getsockname())
    await backend.connect(sink.getsockname())
    client = _end(proxy.getsockname())
    await proxy.connect(client.getsockname())
    nursery.start_soon(trio_relay, proxy, backend)
    return Side(client, sink)


class _Gate:
    """The sink's count, and the client's wait for it to catch up."""

    def __init__(self) -> None:
        self.received = 0
        self.wake_at = -1
        self.event = trio.Event()


async def _client(sock: stdsocket.socket, payloads: list[bytes], gate: _Gate) -> None:
    """Send a window's worth at a time (plain nonblocking sends, one scheduler
    pass per window), then wait for the sink to take half of it."""
    send = sock.send
    for sent, p in enumerate(payloads):
        if sent - gate.received >= WINDOW:
            gate.event = trio.Event()
            gate.wake_at = sent - WINDOW // 2
            await gate.event.wait()
        while True:
            try:
                send(p)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)


async def _sink(sock: stdsocket.socket, n: int, gate: _Gate, keep: list[bytes] | None) -> None:
    """Read until the socket would block, then wait for it (one scheduler pass
    per batch)."""
    recv = sock.recv
    while gate.received < n:
        try:
            data = recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if keep is not None:
            keep.append(data)
        gate.received += 1
        if gate.received >= gate.wake_at >= 0:
            gate.wake_at = -1
            gate.event.set()


async def _watchdog(gate: _Gate, n: int) -> None:
    """Fail the round when no datagram arrived for :data:`STALL` seconds (one was lost)."""
    seen = -1
    while True:
        await trio.sleep(STALL)
        _check(gate.received != seen, f"datagrams lost: {gate.received} of {n} received")
        seen = gate.received


async def transfer(side: Side, payloads: list[bytes], keep: list[bytes] | None = None) -> Round:
    """Send ``payloads`` through ``side``; time until the sink has them all.

    Raises:
        RuntimeError: a datagram was lost (the sink stalled).
    """
    gate = _Gate()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watchdog, gate, len(payloads))
                nursery.start_soon(_client, side.client, payloads, gate)
                await _sink(side.sink, len(payloads), gate, keep)
                nursery.cancel_scope.cancel()
        return Round(time.perf_counter() - t0, time.process_time() - c0)
    finally:
        if was_enabled:
            gc.enable()


def check_redirected(rt: Runtime, side: Side, n: int) -> None:
    """The proxy-side psock judged ``n`` datagrams and redirected them all."""
    assert side.proxy is not None and side.smap is not None
    _check(rt.redirect_errors == 0, f"{rt.redirect_errors} redirect sends failed")
    psock = side.proxy.sk.psock
    _check(psock is not None, "the proxy-side socket left its map")
    assert psock is not None
    st = psock.statistics()
    _check(
        st.rx_msgs == n and st.rx_redirected_bytes == n * SIZE and st.rx_dropped_bytes == 0,
        f"proxy-side psock: {st.rx_msgs} verdicts, {st.rx_redirected_bytes} bytes redirected "
        f"for {n} datagrams",
    )
    prog = side.smap.progs["skb_verdict"]
    assert prog is not None
    ps = prog.statistics()
    _check(ps.run_cnt == n and ps.dropped == 0, f"the verdict program: {ps}")


async def _redirect(n: int, rounds: int) -> dict[str, Throughput]:
    payloads = [i.to_bytes(4, "big") + bytes(SIZE - 4) for i in range(n)]
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        skm = await skmsg_side()
        base = await trio_side(nursery)
        for name, side in (("skmsg", skm), ("trio relay", base)):
            got: list[bytes] = []
            await transfer(side, payloads[:1000], got)
            _check(got == payloads[:1000], f"{name}: datagrams arrived changed or out of order")
        seconds = await interleaved(
            {"skmsg": lambda: transfer(skm, payloads), "trio": lambda: transfer(base, payloads)},
            rounds,
        )
        check_redirected(rt, skm, 1000 + rounds * n)
        nursery.cancel_scope.cancel()
    return {k: Throughput.of(n, v) for k, v in seconds.items()}


def bench_redirect(quick: bool) -> list[Figure]:
    """20,000 (quick: 3,000) 512-byte datagrams through the skmsg relay and a trio relay."""
    n, rounds = (3000, 2) if quick else (20_000, 5)
    t = trio.run(_redirect, n, rounds)
    ns = {k: 1e9 / v.best for k, v in t.items()}
    cpu_ns = {k: 1e9 / v.cpu_best for k, v in t.items()}
    return [
        Figure.speedup(
            "udp.redirect",
            value=ns["skmsg"],
            unit="ns/dgram",
            baseline="trio UDP relay",
            baseline_value=ns["trio"],
            target=TARGET,
        ),
        Figure.speedup(
            "udp.redirect.cpu",
            value=cpu_ns["skmsg"],
            unit="ns/dgram",
            baseline="trio UDP relay (CPU)",
            baseline_value=cpu_ns["trio"],
        ),
    ]


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "udp.redirect": bench_redirect,
}
