"""trio's own stream conformance suite on SkStream: plain, and in maps with programs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import clog_tcp_pair

Maker = Callable[[], Awaitable[tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]]]


async def tcp_pair() -> tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]:
    [listener] = await skmsg_tcp.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
    return client, server


def clog(maker: Maker) -> Maker:
    """trio's "clogged" maker: ``maker``'s pair, clogged both ways."""

    async def clogged() -> tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]:
        left, right = await maker()
        await clog_tcp_pair(left, right)
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
