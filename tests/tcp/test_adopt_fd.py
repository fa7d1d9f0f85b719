"""A map takes a TCP socket by a bare fd, established or listening, as the
kernel does; skmsg adopts it (serves it through a duplicate of the fd)."""

from __future__ import annotations

import errno
import socket

import pytest
import trio

import skmsg_core as sk
from skmsg_tcp import SkListener, SkStream
from tests.tls._ulp_helpers import read_exactly


def plain_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of plain stdlib TCP sockets, no skmsg object wrapping either."""
    lst = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(lst.getsockname())
    b, _ = lst.accept()
    lst.close()
    return a, b


async def test_an_established_fd_enters_a_map_and_its_program_runs(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    a, b = plain_pair()
    try:
        seen: list[bytes] = []
        sockmap.attach(lambda msg: seen.append(msg.tobytes()) or sk.SK_PASS, sk.SK_MSG_VERDICT)
        sockmap.update(0, a.fileno())
        adopted = sk.sock_from(a.fileno())
        assert sockmap.lookup(0) == adopted.cookie  # a lookup gives the cookie
        stream = adopted.owner
        assert isinstance(stream, SkStream)
        await stream.send_all(b"through the program")
        assert seen == [b"through the program"]
        b.settimeout(5)
        assert b.recv(100) == b"through the program"
        # an update by the same fd finds the same socket
        other = sk.SockMap(2)
        other.update(0, a.fileno())
        assert other.lookup(0) == adopted.cookie
        other.close()
    finally:
        sockmap.close()
        a.close()
        b.close()


async def test_an_fd_is_a_redirect_target(
    tcp_stream_pair: tuple[SkStream, SkStream], sockmap: sk.SockMap
) -> None:
    """The adopted socket takes bytes another socket's program redirects to it."""
    client, _server = tcp_stream_pair
    a, b = plain_pair()
    try:
        sockmap.update(1, a.fileno())
        sockmap.attach(lambda msg: sk.msg_redirect_map(msg, sockmap, 1, 0), sk.SK_MSG_VERDICT)
        sockmap.update(0, client)
        await client.send_all(b"redirected")
        b.settimeout(5)
        assert b.recv(100) == b"redirected"
    finally:
        sockmap.close()
        a.close()
        b.close()


async def test_a_listening_fd_enters_a_map(sockmap: sk.SockMap) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    try:
        sockmap.update(0, lst.fileno())
        s = sk.sock_from(lst.fileno())
        assert sockmap.lookup(0) == s.cookie
        assert s.state == sk.TcpState.LISTEN and isinstance(s.owner, SkListener)
        conn = socket.create_connection(lst.getsockname())
        with trio.fail_after(5):
            accepted = await s.owner.accept()
        await accepted.send_all(b"hi")
        conn.settimeout(5)
        assert conn.recv(10) == b"hi"
        conn.close()
        await accepted.aclose()
    finally:
        sockmap.close()
        lst.close()


def test_a_tcp_socket_never_connected_is_eopnotsupp_by_its_kernel_name(
    sockmap: sk.SockMap,
) -> None:
    s = socket.socket()
    try:
        with pytest.raises(OSError, match="EOPNOTSUPP") as info:
            sockmap.update(0, s.fileno())
        assert info.value.errno == errno.EOPNOTSUPP
        assert "ENOTSUP " not in str(info.value)
    finally:
        s.close()


async def test_closing_the_fd_takes_the_socket_out_of_the_map(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    a, b = plain_pair()
    fd = a.fileno()
    sockmap.update(0, fd)
    adopted = sk.sock_from(fd)
    a.close()  # the user's fd goes: the kernel would unhash the socket
    with pytest.raises(OSError):
        sockmap.update(1, fd)  # the next operation on it finds it gone
    assert 0 not in sockmap and adopted.dead
    b.close()
    sockmap.close()


async def test_the_stream_reads_through_its_receive_programs(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    a, b = plain_pair()
    try:
        sockmap.attach(
            lambda skb: sk.SK_DROP if b"drop" in bytes(skb.data) else sk.SK_PASS,
            sk.SK_SKB_VERDICT,
        )
        sockmap.update(0, a.fileno())
        stream = sk.sock_from(a.fileno()).owner
        b.sendall(b"drop me")
        await trio.sleep(0.05)
        b.sendall(b"keep me")
        with trio.fail_after(5):
            assert await read_exactly(stream, 7) == b"keep me"
    finally:
        sockmap.close()
        a.close()
        b.close()
