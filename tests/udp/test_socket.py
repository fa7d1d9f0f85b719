"""UdpSocket outside any map: a trio datagram socket on real loopback sockets."""

from __future__ import annotations

import errno
import socket as stdsocket

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_udp

from ._support import TIMEOUT, udp_pair


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_connected_pair_keeps_datagram_boundaries(host: str) -> None:
    a, b = await udp_pair(host)
    async with a, b:
        assert a.family == (stdsocket.AF_INET6 if host == "::1" else stdsocket.AF_INET)
        assert a.sk.state == b.sk.state == sk.TcpState.ESTABLISHED
        assert a.sk.remote_addr == b.getsockname()
        sent = [b"one", b"", b"three" * 100, bytes(range(256)) * 200]
        for d in sent:
            assert await a.send(d) == len(d)
        with trio.fail_after(TIMEOUT):
            got = [await b.receive() for _ in sent]
        assert got == sent
        st = a.statistics()
        assert (st.datagrams_sent, st.bytes_sent, st.psock) == (4, sum(map(len, sent)), None)
        assert b.statistics().datagrams_received == 4


async def test_unconnected_socket_sendto_and_recvfrom_carry_addresses() -> None:
    async with (
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as server,
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as client,
    ):
        assert server.sk.state == sk.TcpState.CLOSE  # unconnected, like the kernel's
        assert await client.sendto(b"ping", ("localhost", server.getsockname()[1])) == 4
        with trio.fail_after(TIMEOUT):
            data, addr = await server.recvfrom()
        assert (data, addr) == (b"ping", client.getsockname())
        await server.sendto(b"pong", addr)
        with trio.fail_after(TIMEOUT):
            assert await client.recvfrom() == (b"pong", server.getsockname())


async def test_receive_truncates_a_longer_datagram_and_drops_its_rest() -> None:
    a, b = await udp_pair()
    async with a, b:
        await a.send(b"abcdef")
        await a.send(b"next")
        with trio.fail_after(TIMEOUT):
            assert await b.receive(3) == b"abc"
            assert await b.receive() == b"next"


async def test_bad_calls_fail_clearly() -> None:
    async with await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as s:
        with pytest.raises(OSError, match="not connected") as info:
            await s.send(b"x")
        assert info.value.errno == errno.EDESTADDRREQ
        with pytest.raises(ValueError, match="max_bytes"):
            await s.receive(0)
        with pytest.raises(ValueError, match=r"\(host, port\) tuple"):
            await s.sendto(b"x", "127.0.0.1:53")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await s.receive()
            nursery.cancel_scope.cancel()
    with pytest.raises(trio.ClosedResourceError):
        await s.receive()
    with pytest.raises(trio.ClosedResourceError):
        await s.sendto(b"x", ("127.0.0.1", 9))
    await s.aclose()  # idempotent


def test_only_udp_sockets_are_taken() -> None:
    with (
        stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM) as tcp,
        pytest.raises(ValueError, match="UDP"),
    ):
        skmsg_udp.UdpSocket(tcp)
    with (
        stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM) as unix,
        pytest.raises(ValueError, match="AF_INET"),
    ):
        skmsg_udp.UdpSocket(unix)
    with pytest.raises(TypeError, match="socket object"):
        skmsg_udp.UdpSocket(3)  # type: ignore[arg-type]


async def test_a_trio_socket_is_taken_over() -> None:
    tsock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    await tsock.bind(("127.0.0.1", 0))
    s = skmsg_udp.UdpSocket(tsock)
    async with s:
        assert tsock.fileno() == -1  # detached: the UdpSocket owns the fd now
        assert s.getsockname()[0] == "127.0.0.1"
        assert sk.sock_from(s.fileno()) is s.sk


