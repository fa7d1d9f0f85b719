"""check_protocol_plugin: skmsg_unix passes it, the stream kind and the datagram kind,
on socketpairs and on connections through a listener (a path and an abstract name)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import skmsg_unix
from skmsg_core.testing import check_protocol_plugin
from skmsg_unix.testing import clog_unix_pair, unix_dgram_pair, unix_stream_pair

_names = itertools.count()


async def test_unix_streams_pass_the_stream_conformance_check() -> None:
    await check_protocol_plugin(
        unix_stream_pair, proto=skmsg_unix.UNIX_STREAM_PROTO, clog=clog_unix_pair
    )


async def test_unix_datagram_sockets_pass_the_datagram_conformance_check() -> None:
    await check_protocol_plugin(
        unix_dgram_pair, proto=skmsg_unix.UNIX_DGRAM_PROTO, kind="datagram"
    )


def _through_listener(
    where: Callable[[], Any],
) -> Callable[[], Awaitable[tuple[skmsg_unix.UnixStream, skmsg_unix.UnixStream]]]:
    async def make() -> tuple[skmsg_unix.UnixStream, skmsg_unix.UnixStream]:
        address = where()
        [listener] = await skmsg_unix.open_unix_listeners(address)
        try:
            client = await skmsg_unix.open_unix_stream(address)
            server = await listener.accept()
        finally:
            await listener.aclose()
        return client, server

    return make


@pytest.mark.parametrize("kind", ["path", "abstract"])
async def test_streams_through_a_listener_pass_too(kind: str, tmp_path: Path) -> None:
    def where() -> Any:
        n = next(_names)
        if kind == "path":
            return str(tmp_path / f"s{n}.sock")
        return skmsg_unix.abstract(f"skmsg-conf-{os.getpid()}-{n}")

    await check_protocol_plugin(_through_listener(where), proto=skmsg_unix.UNIX_STREAM_PROTO)


async def test_datagram_sockets_bound_to_paths_pass_too(tmp_path: Path) -> None:
    async def make() -> tuple[skmsg_unix.UnixDatagramSocket, skmsg_unix.UnixDatagramSocket]:
        n = next(_names)
        pa, pb = str(tmp_path / f"a{n}"), str(tmp_path / f"b{n}")
        a = await skmsg_unix.open_unix_datagram_socket(pa)
        b = await skmsg_unix.open_unix_datagram_socket(pb, pa)
        await a.connect(pb)
        return a, b

    await check_protocol_plugin(make, proto=skmsg_unix.UNIX_DGRAM_PROTO, kind="datagram")
