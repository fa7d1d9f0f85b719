"""Vectored sends: ``send_all([b"ab", b"cd"])`` is one ``sendmsg`` with an
iovec, one message, one verdict, the buffers never joined first."""

from __future__ import annotations

import pytest
import trio

import skmsg_core as sk
from skmsg_tcp import SkStream
from tests.tls._ulp_helpers import enable_both, read_exactly

Pair = tuple[SkStream, SkStream]


async def test_without_a_program_the_buffers_go_out_in_order(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    await a.send_all([b"ab", bytearray(b"cd"), memoryview(b"ef"), b""])
    assert await read_exactly(b, 6) == b"abcdef"


async def test_the_program_sees_one_message(tcp_stream_pair: Pair, sockmap: sk.SockMap) -> None:
    a, b = tcp_stream_pair
    seen: list[bytes] = []

    def prog(msg: sk.SkMsg) -> int:
        seen.append(msg.tobytes())
        return sk.SK_DROP if b"bc" in msg.tobytes() else sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    await a.send_all([b"x", b"y", b"z"])
    assert seen == [b"xyz"]
    with pytest.raises(PermissionError) as info:
        await a.send_all([b"ab", b"cd"])  # the pattern spans the two buffers
    assert seen[-1] == b"abcd" and info.value.accepted == 0  # type: ignore[attr-defined]
    assert await read_exactly(b, 3) == b"xyz"


async def test_large_iovec_through_apply_windows(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """Windows cut across the buffers' boundaries: every byte once, in order."""
    a, b = tcp_stream_pair
    sizes: list[int] = []

    def prog(msg: sk.SkMsg) -> int:
        sizes.append(msg.size)
        sk.msg_apply_bytes(msg, 1000)
        return sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    bufs = [bytes([i]) * (700 + i) for i in range(20)]
    async with trio.open_nursery() as n:
        n.start_soon(a.send_all, bufs)
        got = await read_exactly(b, sum(map(len, bufs)))
    assert got == b"".join(bufs)
    assert len(sizes) > 10


async def test_tls_takes_an_iovec_too(tcp_stream_pair: Pair, sockmap: sk.SockMap) -> None:
    a, b = tcp_stream_pair
    seen: list[bytes] = []
    sockmap.attach(lambda msg: seen.append(msg.tobytes()) or sk.SK_PASS, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    await enable_both(a, b)
    await a.send_all([b"GET / ", b"HTTP/1.1\r\n", b"\r\n"])
    assert await read_exactly(b, 18) == b"GET / HTTP/1.1\r\n\r\n"
    assert seen == [b"GET / HTTP/1.1\r\n\r\n"]  # one record, one verdict


@pytest.mark.parametrize("bad", [42, "text", [b"ok", 3], [b"ok", "text"]])
async def test_what_is_not_bytes_is_refused_naming_it(tcp_stream_pair: Pair, bad: object) -> None:
    a, _ = tcp_stream_pair
    with pytest.raises(TypeError, match="bytes-like"):
        await a.send_all(bad)  # type: ignore[arg-type]
