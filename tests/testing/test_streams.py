"""skmsg_core.testing's streams and test server, on real loopback sockets."""

from __future__ import annotations

import errno

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import current_runtime, open_runtime
from skmsg_core.testing import ensure_runtime
from skmsg_tcp.testing import TestServer, clog_tcp_pair, open_test_server, tcp_stream_pair


async def receive_exactly(stream: skmsg_tcp.SkStream, n: int) -> bytes:
    buf = bytearray()
    with trio.fail_after(5):
        while len(buf) < n:
            chunk = await stream.receive_some(n - len(buf))
            assert chunk, f"EOF after {bytes(buf)!r}"
            buf += chunk
    return bytes(buf)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def parse_length_prefixed(skb: sk.SkBuff) -> int:
    if skb.len < 4:
        return 0
    return 4 + int.from_bytes(skb.data[:4], "big")


def drop_x(skb: sk.SkBuff) -> int:
    return sk.SK_DROP if bytes(skb.data[4:5]) == b"x" else sk.SK_PASS


def no_secrets(msg: sk.SkMsg) -> int:
    if sk.msg_pull_data(msg, 0, 6, 0) == 0 and bytes(msg.data) == b"SECRET":
        return sk.SK_DROP
    return sk.SK_PASS


# -- tcp_stream_pair ----------------------------------------------------------------------


