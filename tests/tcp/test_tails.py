"""Message tails on real sockets: spliced, discarded, or read, and cut short.

A verdict attached with ``reads=N`` decides on a message's first ``N`` bytes;
the rest of a large message (its tail) moves from the client's socket to the
target's with ``splice(2)``. Each test checks the bytes a real peer receives,
and the psock's counters say which path they took (``rx_spliced_bytes``,
``rx_discarded_bytes``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime, open_runtime
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair

MIB = 1 << 20
BIG = sk.RX_TAIL_MIN_BYTES


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def msg(n: int, key: int = 0) -> bytes:
    """A framed message of ``n`` bytes in all: its first body byte is ``key``,
    the rest random (so a misplaced byte is seen)."""
    return framed(bytes([key]) + os.urandom(n - 5))


@attrs.define
class Rig:
    """client -> proxy_in ==(verdict: redirect to outs[key])==> outs[key] -> sinks[key]."""

    rt: Runtime
    client: SkStream
    proxy_in: SkStream
    outs: list[SkStream]
    sinks: list[SkStream]
    clients: sk.SockMap
    backends: sk.SockMap
    prog: sk.Program

    @property
    def stats(self) -> sk.PsockStats:
        psock = self.proxy_in.sk.psock
        assert psock is not None
        return psock.statistics()


Verdict = Callable[[sk.SkBuff, sk.SockMap], int]
RigFactory = Callable[..., Awaitable[Rig]]


def route(skb: sk.SkBuff, backends: sk.SockMap) -> int:
    """Redirect to the backend the first body byte names."""
    return sk.sk_redirect_map(skb, backends, skb.data[4], 0)


@pytest.fixture
async def rig_factory() -> AsyncIterator[RigFactory]:
    made: list[SkStream] = []

    async def make(
        rt: Runtime, verdict: Verdict = route, reads: int | None = 5, n_out: int = 1
    ) -> Rig:
        client, proxy_in = await tcp_stream_pair()
        outs, sinks = [], []
        for _ in range(n_out):
            out, sink = await tcp_stream_pair()
            outs.append(out)
            sinks.append(sink)
        made.extend([client, proxy_in, *outs, *sinks])
        clients, backends = sk.SockMap(1), sk.SockMap(max(n_out, 1))
        for i, out in enumerate(outs):
            backends.update(i, out)
        clients.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
        prog = clients.attach(
            lambda skb: verdict(skb, backends), sk.SK_SKB_STREAM_VERDICT, reads=reads
        )
        clients.update(0, proxy_in)
        psock = proxy_in.sk.psock
        assert psock is not None and psock.strp is not None
        psock.strp.max_msg_size = 4 * MIB
        return Rig(rt, client, proxy_in, outs, sinks, clients, backends, prog)

    yield make
    for s in made:
        await trio.aclose_forcefully(s)


async def read_exactly(stream: SkStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(MIB)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def read_to_eof(stream: SkStream) -> bytes:
    got = bytearray()
    while chunk := await stream.receive_some(MIB):
        got += chunk
    return bytes(got)


async def send_and_read(rig: Rig, wire: bytes, sink: int = 0, n: int | None = None) -> bytes:
    out = b""

    async def read() -> None:
        nonlocal out
        out = await read_exactly(rig.sinks[sink], len(wire) if n is None else n)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await rig.client.send_all(wire)
    return out


# -- the tail's paths --------------------------------------------------------------------------


async def test_tails_arrive_byte_exact_spliced_in_order_with_small_messages(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt)
        sizes = [10, MIB, 70, 3 * BIG + 5, BIG, 9, 700_001, 2 * MIB + 3, 12]
        msgs = [msg(n) for n in sizes]
        wire = b"".join(msgs)
        assert await send_and_read(rig, wire) == wire
        st = rig.stats
        large = [n for n in sizes if n >= BIG]
        assert st.rx_redirected_bytes == len(wire) and st.rx_dropped_bytes == 0
        # each large message's tail (all but what came with its first read) spliced
        assert st.rx_spliced_bytes >= sum(large) - len(large) * 65536
        assert st.rx_discarded_bytes == 0
        assert rt.redirect_errors == 0
        assert rig.prog.statistics().redirected == len(sizes)
        # the streams count what moved below them
        assert rig.outs[0].bytes_sent == len(wire)


async def test_a_program_that_reads_every_byte_takes_the_copy_path(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt, reads=None)
        wire = msg(10) + msg(MIB) + msg(BIG + 1)
        assert await send_and_read(rig, wire) == wire
        assert rig.stats.rx_spliced_bytes == 0
        assert rig.stats.rx_redirected_bytes == len(wire)


async def test_small_messages_keep_the_batched_path(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt)
        msgs = [msg(5 + i % 300) for i in range(5000)]
        wire = b"".join(msgs)
        assert await send_and_read(rig, wire) == wire
        st = rig.stats
        assert st.rx_spliced_bytes == 0 and st.rx_msgs == 5000
        # batched: far fewer writes to the target than messages
        assert rig.outs[0].sk.psock is not None
        assert rig.prog.statistics().run_cnt == 5000


async def test_a_dropped_tail_is_discarded_unread(
    rig_factory: RigFactory,
) -> None:
    def even_only(skb: sk.SkBuff, backends: sk.SockMap) -> int:
        if skb.data[4] % 2:
            return sk.SK_DROP
        return sk.sk_redirect_map(skb, backends, 0, 0)

    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt, even_only)
        msgs = [msg(MIB, 1), msg(20, 0), msg(300_000, 3), msg(BIG, 0), msg(40, 5), msg(MIB, 2)]
        kept = [m for m in msgs if not m[4] % 2]
        dropped = [m for m in msgs if m[4] % 2]
        got = await send_and_read(rig, b"".join(msgs), n=sum(map(len, kept)))
        assert got == b"".join(kept)
        st = rig.stats
        assert st.rx_dropped_bytes == sum(map(len, dropped))
        assert st.rx_discarded_bytes >= MIB + 300_000 - 2 * 65536
        assert rig.prog.statistics().dropped == 3


async def test_a_pass_of_a_large_message_reads_its_tail_into_the_ingress_queue(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt, lambda skb, m: sk.SK_PASS)
        wire = msg(BIG * 2) + msg(30)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.client.send_all, wire)
            with trio.fail_after(30):
                assert await read_exactly(rig.proxy_in, len(wire)) == wire
        assert rig.stats.rx_spliced_bytes == 0 and rig.stats.rx_passed_bytes == len(wire)


async def test_an_ingress_redirect_falls_back_to_the_copy_path(
    rig_factory: RigFactory,
) -> None:
    def to_ingress(skb: sk.SkBuff, backends: sk.SockMap) -> int:
        return sk.sk_redirect_map(skb, backends, 0, sk.BPF_F_INGRESS)

    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt, to_ingress)
        wire = msg(150_000) + msg(30) + msg(BIG)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.client.send_all, wire)
            with trio.fail_after(30):
                assert await read_exactly(rig.outs[0], len(wire)) == wire
        assert rig.stats.rx_spliced_bytes == 0
        assert rig.stats.rx_redirected_bytes == len(wire) and rt.redirect_errors == 0


async def test_a_datagram_target_gets_the_whole_message_as_one_datagram(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        def to_ingress(skb: sk.SkBuff, backends: sk.SockMap) -> int:
            return sk.sk_redirect_map(skb, backends, 0, sk.BPF_F_INGRESS)

        rig: Rig = await rig_factory(rt, to_ingress, n_out=0)
        udp = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
        try:
            await udp.connect(udp.getsockname())  # ESTABLISHED: a redirect target
            rig.backends.update(0, udp)
            big = msg(100_000)
            with trio.fail_after(30):
                await rig.client.send_all(big + msg(20))
                assert await udp.receive(200_000) == big
                assert len(await udp.receive(200_000)) == 20
            assert rig.stats.rx_spliced_bytes == 0 and rt.redirect_errors == 0
        finally:
            await udp.aclose()


# -- reading past the declaration --------------------------------------------------------------


async def test_reading_past_the_declared_bytes_is_the_runs_error_and_a_drop(
    rig_factory: RigFactory,
) -> None:
    def peeks(skb: sk.SkBuff, backends: sk.SockMap) -> int:
        if skb.len >= BIG:
            return sk.SK_PASS if skb.data[100] else sk.SK_DROP  # past reads=5
        return sk.sk_redirect_map(skb, backends, 0, 0)

    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt, peeks)
        small = msg(20)
        got = await send_and_read(rig, msg(MIB) + small, n=len(small))
        assert got == small
        stats = rig.prog.statistics()
        assert stats.errors == 1 and stats.dropped == 1
        err = rig.prog.last_error
        assert isinstance(err, sk.ReadsError)
        assert "declared reads=5" in str(err) and "first 5 bytes" in str(err)
        assert rig.stats.rx_dropped_bytes == MIB


# -- failures mid-tail -------------------------------------------------------------------------


async def test_source_eof_inside_the_tail_fails_both_ends_never_silently(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt)
        whole = msg(MIB)
        cut = whole[: 400_000]
        sink_got = b""

        async def sink() -> None:
            nonlocal sink_got
            sink_got = await read_to_eof(rig.sinks[0])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink)
                await rig.client.send_all(cut)
                await rig.client.send_eof()
        # the target's peer saw the connection end inside the message
        assert len(sink_got) < len(whole) and whole.startswith(sink_got)
        with pytest.raises(trio.BrokenResourceError) as info:
            await rig.outs[0].send_all(b"x")
        assert "cut short" in str(info.value)
        # the source is in error, naming the early EOF
        with pytest.raises(trio.BrokenResourceError) as info:
            await rig.proxy_in.receive_some()
        cause = info.value.__cause__
        assert isinstance(cause, OSError) and cause.errno == errno.ECONNABORTED
        assert "before the end of a message" in str(cause)
        assert rt.redirect_errors == 0


async def test_a_target_reset_mid_tail_drops_the_message_and_the_source_goes_on(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt, n_out=2)
        rig.sinks[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rig.outs[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        after = msg(30, 1)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rig.client.send_all, msg(3 * MIB, 0) + after)
                # the tail stalls: the sink does not read
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                assert 0 < rig.outs[0].bytes_sent < 3 * MIB
                rig.sinks[0].setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                await rig.sinks[0].aclose()  # a reset
                assert await read_exactly(rig.sinks[1], len(after)) == after
        assert rt.redirect_errors == 1
        st = rig.stats
        assert st.rx_discarded_bytes > 0
        with pytest.raises(trio.BrokenResourceError, match="cut short"):
            await rig.outs[0].send_all(b"x")


async def test_leaving_the_map_mid_tail_aborts_both_ends(
    rig_factory: RigFactory,
) -> None:
    async with open_runtime() as rt:
        rig: Rig = await rig_factory(rt)
        rig.sinks[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rig.outs[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        whole = msg(2 * MIB)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    # the source was shut down: the sender fails or gives up
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await rig.client.send_all(whole)

                nursery.start_soon(send)
                await trio.testing.wait_all_tasks_blocked(cushion=0.1)
                assert 0 < rig.outs[0].bytes_sent < len(whole)
                rig.clients.delete(0)  # the pump stops: a cancellation mid-tail
                sink_got = await read_to_eof(rig.sinks[0])
                assert len(sink_got) < len(whole) and whole.startswith(sink_got)
                with pytest.raises(trio.BrokenResourceError) as info:
                    await rig.proxy_in.receive_some()
                assert "before the end of a message" in str(info.value)
                await rig.client.aclose()  # the blocked sender gives up
        with pytest.raises(trio.BrokenResourceError, match="cut short"):
            await rig.outs[0].send_all(b"x")
        assert rt.redirect_errors == 0
