"""A helper given what it can never take is the program's error, with a reason.

``msg_redirect_hash(msg, h, 2000)`` on a ``SockHash(key_size=4)`` finds
nothing, as the kernel's would; unlike an empty slot it is a mistake the
map's update would have refused with ``EINVAL``, so the run is counted as an
error whose reason names the helper, the map and the key.
"""

from __future__ import annotations

import errno

import pytest

import skmsg_core as sk

from ._support import MemProto, Net


@pytest.fixture
def world() -> tuple[Net, sk.Sock, sk.Sock, sk.SockHash]:
    net = Net(MemProto())
    c1, c2 = net.sock(), net.sock()
    h = sk.SockHash(max_entries=4, key_size=4)
    h.update(b"\0\0\x07\xd0", c2)
    return net, c1, c2, h


@pytest.mark.parametrize(
    ("key", "flags", "why"),
    [
        (2000, 0, "is not 4 bytes"),  # an int where the map takes 4-byte keys
        (b"\0\0", 0, "is not 4 bytes"),
        ([1], 0, "is not 4 bytes"),  # unhashable
        (b"\0\0\x07\xd0", 2, "flags 2 other than BPF_F_INGRESS"),
    ],
)
def test_msg_redirect_with_a_key_the_map_never_holds_is_a_counted_error(
    world: tuple[Net, sk.Sock, sk.Sock, sk.SockHash], key: object, flags: int, why: str
) -> None:
    net, c1, _, h = world
    txmsg = sk.SockMap(1)
    prog = txmsg.attach(lambda msg: sk.msg_redirect_hash(msg, h, key, flags), sk.SK_MSG_VERDICT)
    txmsg.update(0, c1)
    result = net.send(c1, b"hello")
    assert result.err == errno.EACCES  # SK_DROP: nothing found, as the kernel's
    stats = prog.statistics()
    assert (stats.dropped, stats.errors) == (1, 1)
    assert isinstance(prog.last_error, sk.HelperError)
    assert why in str(prog.last_error) and "msg_redirect_hash" in str(prog.last_error)


def test_an_empty_slot_is_a_plain_drop_not_an_error(
    world: tuple[Net, sk.Sock, sk.Sock, sk.SockHash],
) -> None:
    net, c1, _, h = world
    txmsg = sk.SockMap(1)
    prog = txmsg.attach(lambda msg: sk.msg_redirect_hash(msg, h, b"\0\0\0\1"), sk.SK_MSG_VERDICT)
    txmsg.update(0, c1)
    assert net.send(c1, b"hello").err == errno.EACCES
    assert (prog.statistics().dropped, prog.statistics().errors) == (1, 0)


def test_the_receive_side_counts_it_too(world: tuple[Net, sk.Sock, sk.Sock, sk.SockHash]) -> None:
    net, _, _, h = world
    rx = net.sock()
    m = sk.SockMap(1)
    prog = m.attach(lambda skb: sk.sk_redirect_hash(skb, h, 7), sk.SK_SKB_VERDICT)
    m.update(0, rx)
    assert rx.psock is not None
    actions = rx.psock.rx_feed(b"abc")
    assert [a.kind for a in actions] == ["drop"]
    assert prog.statistics().errors == 1 and isinstance(prog.last_error, sk.HelperError)
    assert "sk_redirect_hash" in str(prog.last_error)


def test_a_program_that_ignores_the_helper_still_has_the_error_counted(
    world: tuple[Net, sk.Sock, sk.Sock, sk.SockHash],
) -> None:
    net, c1, _, h = world
    txmsg = sk.SockMap(1)

    def ignore(msg: sk.SkMsg) -> int:
        sk.msg_redirect_hash(msg, h, 2000)
        return sk.SK_PASS

    prog = txmsg.attach(ignore, sk.SK_MSG_VERDICT)
    txmsg.update(0, c1)
    assert net.send(c1, b"hello").err == 0  # the program passed it: its decision
    assert prog.statistics().errors == 1