async def test_an_icmp_refusal_is_reported_once_by_the_next_receive() -> None:
    async with await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as gone:
        port = gone.getsockname()[1]
    async with await skmsg_udp.open_udp_socket(("127.0.0.1", 0), ("127.0.0.1", port)) as s:
        await s.send(b"anyone?")
        with trio.fail_after(TIMEOUT), pytest.raises(ConnectionRefusedError):
            await s.receive()
        with trio.move_on_after(0.1):
            await s.receive()  # reported once: now it just waits
            raise AssertionError("a datagram arrived from nowhere")


async def test_cookie_is_the_kernels_and_the_fd_resolves() -> None:
    a, b = await udp_pair()
    async with a, b:
        raw = a.getsockopt(stdsocket.SOL_SOCKET, 57, 8)
        assert isinstance(raw, bytes)
        assert a.sk.cookie == int.from_bytes(raw, "little")
        assert sk.sock_from(a.fileno()) is a.sk
        assert a.sk.owner is a and "udp" in repr(a)


async def test_connect_nowait_retargets_a_socket_in_a_map(skmsg_runtime: object) -> None:
    """Reconnecting moves the socket to a new peer at once: the old peer's
    datagrams no longer reach it, the new one's do, and it stays in its map."""
    async with (
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as sock,
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as old,
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as new,
    ):
        m = sk.SockMap(1)
        m.update(0, sock)
        sock.connect_nowait(old.getsockname())
        assert sock.sk.remote_addr == old.getsockname()
        sock.connect_nowait(new.getsockname())
        assert sock.sk.remote_addr == new.getsockname()
        assert sock.sk.state == sk.TcpState.ESTABLISHED and m.lookup(0) is not None
        await old.sendto(b"from old", sock.getsockname())
        await new.sendto(b"from new", sock.getsockname())
        with trio.fail_after(TIMEOUT):
            assert await sock.receive() == b"from new"
        await sock.send(b"to new")
        with trio.fail_after(TIMEOUT):
            assert await new.receive() == b"to new"
        with pytest.raises(ValueError, match="numeric IP address of the socket's family, "
                                             "not 'localhost'"):
            sock.connect_nowait(("localhost", 1))
        with pytest.raises(ValueError, match="not '::1'"):
            sock.connect_nowait(("::1", 1))
        with pytest.raises(ValueError, match="tuple"):
            sock.connect_nowait("127.0.0.1:1")
        where = new.getsockname()
        assert sock.sk.remote_addr == where  # a refused call changed nothing
    with pytest.raises(trio.ClosedResourceError):
        sock.connect_nowait(where)


async def test_recvfrom_nowait_takes_what_is_queued_and_never_waits() -> None:
    async with (
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as server,
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as client,
    ):
        assert server.recvfrom_nowait() is None  # nothing there: no wait, no error
        await client.sendto(b"first", server.getsockname())
        await client.sendto(b"second", server.getsockname())
        with trio.fail_after(TIMEOUT):
            await trio.lowlevel.wait_readable(server)
        assert server.recvfrom_nowait(3) == (b"fir", client.getsockname())  # rest discarded
        assert server.recvfrom_nowait() == (b"second", client.getsockname())
        assert server.recvfrom_nowait() is None
        assert server.statistics().datagrams_received == 2
        with pytest.raises(ValueError, match="max_bytes must be >= 1"):
            server.recvfrom_nowait(0)
    with pytest.raises(trio.ClosedResourceError):
        server.recvfrom_nowait()


async def test_recvfrom_nowait_in_a_map_takes_only_what_the_verdict_passed(
    skmsg_runtime: object,
) -> None:
    async with (
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as server,
        await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) as client,
    ):
        m = sk.SockMap(1)
        m.attach(lambda skb: sk.SK_DROP if bytes(skb.data) == b"no" else sk.SK_PASS,
                 sk.SK_SKB_VERDICT)
        m.update(0, server)
        for data in (b"no", b"yes"):
            await client.sendto(data, server.getsockname())
        with trio.fail_after(TIMEOUT):
            while (got := server.recvfrom_nowait()) is None:
                await trio.testing.wait_all_tasks_blocked()  # the pump runs the verdict
        assert got == (b"yes", client.getsockname())
        assert server.recvfrom_nowait() is None
        m.close()
