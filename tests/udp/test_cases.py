"""Reference cases 45, 58, 65 and 66 (kernel-semantics.md section 7) for UDP."""

from __future__ import annotations

import errno
import socket as stdsocket
from collections.abc import Callable
from typing import Any

import pytest
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime

from ._support import TIMEOUT, receive_n, udp_pair

MAPS: list[Callable[[], sk.SockMapBase]] = [lambda: sk.SockMap(4), lambda: sk.SockHash(4)]
MAP_IDS = ["sockmap", "sockhash"]
FAMILIES = [(stdsocket.AF_INET, "127.0.0.1"), (stdsocket.AF_INET6, "::1")]
FAMILY_IDS = ["ipv4", "ipv6"]


def key(m: sk.SockMapBase, i: int) -> Any:
    return i if isinstance(m, sk.SockMap) else f"k{i}"


def errno_of(m: sk.SockMapBase) -> int:
    """The errno of a delete after close: SOCKMAP EINVAL, SOCKHASH ENOENT."""
    return errno.EINVAL if isinstance(m, sk.SockMap) else errno.ENOENT


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
@pytest.mark.parametrize(("family", "host"), FAMILIES, ids=FAMILY_IDS)
def test_case_45_udp_by_fd_bound_enters_unbound_is_refused(
    make: Callable[[], sk.SockMapBase], family: int, host: str
) -> None:
    """A fresh (unbound) UDP socket is refused EOPNOTSUPP, as Linux 6.18 does
    (``sk_hashed``; checked live by tests/conformance); bound and connected ones
    enter, and only the connected one is ESTABLISHED, a possible redirect target."""
    m = make()
    socks = [stdsocket.socket(family, stdsocket.SOCK_DGRAM) for _ in range(3)]
    try:
        with pytest.raises(OSError) as info:
            m.update(key(m, 0), socks[0].fileno())
        assert info.value.errno == errno.EOPNOTSUPP and len(m) == 0
        socks[1].bind((host, 0))
        socks[2].bind((host, 0))
        socks[2].connect(socks[1].getsockname())
        for i in (1, 2):
            m.update(key(m, i), socks[i].fileno())
        states = [m.get(key(m, i)).state for i in (1, 2)]  # type: ignore[union-attr]
        assert states == [sk.TcpState.CLOSE, sk.TcpState.ESTABLISHED]
        held = m.get(key(m, 2))
        assert held is not None and held.sk_prot is not None
        assert held.sk_prot.redirect_allowed(held)
        assert held.family == family and held.remote_addr == socks[1].getsockname()
        socks[0].connect(socks[1].getsockname())  # a connect binds it implicitly
        m.update(key(m, 0), socks[0].fileno())
        assert len(m) == 3
    finally:
        m.close()
        for s in socks:
            s.close()


def test_case_45_a_map_takes_the_fd_again_after_it_left() -> None:
    m = sk.SockMap(1)
    with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        m.update(0, s.fileno())
        first = m.lookup(0)
        m.delete(0)  # its last map: the adopted socket is let go ...
        m.update(0, s.fileno())  # ... and adopted again, the same kernel socket
        assert m.lookup(0) == first
        s.sendto(b"still mine", s.getsockname())  # the user's fd works as before
        assert s.recv(100) == b"still mine"
    m.close()


def test_an_fd_reused_by_another_socket_is_that_socket() -> None:
    m, other = sk.SockMap(1), sk.SockMap(1)
    s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    fd = s.fileno()
    m.update(0, fd)
    old = m.lookup(0)
    s.close()
    t = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    t.bind(("127.0.0.1", 0))
    try:
        assert t.fileno() == fd  # the lowest free fd: the same number
        other.update(0, fd)
        assert other.lookup(0) != old  # the new socket, not the closed one
        with pytest.raises(OSError) as info:
            m.lookup(0)  # the closed one left its map at the next look
        assert info.value.errno == errno.ENOENT
    finally:
        m.close()
        other.close()
        t.close()


