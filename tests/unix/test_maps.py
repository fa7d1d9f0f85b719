"""Unix sockets in maps: which enter (the kernel's rules, checked live by
tests/conformance), by object and by a bare fd, and how they leave."""

from __future__ import annotations

import errno
import os
import socket as stdsocket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import skmsg_core as sk
import skmsg_unix
from skmsg_core.runtime import Runtime

from ._support import TIMEOUT, aclose_all, receive_exactly

MAPS: list[Callable[[], sk.SockMapBase]] = [lambda: sk.SockMap(4), lambda: sk.SockHash(4)]
MAP_IDS = ["sockmap", "sockhash"]
SO_COOKIE = getattr(stdsocket, "SO_COOKIE", 57)


def key(m: sk.SockMapBase, i: int) -> Any:
    return i if isinstance(m, sk.SockMap) else f"k{i}"


def os_cookie(s: stdsocket.socket) -> int:
    return int(struct.unpack("=Q", s.getsockopt(stdsocket.SOL_SOCKET, SO_COOKIE, 8))[0])


def refused(m: sk.SockMapBase, i: int, value: object, err: int, match: str | None = None) -> None:
    with pytest.raises(OSError, match=match) as info:
        m.update(key(m, i), value)
    assert info.value.errno == err, info.value
    assert key(m, i) not in m


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_connected_streams_and_any_datagram_socket_enter(
    make: Callable[[], sk.SockMapBase], tmp_path: Path
) -> None:
    m = make()
    a, b = await skmsg_unix.unix_stream_pair()
    d1, d2 = await skmsg_unix.unix_dgram_pair()
    lone = await skmsg_unix.open_unix_datagram_socket()  # unbound, unconnected
    bound = await skmsg_unix.open_unix_datagram_socket(str(tmp_path / "d.sock"))
    for i, s in enumerate((a, d1, lone, bound)):
        m.update(key(m, i), s)
        assert m.lookup(key(m, i)) == s.sk.cookie == os_cookie(s._raw)
    assert [m.get(key(m, i)).state for i in range(4)] == [  # type: ignore[union-attr]
        sk.TcpState.ESTABLISHED,
        sk.TcpState.ESTABLISHED,
        sk.TcpState.CLOSE,
        sk.TcpState.CLOSE,
    ]
    assert a.sk.sk_prot is skmsg_unix.UNIX_STREAM_PROTO
    assert d1.sk.sk_prot is skmsg_unix.UNIX_DGRAM_PROTO
    m.close()
    await aclose_all(a, b, d1, d2, lone, bound)


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_a_stream_that_is_not_connected_is_refused_eopnotsupp(
    make: Callable[[], sk.SockMapBase], tmp_path: Path
) -> None:
    """Unconnected, bound or listening, by fd or as a listener object: EOPNOTSUPP,
    as ``sock_map_sk_state_allowed`` refuses a Unix stream not ESTABLISHED."""
    m = make()
    [listener] = await skmsg_unix.open_unix_listeners(str(tmp_path / "l.sock"))
    with (
        stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as fresh,
        stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as bound,
    ):
        bound.bind(str(tmp_path / "b.sock"))
        refused(m, 0, fresh.fileno(), errno.EOPNOTSUPP, "unix-stream socket")
        refused(m, 1, bound.fileno(), errno.EOPNOTSUPP, "b.sock")
        refused(m, 2, listener, errno.EOPNOTSUPP, "l.sock")
        refused(m, 3, listener.fileno(), errno.EOPNOTSUPP)
    m.close()
    await listener.aclose()


async def test_seqpacket_has_no_sockmap_support() -> None:
    m = sk.SockMap(1)
    a, b = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_SEQPACKET)
    with a, b:
        refused(m, 0, a.fileno(), errno.EOPNOTSUPP, "no skmsg protocol serves")
    m.close()


async def test_a_stream_parser_is_refused_eopnotsupp(rt: Runtime) -> None:
    """The kernel runs a stream parser on TCP only: a Unix socket in a map with
    a parser and a verdict is refused, and nothing changed."""
    m = sk.SockMap(2)
    m.attach(lambda skb: skb.len, sk.SK_SKB_STREAM_PARSER)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    a, b = await skmsg_unix.unix_stream_pair()
    d1, d2 = await skmsg_unix.unix_dgram_pair()
    refused(m, 0, a, errno.EOPNOTSUPP, "stream parser")
    refused(m, 1, d1, errno.EOPNOTSUPP, "stream parser")
    assert a.sk.psock is None and d1.sk.psock is None
    await a.send_all(b"plain")  # nothing installed: plain I/O
    assert await receive_exactly(b, 5) == b"plain"
    m.close()
    await aclose_all(a, b, d1, d2)


async def test_receive_programs_need_a_runtime() -> None:
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
    a, b = await skmsg_unix.unix_dgram_pair()
    refused(m, 0, b, errno.EOPNOTSUPP, "runtime")
    m.close()
    await aclose_all(a, b)


