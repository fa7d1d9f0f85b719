"""Declared reads and message tails at the core's level.

A verdict that declares ``reads=N`` sees a message's first ``N`` bytes only;
a message of at least ``RX_TAIL_MIN_BYTES`` is verdicted as soon as those
bytes and its length are in, and ``rx_feed`` hands the rest of it to the I/O
layer as the last action's ``tail``. Here the I/O layer is simulated: the
tail's bytes are taken from the stream, never fed.
"""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skmsg_core as sk
from skmsg_core.testing import test_run

from ._support import MemProto, Net

TAIL_MIN = sk.RX_TAIL_MIN_BYTES


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def body(n: int, seed: int) -> bytes:
    return (seed.to_bytes(4, "big") + bytes(range(256)) * (n // 256 + 1))[:n]


# -- declaring reads -------------------------------------------------------------------------


def test_reads_is_declared_at_load_and_attach_and_shows_in_statistics() -> None:
    prog = sk.Program.load(lambda skb: sk.SK_PASS, sk.BpfProgType.SK_SKB, reads=4)
    assert prog.reads == 4 and prog.statistics().reads == 4
    m = sk.SockMap(1)
    assert m.attach(prog, sk.SK_SKB_STREAM_VERDICT).reads == 4  # kept
    assert m.attach(prog, sk.SK_SKB_STREAM_VERDICT, reads=None).reads is None
    loaded = m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT, reads=0)
    assert loaded.reads == 0


@pytest.mark.parametrize("bad", [-1, True, 1.5, "4", b"4"])
def test_a_bad_reads_is_einval_naming_it(bad: object) -> None:
    with pytest.raises(OSError, match="reads must be None") as info:
        sk.Program.load(lambda skb: sk.SK_PASS, sk.BpfProgType.SK_SKB, reads=bad)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL
    m = sk.SockMap(1)
    with pytest.raises(OSError, match="reads must be None"):
        m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT, reads=bad)  # type: ignore[arg-type]
    assert m.progs["stream_verdict"] is None  # nothing attached


def test_reads_on_an_sk_msg_program_is_einval() -> None:
    with pytest.raises(OSError, match="reads is for SK_SKB programs") as info:
        sk.Program.load(lambda msg: sk.SK_PASS, sk.BpfProgType.SK_MSG, reads=4)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError, match="reads what it pulls"):
        sk.SockMap(1).attach(lambda msg: sk.SK_PASS, sk.SK_MSG_VERDICT, reads=4)


# -- the data window -------------------------------------------------------------------------


def test_data_holds_the_declared_bytes_and_len_the_whole_message() -> None:
    seen: list[tuple[int, bytes]] = []

    def prog(skb: sk.SkBuff) -> int:
        seen.append((skb.len, bytes(skb.data)))
        return sk.SK_PASS

    loaded = sk.Program.load(prog, sk.BpfProgType.SK_SKB, reads=3)
    res = test_run(loaded, b"abcdefgh", sk.SK_SKB_STREAM_VERDICT)
    assert seen == [(8, b"abc")]
    assert res.data == b"abcdefgh"  # the message itself is whole
    test_run(loaded, b"ab", sk.SK_SKB_STREAM_VERDICT)  # shorter than reads: all of it
    assert seen[-1] == (2, b"ab")


def test_load_bytes_past_the_declared_bytes_is_efault_and_a_counted_error() -> None:
    got: list[object] = []

    def prog(skb: sk.SkBuff) -> int:
        got.append(skb.load_bytes(0, 4))
        got.append(skb.load_bytes(2, 4))
        return sk.SK_PASS

    loaded = sk.Program.load(prog, sk.BpfProgType.SK_SKB, reads=4)
    res = test_run(loaded, b"0123456789", sk.SK_SKB_STREAM_VERDICT)
    assert got == [b"0123", -errno.EFAULT]
    assert isinstance(res.error, sk.HelperError)
    assert "load_bytes(2, 4) reads past the first 4 bytes" in str(res.error)
    assert "reads=4" in str(res.error)
    assert loaded.statistics().errors == 1


def test_an_index_past_the_declared_bytes_is_a_reads_error_and_a_drop() -> None:
    loaded = sk.Program.load(
        lambda skb: sk.SK_PASS if skb.data[6] else sk.SK_DROP, sk.BpfProgType.SK_SKB, reads=4
    )
    res = test_run(loaded, b"0123456789", sk.SK_SKB_STREAM_VERDICT)
    assert res.verdict is sk.Verdict.DROP
    assert isinstance(res.error, sk.ReadsError) and isinstance(res.error, IndexError)
    assert "declared reads=4" in str(res.error)
    assert isinstance(res.error.__cause__, IndexError)
    st_ = loaded.statistics()
    assert st_.errors == 1 and st_.dropped == 1