async def test_tcp_stream_pair_is_one_real_loopback_connection() -> None:
    client, server = await tcp_stream_pair()
    async with client, server:
        assert isinstance(client, skmsg_tcp.SkStream)
        assert isinstance(server, skmsg_tcp.SkStream)
        assert client.sk.local_addr == server.sk.remote_addr
        assert client.sk.remote_addr == server.sk.local_addr
        assert client.sk.remote_addr is not None
        assert client.sk.remote_addr[0] == "127.0.0.1"
        for s in (client, server):
            assert s.sk.state == sk.TcpState.ESTABLISHED
            assert s.sk.psock is None
        await client.send_all(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        await server.send_all(b"pong")
        assert await receive_exactly(client, 4) == b"pong"
        await client.send_eof()
        assert await server.receive_some() == b""


async def test_tcp_stream_pair_made_under_a_runtime_runs_receive_programs() -> None:
    async with open_runtime():
        client, server = await tcp_stream_pair()
        async with client, server:
            smap = sk.SockMap(max_entries=1)
            smap.attach(parse_length_prefixed, sk.SK_SKB_STREAM_PARSER)
            smap.attach(drop_x, sk.SK_SKB_STREAM_VERDICT)
            smap.update(0, server)
            await client.send_all(frame(b"a") + frame(b"xx") + frame(b"b"))
            assert await receive_exactly(server, 10) == frame(b"a") + frame(b"b")
            stats = server.statistics().psock
            assert stats is not None
            assert (stats.rx_msgs, stats.rx_dropped_bytes) == (3, 6)
            smap.close()


async def test_clog_tcp_pair_blocks_send_all_both_ways_until_the_peer_reads() -> None:
    async with open_runtime():
        client, server = await tcp_stream_pair()
        async with client, server:
            smap = sk.SockMap(max_entries=2)
            smap.attach(parse_length_prefixed, sk.SK_SKB_STREAM_PARSER)
            smap.attach(drop_x, sk.SK_SKB_STREAM_VERDICT)
            smap.update(0, server)
            await clog_tcp_pair(client, server)
            psock = server.sk.psock
            assert psock is not None and psock.rcvbuf == 4096
            for sender in (client, server):
                with trio.move_on_after(0.2) as scope:
                    await sender.send_all(b"y" * 65536)
                assert scope.cancelled_caught
            smap.close()


# -- ensure_runtime -------------------------------------------------------------------------


async def test_ensure_runtime_reuses_the_current_one_or_opens_one() -> None:
    assert current_runtime() is None
    async with ensure_runtime() as opened:
        assert current_runtime() is opened
        async with ensure_runtime() as reused:
            assert reused is opened
    assert current_runtime() is None


async def test_ensure_runtime_lets_a_body_error_out_unwrapped() -> None:
    with pytest.raises(KeyError, match="body"):
        async with ensure_runtime():
            raise KeyError("body")


# -- open_test_server ---------------------------------------------------------------------


async def test_server_echoes_and_holds_each_accepted_stream_in_its_map() -> None:
    async with open_test_server() as server:
        assert isinstance(server, TestServer)
        assert server.host == "127.0.0.1"
        assert server.address == ("127.0.0.1", server.port) and server.port > 0
        client = await server.connect()
        peer = server.peer(client)
        assert server.streams == [peer]
        assert server.key_of(peer) == 0
        assert server.sockmap.get(0) is peer.sk
        assert client.sk.psock is None  # the client is in no map
        await client.send_all(b"ping")
        assert await receive_exactly(client, 4) == b"ping"
        second = await server.connect()
        assert server.key_of(server.peer(second)) == 1
        # EOF: the echo sends EOF back, returns, and its stream is closed: out of the map
        await client.send_eof()
        assert await client.receive_some() == b""
        await trio.testing.wait_all_tasks_blocked()
        assert peer.sk.dead
        assert list(server.sockmap) == [1]
        assert server.streams == [peer, server.peer(second)]
        with pytest.raises(KeyError):
            server.key_of(peer)
    # leaving the block closes clients, accepted streams and the server's own map
    assert client.sk.dead and second.sk.dead and server.peer(second).sk.dead
    assert server.sockmap.closed


async def test_peer_of_a_connection_the_server_never_saw_is_a_key_error() -> None:
    client, other = await tcp_stream_pair()
    async with client, other, open_test_server() as server:
        with pytest.raises(KeyError, match="has not accepted"):
            server.peer(client)


async def test_server_runs_its_msg_verdict_policy_on_every_echo() -> None:
    async with open_test_server(msg_verdict=no_secrets) as server:
        client = await server.connect()
        peer = server.peer(client)
        [prog_id] = server.sockmap.query(sk.SK_MSG_VERDICT)
        await client.send_all(b"hello")
        assert await receive_exactly(client, 5) == b"hello"
        await client.send_all(b"SECRET plans")
        await trio.testing.wait_all_tasks_blocked()
        stats = peer.statistics().psock
        assert stats is not None
        assert stats.tx_passed_bytes == 5
        assert stats.tx_dropped_bytes == 12
        assert prog_id > 0


async def test_server_frames_with_its_parser_and_drops_by_verdict() -> None:
    assert current_runtime() is None  # the server opens one for its receive programs
    async with open_test_server(
        stream_parser=parse_length_prefixed, stream_verdict=drop_x
    ) as server:
        assert current_runtime() is not None
        client = await server.connect()
        await client.send_all(frame(b"one") + frame(b"xdrop") + frame(b"two"))
        assert await receive_exactly(client, 14) == frame(b"one") + frame(b"two")
        psock = server.peer(client).sk.psock
        assert psock is not None and psock.rx_mode == "strp"
    assert current_runtime() is None


async def test_server_with_an_skb_verdict_alone() -> None:
    seen: list[bytes] = []

    def record(skb: sk.SkBuff) -> int:
        seen.append(bytes(skb.data))
        return sk.SK_PASS

    async with open_runtime() as rt, open_test_server(skb_verdict=record) as server:
        client = await server.connect()
        peer = server.peer(client)
        assert rt.pumping(peer)
        await client.send_all(b"abc")
        assert await receive_exactly(client, 3) == b"abc"
        assert b"".join(seen) == b"abc"


async def test_server_puts_streams_into_a_callers_sockhash_under_the_peer_address() -> None:
    hashed = sk.SockHash(max_entries=4)
    async with open_test_server(sockmap=hashed) as server:
        assert server.sockmap is hashed
        client = await server.connect()
        peer = server.peer(client)
        assert server.key_of(peer) == client.sk.local_addr
        assert hashed.get(client.sk.local_addr) is peer.sk
        await client.send_all(b"hashed")
        assert await receive_exactly(client, 6) == b"hashed"
    assert not hashed.closed  # the caller's map: the caller closes it
    assert len(hashed) == 0  # but every accepted stream closed, so left it
    hashed.close()


async def test_a_custom_handler_gets_each_stream_already_in_the_map() -> None:
    async def handler(stream: skmsg_tcp.SkStream) -> None:
        assert stream.sk.psock is not None
        await stream.send_all(f"links={len(stream.sk.psock.links)}".encode())

    async with open_test_server(handler) as server:
        client = await server.connect()
        assert await receive_exactly(client, 7) == b"links=1"
        assert await client.receive_some() == b""  # handler returned: stream closed


async def test_a_handler_failure_surfaces_from_the_block() -> None:
    async def boom(stream: skmsg_tcp.SkStream) -> None:
        raise ValueError("boom")

    with pytest.RaisesGroup(
        pytest.RaisesExc(ValueError, match="boom"), flatten_subgroups=True
    ):
        async with open_test_server(boom) as server:
            await server.connect()
            await trio.sleep_forever()  # cancelled by the handler's failure


async def test_a_full_map_surfaces_e2big() -> None:
    with pytest.RaisesGroup(
        pytest.RaisesExc(OSError, check=lambda e: e.errno == errno.E2BIG),
        flatten_subgroups=True,
    ):
        async with open_test_server(max_entries=1) as server:
            await server.connect()
            await server.connect()  # never enters the map; cancelled by the failure


async def test_a_body_error_comes_out_unwrapped() -> None:
    with pytest.raises(LookupError, match="from the body"):
        async with open_test_server():
            raise LookupError("from the body")
    async with open_runtime():
        with pytest.raises(LookupError, match="under a runtime"):
            async with open_test_server():
                raise LookupError("under a runtime")


async def test_cancelling_the_block_from_outside_stops_the_server_cleanly() -> None:
    with trio.CancelScope() as scope:
        async with open_test_server() as server:
            client = await server.connect()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert client.sk.dead and server.peer(client).sk.dead and server.sockmap.closed
    assert current_runtime() is None


async def test_a_program_the_map_refuses_fails_before_listening() -> None:
    async def not_a_program(msg: sk.SkMsg) -> int:
        return sk.SK_PASS

    with pytest.raises(OSError) as info:
        async with open_test_server(msg_verdict=not_a_program):
            raise AssertionError("the server must not start")
    assert info.value.errno == errno.EINVAL
