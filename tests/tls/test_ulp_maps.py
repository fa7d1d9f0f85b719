"""Map insertion vs. enabling TLS, in the kernel's order (reference §6)."""

from __future__ import annotations

import errno

import pytest
import trio

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_tcp import SkStream

from ._ulp_helpers import enable_both, make_keys

Pair = tuple[SkStream, SkStream]


async def test_insert_after_tls_is_einval(tcp_stream_pair: Pair, sockmap: sk.SockMap) -> None:
    a, b = tcp_stream_pair
    await enable_both(a, b)
    with pytest.raises(OSError, match="insert it before") as info:
        sockmap.update(0, a)
    assert info.value.errno == errno.EINVAL


async def test_a_mapped_tls_socket_cannot_enter_a_further_map(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    sockmap.update(0, a)  # the kernel's order: into the map, then TLS
    await enable_both(a, b)
    other = sk.SockMap(max_entries=2)
    try:
        with pytest.raises(OSError) as info:
            other.update(0, a)
        assert info.value.errno == errno.EBUSY
    finally:
        other.close()
    # it still works in the map it was in
    await a.send_all(b"still fine")
    assert await b.receive_some() == b"still fine"


async def test_tls_twice_is_eexist(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    await enable_both(a, b)
    keys = make_keys()
    with pytest.raises(FileExistsError):
        await tls.enable_tls(a, keys.a2b, keys.b2a)


async def test_mismatched_directions_are_refused(tcp_stream_pair: Pair) -> None:
    a, _ = tcp_stream_pair
    k13, k12 = make_keys(), make_keys(tls.TLS_1_2_VERSION)
    with pytest.raises(ValueError, match="must agree"):
        await tls.enable_tls(a, k13.a2b, k12.b2a)
    assert a.sk.ulp is None


async def test_leaving_the_map_keeps_tls(tcp_stream_pair: Pair, sockmap: sk.SockMap) -> None:
    a, b = tcp_stream_pair
    sockmap.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    sockmap.update(0, b)
    await enable_both(a, b)
    await a.send_all(b"in the map")
    assert await b.receive_some() == b"in the map"
    sockmap.delete(0)
    await a.send_all(b"out of it")
    assert await b.receive_some() == b"out of it"


async def test_start_tls_refuses_a_closed_or_half_closed_stream(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    keys = make_keys()
    await a.send_eof()
    with pytest.raises(OSError) as info:
        await tls.enable_tls(a, keys.a2b, keys.b2a)
    assert info.value.errno == errno.ENOTCONN
    await b.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await tls.enable_tls(b, keys.b2a, keys.a2b)


async def test_not_an_skstream_is_a_type_error() -> None:
    keys = make_keys()
    with pytest.raises(TypeError, match="SkStream"):
        await tls.enable_tls(object(), keys.a2b, keys.b2a)  # type: ignore[arg-type]
