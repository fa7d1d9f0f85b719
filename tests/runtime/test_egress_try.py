"""``egress_try``: one message out of a target now, or dropped and counted; never a wait."""

from __future__ import annotations

import os
import socket as stdsocket

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tcp
import skmsg_udp
from skmsg_core.runtime import egress_try, open_runtime
from skmsg_tcp.testing import clog_tcp_pair, tcp_stream_pair

TIMEOUT = 10.0


async def test_a_datagram_target_sends_one_datagram() -> None:
    async with open_runtime():
        a, b = await skmsg_udp.udp_socket_pair()
        m = sk.SockMap(1)
        m.update(0, a)
        assert await egress_try(a.sk, memoryview(b"one"))
        assert await egress_try(a.sk, memoryview(b"two"))
        with trio.fail_after(TIMEOUT):
            assert [await b.receive(), await b.receive()] == [b"one", b"two"]
        m.close()
        await a.aclose()
        await b.aclose()


async def test_a_writable_stream_target_writes_in_order() -> None:
    async with open_runtime():
        a, b = await tcp_stream_pair()
        m = sk.SockMap(1)
        m.update(0, a)
        assert await egress_try(a.sk, memoryview(b"hello "))
        await a.send_all(b"and ")  # its own writes interleave in order
        assert await egress_try(a.sk, memoryview(b"world"))
        got = b""
        with trio.fail_after(TIMEOUT):
            while len(got) < 15:
                got += await b.receive_some()
        assert got == b"hello and world"
        m.close()
        await a.aclose()
        await b.aclose()


async def test_a_stream_target_that_cannot_take_bytes_now_drops_and_counts() -> None:
    async with open_runtime():
        a, b = await tcp_stream_pair()
        m = sk.SockMap(1)
        m.update(0, a)
        await clog_tcp_pair(a, b)
        with trio.fail_after(TIMEOUT):  # never waits for the clogged socket
            assert not await egress_try(a.sk, memoryview(b"x" * 100))
        assert a.sk.drops == 1
        m.close()
        await a.aclose()
        await b.aclose()


async def test_a_target_without_a_psock_or_closed_drops_and_counts() -> None:
    async with open_runtime():
        a, b = await tcp_stream_pair()
        assert not await egress_try(a.sk, memoryview(b"x"))  # in no map: no psock
        assert a.sk.drops == 1
        await a.aclose()
        assert not await egress_try(a.sk, memoryview(b"x"))
        assert a.sk.drops == 2
        await b.aclose()


class _Broken(skmsg_tcp.SkStream):
    """A stream whose egress raises what no transport raises (a plugin's bug)."""

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        raise RuntimeError("plugin bug")


async def test_what_the_target_raises_is_its_failure_counted_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_runtime() as rt:
        a, b = await tcp_stream_pair()
        dup = stdsocket.socket(fileno=os.dup(b.fileno()))
        broken = _Broken(trio.socket.from_stdlib_socket(dup))
        m = sk.SockMap(1)
        m.update(0, broken)
        assert not await egress_try(broken.sk, memoryview(b"x"))
        assert rt.redirect_errors == 1
        assert "plugin bug" in caplog.text
        m.close()
        for s in (a, b, broken):
            await s.aclose()


async def test_a_stream_target_on_an_fd_past_select_s_limit() -> None:
    """The writability check works for any fd number (``select`` stops at 1024)."""
    async with open_runtime():
        a, b = await tcp_stream_pair()
        high = os.dup2(a.fileno(), 1500)
        sock = stdsocket.socket(fileno=high)
        stream = skmsg_tcp.SkStream(trio.socket.from_stdlib_socket(sock))
        m = sk.SockMap(1)
        m.update(0, stream)
        assert stream.fileno() == 1500
        assert await egress_try(stream.sk, memoryview(b"high"))
        with trio.fail_after(TIMEOUT):
            assert await b.receive_some() == b"high"
        m.close()
        for s in (stream, a, b):
            await s.aclose()