def test_small_messages_keep_the_batch_and_see_the_declared_bytes(net: Net) -> None:
    seen: list[tuple[int, bytes]] = []

    def verdict(skb: sk.SkBuff) -> int:
        seen.append((skb.len, bytes(skb.data)))
        return sk.SK_PASS

    m = sk.SockMap(1)
    m.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    m.attach(verdict, sk.SK_SKB_STREAM_VERDICT, reads=6)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None
    wire = framed(b"hello world") + framed(b"x") + framed(body(1000, 1))
    actions = p.psock.rx_feed(wire)
    assert [(a.kind, a.msgs, a.tail) for a in actions] == [("pass", 3, 0)]
    assert b"".join(actions[0].bufs) == wire
    assert seen == [(15, wire[:6]), (5, framed(b"x")), (1004, framed(body(1000, 1))[:6])]


# -- tails ------------------------------------------------------------------------------------


def tail_rig(net: Net, reads: int | None, verdict_ret: int | None = None) -> tuple[
    sk.Sock, sk.Sock, list[tuple[int, bytes]]
]:
    """A socket framing with LengthPrefixParser(4) whose verdict redirects to a
    second socket (or returns ``verdict_ret``), recording (len, data)."""
    seen: list[tuple[int, bytes]] = []
    out = sk.SockMap(1)

    def verdict(skb: sk.SkBuff) -> int:
        seen.append((skb.len, bytes(skb.data)))
        if verdict_ret is not None:
            return verdict_ret
        return sk.sk_redirect_map(skb, out, 0, 0)

    m = sk.SockMap(1)
    m.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    m.attach(verdict, sk.SK_SKB_STREAM_VERDICT, reads=reads)
    src, dst = net.sock(), net.sock()
    m.update(0, src)
    out.update(0, dst)
    assert src.psock is not None and src.psock.strp is not None
    src.psock.strp.max_msg_size = 4 << 20
    return src, dst, seen


def test_a_large_message_is_verdicted_on_its_head_and_leaves_a_tail(net: Net) -> None:
    src, dst, seen = tail_rig(net, 4)
    psock = src.psock
    assert psock is not None
    big = framed(body(300_000, 7))
    actions = psock.rx_feed(framed(b"small") + big[:65536])
    assert [(a.kind, a.target, a.msgs, a.tail) for a in actions] == [
        ("redirect", dst, 1, 0),
        ("redirect", dst, 1, big.__len__() - 65536),
    ]
    assert b"".join(actions[1].bufs) == big[:65536]
    assert seen == [(9, framed(b"small")[:4]), (len(big), big[:4])]
    st_ = psock.statistics()
    assert st_.rx_msgs == 2 and st_.rx_redirected_bytes == 9 + len(big)
    assert psock.strp is not None and psock.strp.pending == 0
    # the tail is the I/O layer's; the next byte fed starts the next message
    actions = psock.rx_feed(framed(b"after"))
    assert [(a.kind, b"".join(a.bufs), a.tail) for a in actions] == [
        ("redirect", framed(b"after"), 0)
    ]
    assert psock.strp.statistics().msgs == 3


def test_a_program_that_reads_every_byte_holds_the_message_whole(net: Net) -> None:
    src, _, seen = tail_rig(net, None)
    psock = src.psock
    assert psock is not None
    big = framed(body(300_000, 7))
    assert psock.rx_feed(big[:65536]) == []
    assert psock.rx_feed(big[65536:200_000]) == []
    actions = psock.rx_feed(big[200_000:])
    assert [(a.kind, a.tail, b"".join(a.bufs)) for a in actions] == [("redirect", 0, big)]
    assert seen == [(len(big), big)]


def test_a_tail_waits_until_the_declared_bytes_are_in(net: Net) -> None:
    src, _, seen = tail_rig(net, 100_000)
    psock = src.psock
    assert psock is not None
    big = framed(body(300_000, 3))
    assert psock.rx_feed(big[:65536]) == []  # 65536 < 100,000 declared
    actions = psock.rx_feed(big[65536:131072])
    assert [a.tail for a in actions] == [len(big) - 131072]
    assert seen == [(len(big), big[:100_000])]


