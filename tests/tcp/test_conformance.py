"""trio's own stream conformance suite on SkStream: plain, and in maps with programs."""

from __future__ import annotations

import socket as stdsocket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import open_runtime

Maker = Callable[[], Awaitable[tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]]]


async def tcp_pair() -> tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]:
    [listener] = await skmsg_tcp.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    return client, server


def clog(maker: Maker) -> Maker:
    """trio's "clogged" maker: the pair with both send paths full, so that
    send_all blocks until the other side receives. Both ways are filled in
    turn until neither takes a byte more: filling one way can let the other
    move again (a receive pump that reads on, the peer's acknowledgments)."""

    async def fill(sender: skmsg_tcp.SkStream) -> int:
        sent = blocked = 0
        while blocked < 2:  # blocked twice in a row, the second time after all went quiet
            with trio.move_on_after(0.03) as scope:
                sent += await sender.socket.send(b"x" * 4096)
            blocked = blocked + 1 if scope.cancelled_caught else 0
            if blocked:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        return sent

    async def clogged() -> tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]:
        left, right = await maker()
        for s in (left, right):
            s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096)
            s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
            psock = s.sk.psock
            if psock is not None:
                psock.rcvbuf = 4096  # a small ingress queue, so the pump stops reading soon
        while await fill(left) + await fill(right):  # both ways, as trio's own socket tests do
            pass
        return left, right

    return clogged


def pass_msg(msg: sk.SkMsg) -> int:
    return sk.SK_PASS


def pass_skb(skb: sk.SkBuff) -> int:
    return sk.SK_PASS


def in_maps(*attach: sk.BpfAttachType) -> Maker:
    progs = {sk.SK_MSG_VERDICT: pass_msg, sk.SK_SKB_STREAM_VERDICT: pass_skb,
             sk.SK_SKB_VERDICT: pass_skb, sk.SK_SKB_STREAM_PARSER: lambda skb: skb.len}

    async def maker() -> tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]:
        client, server = await tcp_pair()
        m = sk.SockMap(max_entries=2)
        for a in attach:
            m.attach(progs[a], a)
        m.update(0, client)
        m.update(1, server)
        return client, server

    return maker


async def test_plain_stream_passes_check_half_closeable_stream() -> None:
    await trio.testing.check_half_closeable_stream(tcp_pair, clog(tcp_pair))


#: The program sets a stream in a map is checked with, by name.
PROGRAM_SETS: dict[str, tuple[sk.BpfAttachType, ...]] = {
    "psock-only": (),
    "msg": (sk.SK_MSG_VERDICT,),
    "verdict": (sk.SK_SKB_STREAM_VERDICT,),
    "parser+verdict": (sk.SK_SKB_STREAM_PARSER, sk.SK_SKB_STREAM_VERDICT),
    "all": (sk.SK_MSG_VERDICT, sk.SK_SKB_STREAM_PARSER, sk.SK_SKB_STREAM_VERDICT),
    "msg+skb_verdict": (sk.SK_MSG_VERDICT, sk.SK_SKB_VERDICT),
}


@pytest.mark.parametrize("attach", list(PROGRAM_SETS.values()), ids=list(PROGRAM_SETS))
async def test_stream_in_a_map_passes_check_half_closeable_stream(
    attach: tuple[sk.BpfAttachType, ...],
) -> None:
    maker = in_maps(*attach)
    async with open_runtime():
        await trio.testing.check_half_closeable_stream(maker, clog(maker))
