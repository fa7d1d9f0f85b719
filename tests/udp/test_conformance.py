"""check_protocol_plugin(kind="datagram"): skmsg_udp passes it, IPv4 and IPv6."""

from __future__ import annotations

import functools
import socket as stdsocket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import skmsg_core as sk
import skmsg_udp
from skmsg_core.testing import check_protocol_plugin

Pair = tuple[Any, Any]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_skmsg_udp_passes_the_datagram_conformance_check(host: str) -> None:
    await check_protocol_plugin(
        functools.partial(skmsg_udp.udp_socket_pair, host),
        proto=skmsg_udp.UDP_PROTO,
        kind="datagram",
    )


# -- broken datagram plugins fail it, naming the step ------------------------------------------


class _NoSeamProto(skmsg_udp.UdpProto):
    """A table that never installs the socket's operations (the seam does nothing)."""

    name = "udp"

    def psock_update_sk_prot(self, s: Any, psock: Any, restore: bool) -> int:
        return sk.SkProtoBase.psock_update_sk_prot(self, s, psock, restore)


class _MergingSocket(skmsg_udp.UdpSocket):
    """A socket whose receive queue glues datagrams together (stream semantics)."""

    def queue_datagram(self, data: bytes | memoryview, address: Any) -> bool:
        if self._rxq:
            old, _ = self._rxq.pop()
            self._rxq_bytes -= len(old)
            data = bytes(old) + bytes(data)
        return super().queue_datagram(data, address)


def _pairs(cls: type[skmsg_udp.UdpSocket], proto: Any) -> Callable[[], Awaitable[Pair]]:
    async def make() -> Pair:
        a = cls(stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM), proto=proto)
        b = cls(stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM), proto=proto)
        await a.bind(("127.0.0.1", 0))
        await b.bind(("127.0.0.1", 0))
        await a.connect(b.getsockname())
        await b.connect(a.getsockname())
        return a, b

    return make


async def test_a_plugin_whose_seam_installs_nothing_fails_the_seam_step() -> None:
    proto = _NoSeamProto()
    with pytest.raises(AssertionError, match="the seam: receive programs take over reading"):
        await check_protocol_plugin(_pairs(skmsg_udp.UdpSocket, proto), proto=proto,
                                    kind="datagram", timeout=0.5)


async def test_a_plugin_that_merges_datagrams_fails_the_boundaries_step() -> None:
    with pytest.raises(
        AssertionError, match="datagram boundaries in a map with an SK_SKB pass verdict"
    ):
        await check_protocol_plugin(
            _pairs(_MergingSocket, skmsg_udp.UDP_PROTO), proto=skmsg_udp.UDP_PROTO,
            kind="datagram", timeout=0.5,
        )