def test_below_the_threshold_no_tail(net: Net) -> None:
    src, _, seen = tail_rig(net, 4)
    psock = src.psock
    assert psock is not None
    msg = framed(body(TAIL_MIN - 5, 1))  # TAIL_MIN - 1 bytes
    assert psock.rx_feed(msg[:1000]) == []
    actions = psock.rx_feed(msg[1000:])
    assert [(a.tail, b"".join(a.bufs)) for a in actions] == [(0, msg)]
    assert seen == [(len(msg), msg[:4])]


def test_a_dropped_large_message_leaves_a_drop_tail(net: Net) -> None:
    src, _, _ = tail_rig(net, 4, verdict_ret=sk.SK_DROP)
    psock = src.psock
    assert psock is not None
    big = framed(body(200_000, 2))
    actions = psock.rx_feed(big[:10])
    assert [(a.kind, a.nbytes, a.tail) for a in actions] == [("drop", 10, len(big) - 10)]
    assert psock.statistics().rx_dropped_bytes == len(big)


def test_a_pass_of_a_large_message_leaves_a_pass_tail(net: Net) -> None:
    src, _, _ = tail_rig(net, 0, verdict_ret=sk.SK_PASS)
    psock = src.psock
    assert psock is not None
    big = framed(body(200_000, 2))
    actions = psock.rx_feed(big[:4])  # reads=0: the length alone decides
    assert [(a.kind, a.nbytes, a.tail) for a in actions] == [("pass", 4, len(big) - 4)]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    sizes = draw(
        st.lists(
            st.one_of(st.integers(0, 300), st.integers(TAIL_MIN - 8, 3 * TAIL_MIN)),
            min_size=1,
            max_size=8,
        )
    )
    msgs = [framed(body(n, i)) for i, n in enumerate(sizes)]
    total = sum(map(len, msgs))
    cuts = draw(st.lists(st.integers(1, total), max_size=12))
    return msgs, sorted(set(cuts))


@settings(max_examples=150, deadline=None)
@given(case=streams(), reads=st.sampled_from([0, 4, 8, 5000]), drop_odd=st.booleans())
def test_any_split_frames_every_message_and_each_tail_exactly(
    case: tuple[list[bytes], list[int]], reads: int, drop_odd: bool
) -> None:
    """Messages small and large, fed at arbitrary split points; after an action
    with a tail the simulated I/O layer takes exactly that many bytes from the
    stream. Every message is verdicted once with its whole length and its first
    ``reads`` bytes, and each destination gets exactly its messages, in order."""
    net = Net(MemProto())
    msgs, cuts = case
    seen: list[tuple[int, bytes]] = []
    out = sk.SockMap(1)

    def verdict(skb: sk.SkBuff) -> int:
        seen.append((skb.len, bytes(skb.data)))
        if drop_odd and int.from_bytes(skb.data[4:8] if reads >= 8 else b"", "big") % 2:
            return sk.SK_DROP
        return sk.sk_redirect_map(skb, out, 0, 0)

    m = sk.SockMap(1)
    m.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    m.attach(verdict, sk.SK_SKB_STREAM_VERDICT, reads=reads)
    src, dst = net.sock(), net.sock()
    m.update(0, src)
    out.update(0, dst)
    psock = src.psock
    assert psock is not None and psock.strp is not None
    psock.strp.max_msg_size = 4 << 20
    wire = b"".join(msgs)
    got: dict[str, bytearray] = {"redirect": bytearray(), "drop": bytearray()}
    pos = 0
    bounds = [*cuts, len(wire)]
    for bound in bounds:
        if bound <= pos:
            continue
        end = bound
        for action in psock.rx_feed(wire[pos:end]):
            got[action.kind] += b"".join(action.bufs)
            if action.tail:  # the I/O layer takes it from the stream, never feeds it
                got[action.kind] += wire[end : end + action.tail]
                end += action.tail
        pos = end
    expect_drop = [
        i
        for i, msg in enumerate(msgs)
        if drop_odd and reads >= 8 and int.from_bytes(msg[4:8], "big") % 2
    ]
    assert bytes(got["redirect"]) == b"".join(x for i, x in enumerate(msgs) if i not in expect_drop)
    assert bytes(got["drop"]) == b"".join(msgs[i] for i in expect_drop)
    assert seen == [(len(x), x[:reads]) for x in msgs]
    assert psock.strp.pending == 0
