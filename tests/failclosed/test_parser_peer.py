"""A parse program fed by a peer: whatever length the peer's header makes it
return (a negative one far below any errno), or whatever it raises on the
peer's bytes (``sys.exit()`` too), is that connection's error (``EPROTO``):
its reader gets ``trio.BrokenResourceError`` with the parser's error as the
cause, after the messages before it; the runtime and another connection carry
on. TCP through the runtime's pump, and TLS framed by the parser
(``strparser=True``, as ``skmsg proxy --tls`` runs it)."""

from __future__ import annotations

import errno
import sys
from collections.abc import AsyncIterator

import pytest
import trio

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_core.runtime import Runtime
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import make_keys

from ._support import TIMEOUT, read_exactly

Pair = tuple[SkStream, SkStream]
HEADER = 8


def signed_length(skb: sk.SkBuff) -> int:
    """Messages framed by a signed 64-bit big-endian length of the body; a
    header of ``EXIT`` bytes makes it call ``sys.exit()``."""
    if skb.len < HEADER:
        return 0
    head = bytes(skb.data[:HEADER])
    if head == b"EXITEXIT":
        sys.exit("the parser gave up")
    return HEADER + int.from_bytes(head, "big", signed=True)


def message(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big", signed=True) + body


#: What a peer sends after one good message: (id, bytes).
PEER_INPUT = [
    pytest.param((-(2**31)).to_bytes(HEADER, "big", signed=True), id="minus-2**31"),
    pytest.param((-(2**31) - 1).to_bytes(HEADER, "big", signed=True), id="minus-2**31-1"),
    pytest.param((-(2**63)).to_bytes(HEADER, "big", signed=True), id="minus-2**63"),
    pytest.param((-4105).to_bytes(HEADER, "big", signed=True), id="just-past-max-errno"),
    pytest.param(b"EXITEXIT", id="sys-exit"),
]


def check_eproto(exc: BaseException) -> None:
    assert isinstance(exc, trio.BrokenResourceError), repr(exc)
    cause = exc.__cause__
    assert isinstance(cause, sk.StrParserError), repr(cause)
    assert cause.errno == errno.EPROTO, cause


@pytest.fixture
async def two_pairs(skmsg_runtime: Runtime) -> AsyncIterator[tuple[Pair, Pair]]:
    a, b = await tcp_stream_pair(), await tcp_stream_pair()
    try:
        yield a, b
    finally:
        await aclose_all((*a, *b))


@pytest.mark.parametrize("bad", PEER_INPUT)
async def test_tcp_the_connection_errors_and_the_others_carry_on(
    bad: bytes, two_pairs: tuple[Pair, Pair], sockmap: sk.SockMap, skmsg_runtime: Runtime
) -> None:
    (client, server), (other_client, other_server) = two_pairs
    parser = sockmap.attach(signed_length, sk.SK_SKB_STREAM_PARSER)
    sockmap.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    sockmap.update(0, server)
    sockmap.update(1, other_server)
    await client.send_all(message(b"first") + bad + b"whatever follows")
    assert await read_exactly(server, HEADER + 5) == message(b"first")
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError) as info:
        await server.receive_some()
    check_eproto(info.value)
    with pytest.raises(trio.BrokenResourceError):  # for good: never read around the parser
        await server.receive_some()
    await other_client.send_all(message(b"other"))
    assert await read_exactly(other_server, HEADER + 5) == message(b"other")
    assert skmsg_runtime.socket_errors == 0  # a peer's bad bytes are the connection's own error
    assert parser.statistics().errors == (1 if bad == b"EXITEXIT" else 0)


@pytest.mark.parametrize("bad", PEER_INPUT)
async def test_tls_the_connection_errors_and_the_others_carry_on(
    bad: bytes, two_pairs: tuple[Pair, Pair], sockmap: sk.SockMap
) -> None:
    pairs = two_pairs
    sockmap.attach(signed_length, sk.SK_SKB_STREAM_PARSER)
    sockmap.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    for i, (client, server) in enumerate(pairs):
        sockmap.update(i, server)  # the kernel's order: into the map, then TLS
        k = make_keys()
        await tls.enable_tls(client, k.a2b, k.b2a)
        await tls.enable_tls(server, k.b2a, k.a2b, strparser=True)
    (client, server), (other_client, other_server) = pairs
    await client.send_all(message(b"first") + bad + b"whatever follows")
    assert await read_exactly(server, HEADER + 5) == message(b"first")
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError) as info:
        await server.receive_some()
    check_eproto(info.value)
    await client.send_all(message(b"late"))
    with pytest.raises(trio.BrokenResourceError):  # for good
        await server.receive_some()
    await other_client.send_all(message(b"other"))
    assert await read_exactly(other_server, HEADER + 5) == message(b"other")
