"""Reuseport selection with socket maps (reference §3 and case 57)."""

from __future__ import annotations

import errno
import socket

import skmsg_core as sk

from ._support import Net


def test_case_57_select_listener_established_and_other_group(net: Net) -> None:
    group = sk.ReuseportGroup(socket.AF_INET)
    other = sk.ReuseportGroup(socket.AF_INET)
    l1, l2, foreign = (
        net.sock(sk.TcpState.LISTEN),
        net.sock(sk.TcpState.LISTEN),
        net.sock(sk.TcpState.LISTEN),
    )
    group.add(l1)
    group.add(l2)
    other.add(foreign)
    m = sk.SockMap(max_entries=1)
    errs: list[int] = []

    def select(reuse: sk.ReuseportMd) -> int:
        err = sk.sk_select_reuseport(reuse, m, 0, 0)
        errs.append(err)
        return sk.SK_DROP if err else sk.SK_PASS

    prog = group.attach(select)
    m.update(0, l2)
    assert group.select(hash=0) is l2 and prog.passed == 1
    m.update(0, net.sock(sk.TcpState.ESTABLISHED))
    assert group.select(hash=0) is None and errs[-1] == -errno.EINVAL
    m.update(0, foreign)
    assert group.select(hash=0) is None and errs[-1] == -errno.EXDEV
    m.delete(0)
    assert group.select(hash=0) is None and errs[-1] == -errno.ENOENT
    assert (prog.dropped, group.refused, group.selected) == (3, 3, 1)


def test_pass_without_selection_falls_back_to_hash_and_raise_refuses(net: Net) -> None:
    group = sk.ReuseportGroup(socket.AF_INET)
    socks = [net.sock(sk.TcpState.LISTEN) for _ in range(3)]
    for s in socks:
        group.add(s)
    assert group.select(hash=4) is socks[1]  # no program: hash
    group.attach(lambda reuse: sk.SK_PASS)
    assert group.select(hash=5) is socks[2]
    prog = group.attach(lambda reuse: 1 // 0)
    assert group.select(hash=5) is None and isinstance(prog.last_error, ZeroDivisionError)
    group.remove(socks[0])
    assert socks[0].reuseport_group is None and len(group.socks) == 2


def test_selector_mismatches(net: Net) -> None:
    tcp_group = sk.ReuseportGroup(socket.AF_INET)
    udp_group = sk.ReuseportGroup(socket.AF_INET, protocol=socket.IPPROTO_UDP)
    v6_group = sk.ReuseportGroup(socket.AF_INET6)
    u = net.sock(kind="udp")
    udp_group.add(u)
    l6 = net.sock(sk.TcpState.LISTEN, family=socket.AF_INET6)
    v6_group.add(l6)
    m = sk.SockHash(max_entries=2)
    m.update("u", u)
    m.update("6", l6)
    md = sk.ReuseportMd(tcp_group, 1)
    assert sk.sk_select_reuseport(md, m, "u") == -errno.EPROTOTYPE
    assert sk.sk_select_reuseport(md, m, "6") == -errno.EAFNOSUPPORT
    assert sk.sk_select_reuseport(md, m, "6", flags=1) == -errno.EINVAL