@pytest.mark.parametrize(("family", "host"), FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("flags", [0, sk.BPF_F_INGRESS], ids=["egress", "ingress"])
async def test_case_58_skb_verdict_redirect_between_udp_pairs(
    rt: Runtime, family: int, host: str, flags: int
) -> None:
    """One byte from one connected pair to another: pass count 1, the byte at
    the expected peer (egress: the target's peer; ingress: the target)."""
    c0, p0 = await udp_pair(host)
    c1, p1 = await udp_pair(host)
    m = sk.SockMap(2)
    prog = m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, flags), sk.SK_SKB_VERDICT)
    m.update(0, p0)
    m.update(1, p1)
    await c1.send(b"a")
    expected = p0 if flags else c0
    assert await receive_n(expected, 1) == [b"a"]
    st = prog.statistics()
    assert (st.run_cnt, st.redirected, st.dropped) == (1, 1, 0)  # "pass count 1"
    for s in (c0, p0, c1, p1):
        await s.aclose()


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
def test_case_65_unconnected_stream_refused_datagram_accepted(
    make: Callable[[], sk.SockMapBase],
) -> None:
    """An unconnected stream socket is refused EOPNOTSUPP; an unconnected (but
    bound) datagram socket (UDP here; tests/unix for AF_UNIX) enters."""
    m = make()
    with (
        stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as stream,
        stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as dgram,
    ):
        dgram.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as info:
            m.update(key(m, 0), stream.fileno())
        assert info.value.errno == errno.EOPNOTSUPP
        m.update(key(m, 1), dgram.fileno())
        assert len(m) == 1
    m.close()


@pytest.mark.parametrize("by_fd", [False, True], ids=["object", "fd"])
async def test_case_66_one_udp_socket_in_many_entries_and_maps(by_fd: bool) -> None:
    """Many entries of one map, many maps, replacing itself: every BPF_ANY update
    succeeds, every delete succeeds; after close, deleting its key fails."""
    s = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    value: Any = s.fileno() if by_fd else s
    a, b, h = sk.SockMap(4), sk.SockMap(4), sk.SockHash(4)
    for i in range(3):
        a.update(i, value, sk.BPF_ANY)
    b.update(0, value, sk.BPF_ANY)
    h.update(b"x", value, sk.BPF_ANY)
    a.update(0, value, sk.BPF_ANY)  # replacing itself
    assert s.sk.psock is not None and s.sk.psock.statistics().links == 5
    for i in range(3):
        a.delete(i)
    b.delete(0)
    h.delete(b"x")
    assert s.sk.psock is None and not s.sk.dead
    a.update(0, value)
    h.update(b"x", value)
    await s.aclose()
    for m, k in ((a, 0), (h, b"x")):
        with pytest.raises(OSError) as info:
            m.delete(k)
        assert info.value.errno == errno_of(m)
    for m in (a, b, h):
        m.close()


async def test_case_66_adopted_udp_fd_closed_leaves_every_map() -> None:
    a, h = sk.SockMap(2), sk.SockHash(2)
    s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    a.update(0, s.fileno())
    a.update(1, s.fileno())
    h.update(b"s", s.fileno())
    s.close()
    with pytest.raises(OSError) as info:
        a.delete(0)
    assert info.value.errno == errno.EINVAL
    assert len(a) == 0 and len(h) == 0  # one socket: it left every map at once
    with pytest.raises(OSError) as info:
        h.delete(b"s")
    assert info.value.errno == errno.ENOENT
    a.close()
    h.close()


async def test_an_adopted_fd_in_a_map_with_a_verdict_is_served(rt: Runtime) -> None:
    """A UDP socket handed over as an fd alone runs the verdict like any other."""
    peer = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    user = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    user.bind(("127.0.0.1", 0))
    user.connect(peer.getsockname())
    await peer.connect(user.getsockname())
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_VERDICT)
    m.update(0, user.fileno())
    await peer.send(b"echo me")  # arrives at user's socket; redirected out of it
    with trio.fail_after(TIMEOUT):
        assert await peer.receive() == b"echo me"
    assert user.getblocking()
    m.close()
    user.close()
    await peer.aclose()


def test_a_failed_update_by_fd_holds_no_socket_for_long() -> None:
    """The update fails after adoption (bad flags): the adopted duplicate is let
    go at the next adoption, and the user's fd is untouched."""
    from skmsg_udp._socket import _adopted

    m = sk.SockMap(1)
    with (
        stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as s,
        stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as t,
    ):
        s.bind(("127.0.0.1", 0))
        t.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as info:
            m.update(0, s.fileno(), 7)
        assert info.value.errno == errno.EINVAL
        stale = _adopted.get(s.fileno())
        assert stale is not None and stale.sk.psock is None
        m.update(0, t.fileno())
        assert s.fileno() not in _adopted and stale.sk.dead
        assert t.fileno() in _adopted
        s.sendto(b"x", s.getsockname())  # still the user's, working socket
        assert s.recv(1) == b"x"
    m.close()
