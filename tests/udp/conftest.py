"""Fixtures of the UDP tests: connected pairs of real loopback UDP sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import skmsg_udp
from skmsg_core.runtime import Runtime, open_runtime

from ._support import udp_pair


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    async with open_runtime() as runtime:
        yield runtime


@pytest.fixture
async def pair(rt: Runtime) -> AsyncIterator[tuple[skmsg_udp.UdpSocket, skmsg_udp.UdpSocket]]:
    a, b = await udp_pair()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()
