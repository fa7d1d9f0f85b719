"""Replacing a program on live sockets (``BPF_LINK_UPDATE``), on real loopback.

Traffic runs on many connections while the linked program is replaced again
and again: every message is verdicted by exactly one generation, none is lost,
no connection drops, and the generations after the first are the ones that
see the later messages.
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter
from collections.abc import Callable

import trio

import skmsg_core as sk
from skmsg_core.testing import aclose_all
from skmsg_tcp.testing import tcp_stream_pair

PAIRS = 12
MESSAGES = 150
HEADER = struct.Struct(">IHI")  # length of the rest, connection, message number


def frame(conn: int, n: int) -> bytes:
    body = struct.pack(">HI", conn, n) + b"x" * (n % 50)
    return struct.pack(">I", len(body)) + body


def ids_of(data: bytes) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < len(data):
        length, conn, n = HEADER.unpack_from(data, pos)
        out.append((conn, n))
        pos += 4 + length
    return out


async def read_frames(stream: object, count: int) -> bytes:
    got = bytearray()
    while len(ids_of_prefix(got)) < count:
        chunk = await stream.receive_some()  # type: ignore[attr-defined]
        assert chunk, "a connection dropped"
        got += chunk
    return bytes(got)


def ids_of_prefix(data: bytearray) -> list[tuple[int, int]]:
    """The complete frames at the front of ``data``."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 4 + length > len(data):
            break
        _, conn, n = HEADER.unpack_from(data, pos)
        out.append((conn, n))
        pos += 4 + length
    return out


def generation(seen: list[tuple[int, tuple[int, int]]], gen: int) -> Callable[[sk.SkBuff], int]:
    def verdict(skb: sk.SkBuff) -> int:
        _, conn, n = HEADER.unpack_from(skb.data, 0)
        seen.append((gen, (conn, n)))
        return sk.SK_PASS

    return verdict


async def test_receive_verdict_replaced_repeatedly_under_traffic(skmsg_runtime: object) -> None:
    seen: list[tuple[int, tuple[int, int]]] = []
    m = sk.SockMap(PAIRS)
    m.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    link = m.link_create(generation(seen, 0), sk.SK_SKB_STREAM_VERDICT)
    pairs = [await tcp_stream_pair() for _ in range(PAIRS)]
    try:
        for i, (_, server) in enumerate(pairs):
            m.update(i, server)
        gens = itertools.count(1)
        done = trio.Event()

        async def replace_forever() -> None:
            while not done.is_set():
                link.update(generation(seen, next(gens)))
                await trio.sleep(0.002)

        received: dict[int, bytes] = {}

        async def run(i: int) -> None:
            client, server = pairs[i]
            async with trio.open_nursery() as n:
                async def send() -> None:
                    for k in range(MESSAGES):
                        await client.send_all(frame(i, k))
                        if k % 10 == 0:
                            await trio.sleep(0)

                n.start_soon(send)
                received[i] = await read_frames(server, MESSAGES)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replace_forever)
                async with trio.open_nursery() as traffic:
                    for i in range(PAIRS):
                        traffic.start_soon(run, i)
                done.set()
        sent = {(i, k) for i in range(PAIRS) for k in range(MESSAGES)}
        delivered = [x for i in range(PAIRS) for x in ids_of(received[i])]
        assert sorted(delivered) == sorted(sent)  # none lost, none doubled
        per_message = Counter(msg for _, msg in seen)
        assert set(per_message) == sent and set(per_message.values()) == {1}
        used = {gen for gen, _ in seen}
        assert len(used) > 5, f"the program was replaced under traffic ({len(used)} generations)"
        # in each connection, generations only move forward
        for i in range(PAIRS):
            gens_in_order = [g for g, (c, _) in seen if c == i]
            assert gens_in_order == sorted(gens_in_order)
    finally:
        await aclose_all([s for p in pairs for s in p])
        m.close()


async def test_send_verdict_replaced_repeatedly_under_traffic(skmsg_runtime: object) -> None:
    seen: list[tuple[int, tuple[int, int]]] = []
    m = sk.SockMap(PAIRS)

    def msg_generation(gen: int) -> Callable[[sk.SkMsg], int]:
        def verdict(msg: sk.SkMsg) -> int:
            _, conn, n = HEADER.unpack_from(msg.tobytes(), 0)
            seen.append((gen, (conn, n)))
            return sk.SK_PASS

        return verdict

    link = m.link_create(msg_generation(0), sk.SK_MSG_VERDICT)
    pairs = [await tcp_stream_pair() for _ in range(PAIRS)]
    try:
        for i, (client, _) in enumerate(pairs):
            m.update(i, client)
        gens = itertools.count(1)
        stop = trio.Event()

        async def replace_forever() -> None:
            while not stop.is_set():
                link.update(msg_generation(next(gens)))
                await trio.sleep(0.002)

        received: dict[int, bytes] = {}

        async def run(i: int) -> None:
            client, server = pairs[i]
            async with trio.open_nursery() as n:
                async def send() -> None:
                    for k in range(MESSAGES):
                        await client.send_all(frame(i, k))

                n.start_soon(send)
                received[i] = await read_frames(server, MESSAGES)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(replace_forever)
                async with trio.open_nursery() as traffic:
                    for i in range(PAIRS):
                        traffic.start_soon(run, i)
                stop.set()
        sent = {(i, k) for i in range(PAIRS) for k in range(MESSAGES)}
        assert sorted(x for i in range(PAIRS) for x in ids_of(received[i])) == sorted(sent)
        per_message = Counter(msg for _, msg in seen)
        assert set(per_message) == sent and set(per_message.values()) == {1}
        assert len({gen for gen, _ in seen}) > 5
    finally:
        await aclose_all([s for p in pairs for s in p])
        m.close()


async def test_a_replaced_stream_parser_frames_the_pending_message(
    skmsg_runtime: object,
) -> None:
    """Half a message is pending when the parser is replaced: the new parser
    frames it (the bytes held are not lost)."""
    m = sk.SockMap(1)
    old = m.link_create(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    client, server = await tcp_stream_pair()
    try:
        m.update(0, server)
        msg = frame(0, 7)
        await client.send_all(msg[:3])  # not even the length yet
        await trio.testing.wait_all_tasks_blocked()
        runs: list[int] = []

        def parse(skb: sk.SkBuff) -> int:
            runs.append(skb.len)
            return 0 if skb.len < 4 else 4 + int.from_bytes(bytes(skb.data[:4]), "big")

        old.update(parse)
        await client.send_all(msg[3:])
        with trio.fail_after(10):
            assert await read_frames(server, 1) == msg
        assert runs and runs[0] == len(msg)  # the new parser saw the held bytes too
    finally:
        await aclose_all([client, server])
        m.close()
