"""A verdict program that returns anything but an ``int`` equal to SK_PASS or
SK_DROP, raises anything (``sys.exit()`` and a ``BaseException`` of its own
too), or writes a context field the engines read after it (``sk_redir``,
``flags``, ``len``, ``size`` ...; apply/cork take a u32 only), drops that
message, on real loopback sockets of every protocol, sending
and receiving: the send fails with EACCES, a received message is not
delivered, the run is counted in ``errors`` with a ``last_error`` naming what
the program did, the runtime logs one line, the value's own code never runs
(:data:`~tests.failclosed._support.TOUCHED`), and the connection, the runtime
and the other connections carry on."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator

import pytest

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import enable_both

from ._support import (
    BAD,
    WRITES_MSG,
    WRITES_SKB,
    Bad,
    check_failed_closed,
    frame,
    policy,
    read_exactly,
    read_to_eof,
    receive_datagrams,
)

pytestmark = pytest.mark.usefixtures("untouched")

Pair = tuple[SkStream, SkStream]


@pytest.fixture
async def two_pairs(skmsg_runtime: Runtime) -> AsyncIterator[tuple[Pair, Pair]]:
    """Two connections, each ``(client, server)``."""
    a, b = await tcp_stream_pair(), await tcp_stream_pair()
    try:
        yield a, b
    finally:
        await aclose_all((*a, *b))


def _eacces(exc: BaseException) -> None:
    assert isinstance(exc, PermissionError) and exc.errno == errno.EACCES, repr(exc)


# -- TCP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD + WRITES_MSG)
async def test_tcp_send_is_eacces_and_nothing_leaves(
    bad: Bad, tcp_stream_pair: Pair, sockmap: sk.SockMap, caplog: pytest.LogCaptureFixture
) -> None:
    client, server = tcp_stream_pair
    prog = sockmap.attach(policy(bad), sk.SK_MSG_VERDICT)
    sockmap.update(0, client)
    await client.send_all(b"ok-1 ")
    with pytest.raises(PermissionError) as info:
        await client.send_all(b"BAD-2 ")
    _eacces(info.value)
    await client.send_eof()
    assert await read_to_eof(server) == b"ok-1 "
    check_failed_closed(prog, bad, caplog, runs=2)


@pytest.mark.parametrize("bad", BAD + WRITES_SKB)
async def test_tcp_receive_drops_that_message_and_the_pumps_carry_on(
    bad: Bad, two_pairs: tuple[Pair, Pair], sockmap: sk.SockMap,
    caplog: pytest.LogCaptureFixture, skmsg_runtime: Runtime,
) -> None:
    (client, server), (other_client, other_server) = two_pairs
    sockmap.attach(sk.LengthPrefixParser(), sk.SK_SKB_STREAM_PARSER)
    prog = sockmap.attach(policy(bad), sk.SK_SKB_STREAM_VERDICT)
    sockmap.update(0, server)
    sockmap.update(1, other_server)
    await client.send_all(frame(b"ok-1") + frame(b"BAD-2") + frame(b"ok-3"))
    assert await read_exactly(server, 16) == frame(b"ok-1") + frame(b"ok-3")
    await other_client.send_all(frame(b"ok-b"))
    assert await read_exactly(other_server, 8) == frame(b"ok-b")
    await client.send_all(frame(b"ok-4"))  # the same connection, after the error
    assert await read_exactly(server, 8) == frame(b"ok-4")
    check_failed_closed(prog, bad, caplog, runs=5)
    assert skmsg_runtime.socket_errors == 0


# -- TLS (the kTLS-style record layer: programs see the plaintext) ------------------------


@pytest.mark.parametrize("bad", BAD + WRITES_MSG)
async def test_tls_send_is_eacces_and_no_record_leaves(
    bad: Bad, tcp_stream_pair: Pair, sockmap: sk.SockMap, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tcp_stream_pair
    prog = sockmap.attach(policy(bad), sk.SK_MSG_VERDICT)
    sockmap.update(0, a)  # the kernel's order: into the map, then TLS
    await enable_both(a, b)
    await a.send_all(b"ok-1 ")
    with pytest.raises(PermissionError) as info:
        await a.send_all(b"BAD-2 ")
    _eacces(info.value)
    await a.send_eof()  # close_notify
    assert await read_to_eof(b) == b"ok-1 "
    check_failed_closed(prog, bad, caplog, runs=2)


@pytest.mark.parametrize("bad", BAD + WRITES_SKB)
async def test_tls_receive_drops_that_record_and_the_stream_carries_on(
    bad: Bad, tcp_stream_pair: Pair, sockmap: sk.SockMap, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tcp_stream_pair
    prog = sockmap.attach(policy(bad), sk.SK_SKB_STREAM_VERDICT)
    sockmap.update(0, b)
    await enable_both(a, b)
    for payload in (b"ok-1 ", b"BAD-2 ", b"ok-3 "):  # one record each
        await a.send_all(payload)
    assert await read_exactly(b, 10) == b"ok-1 ok-3 "
    await a.send_all(b"ok-4 ")
    assert await read_exactly(b, 5) == b"ok-4 "
    check_failed_closed(prog, bad, caplog, runs=4)


# -- UDP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD + WRITES_MSG)
async def test_udp_send_is_eacces_and_that_datagram_never_leaves(
    bad: Bad, sockmap: sk.SockMap, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await skmsg_udp.udp_socket_pair()
    async with a, b:
        prog = sockmap.attach(policy(bad), sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        await a.send(b"ok-1")
        with pytest.raises(PermissionError) as info:
            await a.send(b"BAD-2")
        _eacces(info.value)
        await a.send(b"ok-3")  # every datagram has its own verdict
        assert await receive_datagrams(b, 2) == [b"ok-1", b"ok-3"]
        check_failed_closed(prog, bad, caplog, runs=3)


@pytest.mark.parametrize("bad", BAD + WRITES_SKB)
async def test_udp_receive_drops_that_datagram_and_the_pumps_carry_on(
    bad: Bad, sockmap: sk.SockMap, caplog: pytest.LogCaptureFixture, skmsg_runtime: Runtime
) -> None:
    a, b = await skmsg_udp.udp_socket_pair()
    c, d = await skmsg_udp.udp_socket_pair()
    async with a, b, c, d:
        prog = sockmap.attach(policy(bad), sk.SK_SKB_VERDICT)
        sockmap.update(0, b)
        sockmap.update(1, d)
        for payload in (b"ok-1", b"BAD-2", b"ok-3"):
            await a.send(payload)
        await c.send(b"ok-d")
        assert await receive_datagrams(b, 2) == [b"ok-1", b"ok-3"]
        assert await receive_datagrams(d, 1) == [b"ok-d"]
        check_failed_closed(prog, bad, caplog, runs=4)
        assert skmsg_runtime.socket_errors == 0


# -- a writable view kept past the run ---------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "tls", "udp"])
async def test_a_data_view_kept_and_written_after_the_run_changes_nothing_sent(
    proto: str, skmsg_runtime: Runtime
) -> None:
    """The program keeps ``msg.data`` (writable during its run) and redirects
    the message into another socket's receive queue, where it waits as views
    of the message's buffers; writing the kept view afterwards must not reach
    the bytes that socket then reads."""
    kept: list[memoryview] = []
    smap = sk.SockMap(2)

    def program(msg: sk.SkMsg) -> int:
        kept.append(msg.data)
        return sk.msg_redirect_map(msg, smap, 1, sk.BPF_F_INGRESS)

    smap.attach(program, sk.SK_MSG_VERDICT)
    if proto == "udp":
        a, b = await skmsg_udp.udp_socket_pair()
        c, d = await skmsg_udp.udp_socket_pair()
        async with a, b, c, d:
            smap.update(0, a)
            smap.update(1, d)
            await a.send(b"the original")
            kept[0][:] = b"X" * len(kept[0])
            assert await receive_datagrams(d, 1) == [b"the original"]
        smap.close()
        return
    (a, b), (c, d) = await tcp_stream_pair(), await tcp_stream_pair()
    try:
        smap.update(0, a)  # the kernel's order: into the map, then TLS
        smap.update(1, d)
        if proto == "tls":
            await enable_both(a, b)
        await a.send_all(b"the original")
        assert kept and not kept[0].readonly and len(kept[0]) == 12
        kept[0][:] = b"X" * 12
        assert await read_exactly(d, 12) == b"the original"
    finally:
        smap.close()
        await aclose_all((a, b, c, d))
