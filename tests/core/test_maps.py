"""SockMap and SockHash: updates, lookups, deletes, programs, and every errno.

Reference §1.3, §2 and §7 cases 44-50, 59, 60, 66 and 68, on in-test sockets
through the protocol seam; the fd cases use real OS file descriptors.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

import pytest

import skmsg_core as sk

from ._support import MemProto, Net

LISTEN = sk.TcpState.LISTEN
ESTABLISHED = sk.TcpState.ESTABLISHED
CLOSE = sk.TcpState.CLOSE

MAPS: list[Callable[[], sk.SockMapBase]] = [
    lambda: sk.SockMap(max_entries=4),
    lambda: sk.SockHash(max_entries=4),
]


def raises(err: int) -> pytest.RaisesExc[OSError]:
    return pytest.raises(OSError, check=lambda e: e.errno == err)


# -- case 44: bad values ---------------------------------------------------------------


@pytest.mark.parametrize("make", MAPS)
def test_case_44_value_minus_one_is_einval_and_int_max_is_ebadf(
    make: Callable[[], sk.SockMapBase],
) -> None:
    m = make()
    with raises(errno.EINVAL):
        m.update(0, -1)
    with raises(errno.EINVAL):
        m.update(0, 2**64 - 1)
    with raises(errno.EBADF):
        m.update(0, 2**31 - 1)


def test_fd_values_resolve_registered_sockets_and_refuse_others(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    # SOCK_SEQPACKET: a socket no skmsg protocol serves (nor the kernel's sockmap)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, open(os.devnull, "rb") as devnull:
        s = net.sock()
        s.register_fd(a.fileno())
        m.update(0, a.fileno())
        assert m.get(0) is s
        with raises(errno.EOPNOTSUPP) as info:
            m.update(1, b.fileno())  # a socket no skmsg protocol serves
        assert str(b.fileno()) in str(info.value)
        with raises(errno.ENOTSOCK):
            m.update(1, devnull.fileno())
        s.close()
        with raises(errno.EBADF):
            m.update(1, s)


def test_non_sockets_are_enotsock() -> None:
    m = sk.SockMap(max_entries=1)
    with raises(errno.ENOTSOCK) as info:
        m.update(0, "not a socket")
    assert "str" in str(info.value)


# -- cases 45, 46: which sockets may enter ----------------------------------------------


@pytest.mark.parametrize("make", MAPS)
def test_case_45_fresh_tcp_refused_fresh_udp_accepted(
    net: Net, make: Callable[[], sk.SockMapBase]
) -> None:
    m = make()
    with raises(errno.EOPNOTSUPP):
        m.update(0, net.sock(CLOSE))
    m.update(0, net.sock(CLOSE, kind="udp"))
    assert len(m) == 1


@pytest.mark.parametrize("state", [CLOSE, sk.TcpState.SYN_SENT, sk.TcpState.CLOSE_WAIT])
def test_case_46_tcp_must_be_established_or_listening(net: Net, state: int) -> None:
    m = sk.SockMap(max_entries=2)
    with raises(errno.EOPNOTSUPP) as info:
        m.update(0, net.sock(state))
    assert "sockmap" in str(info.value) and "[0]" in str(info.value)
    m.update(0, net.sock(LISTEN))
    m.update(1, net.sock(ESTABLISHED))


def test_protocol_without_seam_is_eopnotsupp() -> None:
    m = sk.SockMap(max_entries=1)
    with raises(errno.EOPNOTSUPP):
        m.update(0, sk.Sock(None, state=ESTABLISHED))


# -- cases 47, 48, 49 ---------------------------------------------------------------------


def test_case_47_delete_after_close(net: Net) -> None:
    smap, shash = sk.SockMap(max_entries=2), sk.SockHash(max_entries=2)
    s = net.sock(LISTEN)
    smap.update(0, s)
    smap.delete(0)
    smap.update(0, s)
    shash.update(b"k", s)
    s.close()
    with raises(errno.EINVAL):
        smap.delete(0)
    with raises(errno.ENOENT):
        shash.delete(b"k")
    assert len(smap) == len(shash) == 0 and s.psock is None


def test_case_48_lookup_returns_cookie(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    s = net.sock(LISTEN)
    m.update(1, s)
    assert m.lookup(1) == s.cookie > 0
    m.delete(1)
    with raises(errno.ENOENT):
        m.lookup(1)
    m4 = sk.SockHash(max_entries=2, value_size=4)
    m4.update("k", s)
    with raises(errno.ENOSPC):
        m4.lookup("k")


@pytest.mark.parametrize("make", MAPS)
def test_case_49_noexist_then_exist(net: Net, make: Callable[[], sk.SockMapBase]) -> None:
    m = make()
    s1, s2 = net.sock(LISTEN), net.sock(LISTEN)
    m.update(0, s1, sk.BPF_NOEXIST)
    with raises(errno.EEXIST):
        m.update(0, s2, sk.BPF_NOEXIST)
    m.update(0, s2, sk.BPF_EXIST)
    assert m.get(0) is s2
    assert s1.psock is None  # replaced: its only link went, so did its psock
    with raises(errno.ENOENT):
        m.update(1, s1, sk.BPF_EXIST)
    with raises(errno.EINVAL):
        m.update(1, s1, 3)
    assert m.statistics().errors == 3


def test_case_50_accepted_child_has_no_psock(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    listener = net.sock(LISTEN)
    m.update(0, listener)
    child = net.sock(ESTABLISHED)  # what accept() returns: a new sock, nothing inherited
    assert child.psock is None
    m.delete(0)
    m.update(0, child, sk.BPF_NOEXIST)
    m.update(1, net.sock(ESTABLISHED), sk.BPF_NOEXIST)


# -- sockmap / sockhash shapes ------------------------------------------------------------


def test_sockmap_index_rules(net: Net) -> None:
    m = sk.SockMap(max_entries=3)
    s = net.sock()
    with raises(errno.E2BIG):
        m.update(3, s)
    with raises(errno.EINVAL):
        m.delete(3)
    with raises(errno.EINVAL):
        m.delete(1)  # empty slot
    with raises(errno.ENOENT):
        m.lookup(7)
    assert [m.get_next_key(k) for k in (None, 0, 1, 99)] == [0, 1, 2, 0]
    with raises(errno.ENOENT):
        m.get_next_key(2)


def test_sockhash_capacity_and_keys(net: Net) -> None:
    h = sk.SockHash(max_entries=2)
    a, b, c = net.sock(), net.sock(), net.sock()
    h.update("a", a)
    h.update(("b", 1), b)
    with raises(errno.E2BIG):
        h.update("c", c)
    h.update("a", c)  # replacing an existing key is not growth
    with raises(errno.EINVAL):
        h.update(["unhashable"], a)
    assert h.get_next_key() == "a" and h.get_next_key("a") == ("b", 1)
    with raises(errno.ENOENT):
        h.get_next_key(("b", 1))
    assert list(h) == ["a", ("b", 1)] and "a" in h and ["x"] not in h


def test_sockhash_key_size(net: Net) -> None:
    with raises(errno.EINVAL):
        sk.SockHash(max_entries=1, key_size=0)
    with raises(errno.E2BIG):
        sk.SockHash(max_entries=1, key_size=513)
    h = sk.SockHash(max_entries=1, key_size=4)
    with raises(errno.EINVAL):
        h.update(b"abc", net.sock())
    h.update(b"abcd", net.sock())


@pytest.mark.parametrize(
    ("kwargs", "err"),
    [
        ({"max_entries": 0}, errno.EINVAL),
        ({"max_entries": 1, "value_size": 2}, errno.EINVAL),
        ({"max_entries": 1, "map_flags": 8}, errno.EINVAL),
    ],
)
def test_bad_map_creation(kwargs: dict[str, int], err: int) -> None:
    with raises(err):
        sk.SockMap(**kwargs)


def test_closed_map_refuses_and_unlinked_everything(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    s = net.sock()
    m.update(0, s)
    m.close()
    assert s.psock is None
    with raises(errno.EBADF):
        m.update(0, s)


# -- case 66, 68: one socket in many places ------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_case_66_one_socket_many_entries_and_maps(net: Net, proto: MemProto, kind: str) -> None:
    s = net.sock(ESTABLISHED, kind=kind)
    m1, m2 = sk.SockMap(max_entries=4), sk.SockHash(max_entries=4)
    for key in range(4):
        m1.update(key, s)
    m1.update(0, s)  # replacing itself
    m2.update("x", s)
    m2.update("y", s)
    assert s.psock is not None and len(s.psock.links) == 6
    assert proto.calls.count((s, False)) == 7 and (s, True) not in proto.calls
    m1.delete(0)
    m2.delete("x")
    assert len(s.psock.links) == 4
    s.close()
    assert proto.calls[-1] == (s, True)  # protocol restored when the last link went
    with raises(errno.EINVAL):
        m1.delete(1)
    with raises(errno.ENOENT):
        m2.delete("y")


def test_case_68_create_update_free(net: Net) -> None:
    m = sk.SockMap(max_entries=1, value_size=4)
    s = net.sock()
    m.update(0, s, sk.BPF_NOEXIST)
    m.close()
    s.close()


# -- psock creation rules -------------------------------------------------------------------


def test_ulp_rules(net: Net) -> None:
    m1, m2 = sk.SockMap(max_entries=1), sk.SockMap(max_entries=1)
    tls_first = net.sock()
    tls_first.ulp = "tls"
    with raises(errno.EINVAL) as info:
        m1.update(0, tls_first)
    assert "'tls'" in str(info.value)
    s = net.sock()
    m1.update(0, s)
    s.ulp = "tls"  # kernel order: map first, then TLS; a further map is refused
    with raises(errno.EBUSY):
        m2.update(0, s)


def test_sk_user_data_in_use_is_ebusy(net: Net) -> None:
    s = net.sock()
    s.user_data = object()
    with raises(errno.EBUSY):
        sk.SockMap(max_entries=1).update(0, s)


def test_protocol_refusing_the_psock_leaves_nothing_behind(net: Net) -> None:
    class Refusing(sk.SkProtoBase):
        name = "refusing"

        def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
            return 0 if restore else -errno.EOPNOTSUPP

    s = sk.Sock(Refusing(), state=ESTABLISHED)
    m = sk.SockMap(max_entries=1)
    with raises(errno.EOPNOTSUPP):
        m.update(0, s)
    assert s.psock is None and len(m) == 0


# -- programs: attach rules, cases 59 and 60 ------------------------------------------------


def pass_prog(ctx: object) -> int:
    return sk.SK_PASS


def test_case_59_stream_verdict_and_skb_verdict_exclude_each_other() -> None:
    for first, second in [
        (sk.SK_SKB_VERDICT, sk.SK_SKB_STREAM_VERDICT),
        (sk.SK_SKB_STREAM_VERDICT, sk.SK_SKB_VERDICT),
    ]:
        m = sk.SockMap(max_entries=1)
        m.attach(pass_prog, first)
        with raises(errno.EBUSY):
            m.attach(pass_prog, second)


@pytest.mark.parametrize(
    "attach_type",
    [sk.SK_MSG_VERDICT, sk.SK_SKB_STREAM_PARSER, sk.SK_SKB_STREAM_VERDICT, sk.SK_SKB_VERDICT],
)
def test_case_60_query(attach_type: sk.BpfAttachType) -> None:
    m = sk.SockMap(max_entries=1)
    assert m.query(attach_type) == []
    prog = m.attach(pass_prog, attach_type)
    assert m.query(attach_type) == [prog.id]
    with raises(errno.EINVAL):
        m.query(attach_type, query_flags=1)


def test_attach_replaces_detach_rules() -> None:
    m = sk.SockMap(max_entries=1)
    p1 = m.attach(pass_prog, sk.SK_MSG_VERDICT)
    p2 = m.attach(pass_prog, sk.SK_MSG_VERDICT)  # legacy attach replaces silently
    assert m.query(sk.SK_MSG_VERDICT) == [p2.id] and p1.id != p2.id
    with raises(errno.ENOENT):
        m.detach(p1, sk.SK_MSG_VERDICT)
    with raises(errno.EINVAL):
        m.detach(p2, sk.SK_SKB_STREAM_VERDICT)  # program of another type
    m.detach(p2, sk.SK_MSG_VERDICT)
    assert m.query(sk.SK_MSG_VERDICT) == []
    with raises(errno.EOPNOTSUPP):
        m.attach(pass_prog, sk.SK_REUSEPORT_SELECT)
    skb_prog = sk.Program.load(pass_prog, sk.BpfProgType.SK_SKB)
    with raises(errno.EINVAL):
        m.attach(skb_prog, sk.SK_MSG_VERDICT)


def test_link_attach_fails_on_taken_slot_and_updates() -> None:
    m = sk.SockMap(max_entries=1)
    link = m.link_create(pass_prog, sk.SK_SKB_STREAM_VERDICT)
    with raises(errno.EBUSY):
        m.link_create(pass_prog, sk.SK_SKB_STREAM_VERDICT)
    with raises(errno.EBUSY):
        m.attach(pass_prog, sk.SK_SKB_STREAM_VERDICT)
    new = sk.Program.load(pass_prog, sk.BpfProgType.SK_SKB)
    link.update(new)
    assert m.query(sk.SK_SKB_STREAM_VERDICT) == [new.id]
    with raises(errno.EINVAL):
        link.update(sk.Program.load(pass_prog, sk.BpfProgType.SK_MSG))
    link.detach()
    assert m.query(sk.SK_SKB_STREAM_VERDICT) == []
    with raises(errno.EINVAL):
        link.update(new)


def test_programs_are_copied_at_insert_only(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    early = net.sock()
    m.update(0, early)
    prog = m.attach(pass_prog, sk.SK_MSG_VERDICT)
    late = net.sock()
    m.update(1, late)
    assert early.psock is not None and early.psock.msg_parser is None
    assert late.psock is not None and late.psock.msg_parser is prog
    m.update(0, early)  # re-inserting picks it up
    assert early.psock.msg_parser is prog


def test_program_slot_conflicts_are_ebusy(net: Net) -> None:
    a, b = sk.SockMap(max_entries=2), sk.SockMap(max_entries=2)
    a.attach(pass_prog, sk.SK_MSG_VERDICT)
    b.attach(pass_prog, sk.SK_MSG_VERDICT)
    s = net.sock()
    a.update(0, s)
    with raises(errno.EBUSY):
        b.update(0, s)
    with raises(errno.EBUSY):
        a.update(1, s)  # the kernel compares slots, not programs: same map too
    plain = sk.SockMap(max_entries=1)
    plain.update(0, s)  # a map without programs is fine
    c = sk.SockMap(max_entries=1)
    c.attach(pass_prog, sk.SK_SKB_VERDICT)
    d = sk.SockMap(max_entries=1)
    d.attach(pass_prog, sk.SK_SKB_STREAM_VERDICT)
    c.update(0, s)
    with raises(errno.EBUSY):
        d.update(0, s)  # any verdict collides with any verdict


def test_unlink_from_a_map_with_rx_programs_stops_rx(net: Net) -> None:
    rx = sk.SockMap(max_entries=1)
    rx.attach(lambda skb: skb.len, sk.SK_SKB_STREAM_PARSER)
    rx.attach(pass_prog, sk.SK_SKB_STREAM_VERDICT)
    plain = sk.SockMap(max_entries=1)
    s = net.sock()
    rx.update(0, s)
    plain.update(0, s)
    assert s.psock is not None and s.psock.rx_mode == "strp"
    rx.delete(0)
    assert s.psock is not None and s.psock.rx_mode is None
    assert s.psock.stream_parser is None and s.psock.stream_verdict is None


def test_statistics(net: Net) -> None:
    m = sk.SockMap(max_entries=2, name="policed")
    prog = m.attach(pass_prog, sk.SK_MSG_VERDICT)
    m.update(0, net.sock())
    m.delete(0)
    with raises(errno.EINVAL):
        m.delete(0)
    st = m.statistics()
    assert (st.name, st.entries, st.updates, st.deletes, st.errors) == ("policed", 0, 1, 1, 1)
    assert st.progs["msg_parser"] == prog.id and st.progs["stream_verdict"] is None