async def test_closing_leaves_every_map_and_no_map_takes_it_again() -> None:
    a, b = await skmsg_unix.unix_stream_pair()
    m, h = sk.SockMap(2), sk.SockHash(2)
    m.update(0, a)
    m.update(1, b)
    h.update(b"a", a)
    await a.aclose()
    assert 0 not in m and b"a" not in h and 1 in m
    refused(m, 0, a, errno.EBADF, "closed")
    m.close()
    h.close()
    await b.aclose()


async def test_a_stream_whose_peer_closed_stays_established(rt: Runtime) -> None:
    """As in the kernel: a Unix stream keeps ESTABLISHED after its peer closed,
    so it enters maps; its reader sees EOF."""
    a, b = await skmsg_unix.unix_stream_pair()
    await a.aclose()
    m = sk.SockMap(1)
    m.update(0, b)
    assert b.sk.state == sk.TcpState.ESTABLISHED
    with trio.fail_after(TIMEOUT):
        assert await b.receive_some() == b""
    m.close()
    await b.aclose()


# -- by a bare fd (skmsg_sock_from_fd) ---------------------------------------------------------


@pytest.mark.parametrize(
    "stype", [stdsocket.SOCK_STREAM, stdsocket.SOCK_DGRAM], ids=["stream", "dgram"]
)
async def test_a_socket_nobody_wrapped_enters_by_its_fd(rt: Runtime, stype: int) -> None:
    """The kernel takes a Unix socket by fd; so does the plugin, through a
    duplicate, leaving the user's fd (and its blocking mode) as it was. Its
    verdict runs; the wrapper (``sk.owner``) reads what it passed."""
    user, peer = stdsocket.socketpair(stdsocket.AF_UNIX, stype)
    with user, peer:
        m = sk.SockMap(1)
        m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
        m.update(0, user.fileno())
        held = m.get(0)
        assert held is not None and held.cookie == os_cookie(user)
        assert held.fileno == user.fileno() and sk.sock_from(user.fileno()) is held
        peer.send(b"through the verdict")
        owner = held.owner
        with trio.fail_after(TIMEOUT):
            got = await (owner.receive_some() if stype == stdsocket.SOCK_STREAM
                         else owner.receive())
        assert got == b"through the verdict"
        assert user.getblocking()
        m.close()
        assert held.dead  # it left its last map: the duplicate is let go
        peer.send(b"mine again")  # the user's fd works as before
        assert user.recv(100) == b"mine again"


async def test_an_adopted_fd_closed_by_the_user_leaves_every_map() -> None:
    user, peer = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    m, h = sk.SockMap(2), sk.SockHash(2)
    m.update(0, user.fileno())
    h.update(b"u", user.fileno())
    user.close()
    with pytest.raises(OSError) as info:
        m.delete(0)  # the kernel would have unhashed it at close; here, at the next look
    assert info.value.errno == errno.EINVAL
    assert len(m) == 0 and len(h) == 0
    peer.settimeout(TIMEOUT)
    assert peer.recv(10) == b""  # nothing holds the socket any more: the peer sees EOF
    peer.close()
    m.close()
    h.close()


async def test_an_fd_of_a_wrapped_socket_is_that_socket() -> None:
    a, b = await skmsg_unix.unix_stream_pair()
    m = sk.SockMap(1)
    m.update(0, a.fileno())
    assert m.get(0) is a.sk
    m.close()
    await aclose_all(a, b)


def test_a_failed_update_by_fd_holds_no_socket_for_long() -> None:
    from skmsg_unix._util import adopted

    m = sk.SockMap(1)
    s, peer = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    t, tpeer = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_DGRAM)
    with s, peer, t, tpeer:
        with pytest.raises(OSError) as info:
            m.update(0, s.fileno(), 7)
        assert info.value.errno == errno.EINVAL
        stale = adopted.get(s.fileno())
        assert stale is not None and stale.sk.psock is None
        m.update(0, t.fileno())
        assert s.fileno() not in adopted and stale.sk.dead
        peer.send(b"x")
        assert s.recv(1) == b"x"  # still the user's, working socket
    m.close()


# -- the context a program sees -------------------------------------------------------------


async def test_programs_see_af_unix_and_no_ports(rt: Runtime, tmp_path: Path) -> None:
    seen: list[tuple[Any, ...]] = []

    def verdict(skb: sk.SkBuff) -> int:
        seen.append((skb.family, skb.local_port, skb.remote_port, skb.local_ip4, skb.remote_ip6))
        return sk.SK_PASS

    path = str(tmp_path / "srv.sock")
    [listener] = await skmsg_unix.open_unix_listeners(path)
    client = await skmsg_unix.open_unix_stream(path)
    server = await listener.accept()
    m = sk.SockMap(1)
    m.attach(verdict, sk.SK_SKB_STREAM_VERDICT)
    m.update(0, server)
    assert server.sk.local_addr == path and server.sk.describe().endswith(path)
    await client.send_all(b"x")
    assert await receive_exactly(server, 1) == b"x"
    assert seen == [(stdsocket.AF_UNIX, 0, 0, None, None)]
    m.close()
    await aclose_all(client, server, listener)
    assert not os.path.exists(path)
