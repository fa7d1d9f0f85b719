"""The psock's receive side: strparser and verdict modes, redirects, the ingress queue.

Reference §4.2, §4.3, §5 and §7 cases 35, 36, 52, 54, 56, 62, 63 at the core's
level: bytes fed as the transport would read them, actions checked exactly.
"""

from __future__ import annotations

import errno
import itertools

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skmsg_core as sk
from skmsg_core._psock import SkPsock, _RxBatch

from ._support import MemProto, Net


def rx_map(
    parser: object | None, verdict: object, *, attach: sk.BpfAttachType = sk.SK_SKB_STREAM_VERDICT
) -> sk.SockMap:
    m = sk.SockMap(max_entries=4)
    if parser is not None:
        m.attach(parser, sk.SK_SKB_STREAM_PARSER)  # type: ignore[arg-type]
    m.attach(verdict, attach)  # type: ignore[arg-type]
    return m


def flat(actions: list[sk.RxAction]) -> list[tuple[str, bytes]]:
    return [(a.kind, b"".join(a.bufs)) for a in actions]


def test_case_35_parser_512_two_256_byte_sends(net: Net) -> None:
    m = rx_map(lambda skb: 512, lambda skb: sk.SK_PASS)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None and p.psock.rx_mode == "strp"
    assert p.psock.rx_feed(bytes(256)) == []
    assert flat(p.psock.rx_feed(bytes(256))) == [("pass", bytes(512))]


def test_case_36_parser_10_one_20_byte_send_is_exactly_two_messages(net: Net) -> None:
    verdicts: list[int] = []

    def verdict(skb: sk.SkBuff) -> int:
        verdicts.append(skb.len)
        return sk.SK_PASS

    m = rx_map(lambda skb: 10, verdict)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None
    actions = p.psock.rx_feed(bytes(range(20)))
    assert verdicts == [10, 10]
    # consecutive passes coalesce into one action, one write for the batch
    assert len(actions) == 1 and actions[0].msgs == 2 and actions[0].nbytes == 20


def test_case_52_skb_redirect_to_connected(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    m.attach(lambda skb: skb.len, sk.SK_SKB_STREAM_PARSER)
    prog = m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT)
    p0, p1 = net.sock(), net.sock()
    m.update(0, p0)
    m.update(1, p1)
    assert p1.psock is not None
    [action] = p1.psock.rx_feed(b"a")
    assert (action.kind, action.target, action.ingress, action.nbytes) == ("redirect", p0, False, 1)
    assert prog.redirected == 1


def test_case_54_skb_redirect_to_listener_drops(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    m.attach(lambda skb: skb.len, sk.SK_SKB_STREAM_PARSER)
    prog = m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT)
    m.update(0, net.sock(sk.TcpState.LISTEN))
    p = net.sock()
    m.update(1, p)
    assert p.psock is not None
    assert flat(p.psock.rx_feed(b"a")) == [("drop", b"a")]
    assert prog.dropped == 1


def test_case_56_redir_partial_waits_for_more(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    m.attach(lambda skb: 3, sk.SK_SKB_STREAM_PARSER)
    m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT)
    c0, c1 = net.sock(), net.sock()
    m.update(0, c0)
    m.update(1, c1)
    assert c1.psock is not None and c1.psock.strp is not None
    assert flat(c1.psock.rx_feed(b"abc\0")) == [("redirect", b"abc")]
    assert c1.psock.strp.pending == 1


def test_verdict_mode_one_verdict_per_chunk_and_ingress_redirect(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    m.attach(lambda skb: sk.sk_redirect_map(skb, m, 1, sk.BPF_F_INGRESS), sk.SK_SKB_VERDICT)
    a, b = net.sock(), net.sock()
    m.update(0, a)
    m.update(1, b)
    assert a.psock is not None and a.psock.rx_mode == "verdict"
    [action] = a.psock.rx_feed(b"hello world")
    assert (action.kind, action.target, action.ingress) == ("redirect", b, True)


def test_actions_merge_per_destination_in_order(net: Net) -> None:
    backends = sk.SockHash(max_entries=2)
    clients = sk.SockMap(max_entries=1)

    def parse(skb: sk.SkBuff) -> int:
        return 0 if skb.len < 1 else 1 + skb.data[0]

    def route(skb: sk.SkBuff) -> int:
        tag = bytes(skb.data[1:2])
        if tag == b"d":
            return sk.SK_DROP
        return sk.sk_redirect_hash(skb, backends, tag, 0)

    clients.attach(parse, sk.SK_SKB_STREAM_PARSER)
    clients.attach(route, sk.SK_SKB_STREAM_VERDICT)
    a, b, c = net.sock(), net.sock(), net.sock()
    backends.update(b"a", a)
    backends.update(b"b", b)
    clients.update(0, c)
    stream = b"".join(bytes([len(m)]) + m for m in [b"a1", b"a2", b"b3", b"dx", b"a4", b"a5"])
    assert c.psock is not None
    actions = c.psock.rx_feed(stream)
    # one action per destination for the batch, in first-seen order, each in order
    assert [(x.kind, x.target, x.msgs, b"".join(x.bufs)) for x in actions] == [
        ("redirect", a, 4, b"\x02a1\x02a2\x02a4\x02a5"),
        ("redirect", b, 1, b"\x02b3"),
        ("drop", None, 1, b"\x02dx"),
    ]
    st = c.psock.statistics()
    assert (st.rx_msgs, st.rx_redirected_bytes, st.rx_dropped_bytes) == (6, 15, 3)


def test_redirect_target_without_psock_is_dropped(net: Net) -> None:
    m = sk.SockMap(max_entries=2)
    m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT)
    t, s = net.sock(), net.sock()
    m.update(0, t)
    m.update(1, s)
    assert t.psock is not None and s.psock is not None
    t.psock.tx_enabled = False  # being dropped
    assert flat(s.psock.rx_feed(b"z")) == [("drop", b"z")]


def test_parser_error_keeps_actions_of_completed_messages(net: Net) -> None:
    def parse(skb: sk.SkBuff) -> int:
        return 2 if bytes(skb.data[:1]) != b"!" else -errno.EBADMSG

    m = rx_map(parse, lambda skb: sk.SK_PASS)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None
    with pytest.raises(sk.StrParserError) as info:
        p.psock.rx_feed(b"abcd!x")
    assert info.value.errno == errno.EBADMSG
    assert flat(info.value.actions) == [("pass", b"abcd")]
    with pytest.raises(sk.StrParserError):
        p.psock.rx_feed(b"more")  # sticky


def test_no_rx_programs_pass_everything(net: Net) -> None:
    m = sk.SockMap(max_entries=1)
    m.attach(lambda msg: sk.SK_PASS, sk.SK_MSG_VERDICT)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None and p.psock.rx_mode is None
    assert flat(p.psock.rx_feed(b"raw")) == [("pass", b"raw")]
    assert p.psock.rx_feed(b"") == []


def test_parser_only_does_not_start_rx(net: Net) -> None:
    m = sk.SockMap(max_entries=1)
    m.attach(lambda skb: 1, sk.SK_SKB_STREAM_PARSER)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None and p.psock.rx_mode is None


def test_stream_parser_needs_tcp(net: Net) -> None:
    m = rx_map(lambda skb: 1, lambda skb: sk.SK_PASS)
    with pytest.raises(OSError, check=lambda e: e.errno == errno.EOPNOTSUPP):
        m.update(0, net.sock(kind="udp"))


# -- the ingress queue (cases 62, 63) --------------------------------------------------------


def test_cases_62_63_ingress_queue_fionread_and_peek(net: Net) -> None:
    m = sk.SockMap(max_entries=1)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    c1 = net.sock()
    m.update(0, c1)
    psock = c1.psock
    assert psock is not None
    for action in psock.rx_feed(bytes(range(256))):
        psock.queue_msg(action.bufs)
    assert psock.ingress_bytes == 256  # FIONREAD
    assert psock.recvmsg(1000, peek=True) == bytes(range(256))
    assert psock.ingress_bytes == 256
    assert psock.recvmsg(100) == bytes(range(100))
    assert psock.recvmsg(1000) == bytes(range(100, 256))
    assert psock.ingress_bytes == 0 and psock.recvmsg(10) == b""


def test_ingress_queue_stream_semantics_and_space(net: Net) -> None:
    m = sk.SockMap(max_entries=1)
    s = net.sock()
    m.update(0, s)
    psock = s.psock
    assert psock is not None
    psock.rcvbuf = 10
    assert psock.queue_msg([memoryview(b"abc"), memoryview(b""), memoryview(b"defg")]) == 7
    assert psock.ingress_space == 3
    assert psock.recvmsg(5, peek=True) == b"abcde"
    assert psock.recvmsg(2) == b"ab" and psock.recvmsg(3) == b"cde"
    assert psock.statistics().ingress_bytes == 2


def test_drop_purges_unread_ingress(net: Net) -> None:
    m = sk.SockMap(max_entries=1)
    s = net.sock()
    m.update(0, s)
    psock = s.psock
    assert psock is not None
    psock.queue_msg([memoryview(b"unread")])
    m.delete(0)
    assert s.psock is None and psock.ingress_bytes == 0 and not psock.tx_enabled
    assert psock.queue_msg([memoryview(b"late")]) == 0  # discarded as in the kernel


def test_alternating_targets_give_one_action_each(net: Net) -> None:
    """Messages alternating between two backends: one write per backend per
    batch, not one per message (found by the CLI work)."""
    backends = sk.SockMap(max_entries=2)
    a, b, client = net.sock(), net.sock(), net.sock()
    backends.update(0, a)
    backends.update(1, b)
    clients = sk.SockMap(max_entries=1)
    clients.attach(lambda skb: 4, sk.SK_SKB_STREAM_PARSER)
    clients.attach(
        lambda skb: sk.sk_redirect_map(skb, backends, skb.data[0] % 2, 0),
        sk.SK_SKB_STREAM_VERDICT,
    )
    clients.update(0, client)
    assert client.psock is not None
    actions = client.psock.rx_feed(b"".join(bytes([i, 0, 0, 0]) for i in range(10)))
    assert [(x.target, [bytes(m)[0] for m in x.bufs]) for x in actions] == [
        (a, [0, 2, 4, 6, 8]),
        (b, [1, 3, 5, 7, 9]),
    ]


def test_verdict_counters_once_per_message_and_a_raise_is_one_drop(net: Net) -> None:
    """Counters are summed per batch: each message counts once, in one column;
    a program that raises counts one error and one drop, not two drops."""

    def verdict(skb: sk.SkBuff) -> int:
        tag = bytes(skb.data[:1])
        if tag == b"r":
            raise RuntimeError("kaboom")
        return sk.SK_PASS if tag == b"p" else sk.SK_DROP

    m = rx_map(lambda skb: 2, verdict)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None
    actions = p.psock.rx_feed(b"p1r2d3p4")
    assert flat(actions) == [("pass", b"p1p4"), ("drop", b"r2d3")]
    prog = p.psock.stream_verdict
    assert prog is not None
    st = prog.statistics()
    assert (st.run_cnt, st.passed, st.dropped, st.redirected, st.errors) == (4, 2, 2, 0, 1)
    assert isinstance(prog.last_error, RuntimeError)


def test_consecutive_messages_to_one_place_are_one_zero_copy_slice(net: Net) -> None:
    """Messages framed inside one read and bound for one destination leave as a
    single slice of that read (one buffer to write), not one view per message;
    a message completed from held bytes is its own buffer."""
    m = sk.SockMap(max_entries=2)
    m.attach(sk.LengthPrefixParser(1), sk.SK_SKB_STREAM_PARSER)
    m.attach(lambda skb: sk.sk_redirect_map(skb, m, 1, 0), sk.SK_SKB_STREAM_VERDICT)
    src, dst = net.sock(), net.sock()
    m.update(0, src)
    m.update(1, dst)
    assert src.psock is not None
    read = bytearray(b"\x01a\x01b\x01c\x02d")
    [action] = src.psock.rx_feed(read)
    assert (action.kind, action.target, action.msgs, action.nbytes) == ("redirect", dst, 3, 6)
    assert len(action.bufs) == 1 and action.bufs[0].obj is read  # a view of the read itself
    [action] = src.psock.rx_feed(b"e\x01f")
    assert [bytes(b) for b in action.bufs] == [b"\x02de", b"\x01f"]
    assert action.msgs == 2


def test_program_reads_the_message_it_is_run_on(net: Net) -> None:
    """``skb.data`` is made on demand from the batch; it is exactly the message."""
    seen: list[tuple[int, bytes]] = []

    def verdict(skb: sk.SkBuff) -> int:
        seen.append((skb.len, bytes(skb.data)))
        return sk.SK_PASS

    m = rx_map(sk.LengthPrefixParser(2, "little"), verdict)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None
    p.psock.rx_feed(b"\x01\x00x\x03\x00yz")
    p.psock.rx_feed(b"w\x00\x00")
    assert seen == [(3, b"\x01\x00x"), (5, b"\x03\x00yzw"), (2, b"\x00\x00")]


def test_rx_verdict_runs_once_per_unit_a_ulp_framed(net: Net) -> None:
    """A ULP (TLS) frames records itself and hands them over: one verdict per
    record, even with a stream parser attached, actions merged per destination."""
    lens: list[int] = []

    def verdict(skb: sk.SkBuff) -> int:
        lens.append(skb.len)
        return sk.SK_DROP if bytes(skb.data) == b"bad" else sk.SK_PASS

    m = rx_map(lambda skb: 1, verdict)
    p = net.sock()
    m.update(0, p)
    assert p.psock is not None
    actions = p.psock.rx_verdict([memoryview(b"rec1"), memoryview(b"bad"), memoryview(b"rec22")])
    assert lens == [4, 3, 5]
    assert flat(actions) == [("pass", b"rec1rec22"), ("drop", b"bad")]
    assert [len(a.bufs) for a in actions] == [2, 1]  # separate records stay separate buffers


@attrs.frozen
class _OpRig:
    """A psock whose stream verdict acts on each unit's first byte: ``P`` pass,
    ``D`` drop, ``X`` raise, ``B`` return a bool, ``R``/``I`` redirect to a TCP
    socket (egress/ingress), ``G`` to a UDP socket, ``U`` to a socket with no
    psock; an empty unit passes."""

    m: sk.SockMap
    prog: sk.Program
    psock: SkPsock
    udp: sk.Sock

    @classmethod
    def make(cls) -> _OpRig:
        net = Net(MemProto())
        m = sk.SockMap(max_entries=4)
        tcp, udp = net.sock(), net.sock(kind="udp")
        orphan = net.sock()  # no psock: a redirect to it is dropped

        def verdict(skb: sk.SkBuff) -> object:
            op = bytes(skb.data[:1]) or b"N"
            if op == b"X":
                raise ValueError("bad unit")
            if op == b"B":
                return True  # not an int verdict: a DROP
            if op == b"R":
                return sk.sk_redirect_map(skb, m, 1, 0)
            if op == b"I":
                return sk.sk_redirect_map(skb, m, 1, sk.BPF_F_INGRESS)
            if op == b"G":
                return sk.sk_redirect_map(skb, m, 2, 0)
            if op == b"U":
                skb._redir = orphan  # white-box: a target whose psock went away
                return sk.SK_PASS
            return sk.SK_DROP if op == b"D" else sk.SK_PASS

        prog = m.attach(verdict, sk.SK_SKB_STREAM_VERDICT)  # type: ignore[arg-type]
        p = net.sock()
        m.update(0, p)
        m.update(1, tcp)
        m.update(2, udp)
        assert p.psock is not None
        return cls(m, prog, p.psock, udp)

    def snapshot(self) -> tuple[int, ...]:
        """The program's and the psock's counters."""
        s, ps = self.prog.statistics(), self.psock
        return (
            s.run_cnt, s.passed, s.dropped, s.redirected, s.errors, ps.rx_msgs,
            ps.rx_passed_bytes, ps.rx_redirected_bytes, ps.rx_dropped_bytes,
        )


@settings(max_examples=60, deadline=None)
@given(
    units=st.lists(
        st.tuples(st.sampled_from("PDXRIGUBN"), st.integers(0, 6)), min_size=0, max_size=12
    )
)
def test_rx_verdict_is_verdict_spans_once_per_unit(
    units: list[tuple[str, int]],
) -> None:
    """rx_verdict's own per-unit loop (the TLS receive hot path) gives exactly
    the actions and counters of _verdict_spans run on each unit: pass, drop,
    a raise, a bool, redirects (egress, ingress, to a datagram socket, to a
    socket that cannot take it), empty units skipped."""
    rig = _OpRig.make()
    psock, prog = rig.psock, rig.prog
    views = [memoryview((op * n).encode()) for op, n in units]

    def shape(actions: list[sk.RxAction]) -> list[tuple[object, ...]]:
        return [
            (a.kind, a.target, a.ingress, a.nbytes, a.msgs, [bytes(b) for b in a.bufs])
            for a in actions
        ]

    s0 = rig.snapshot()
    got = psock.rx_verdict(views)
    s1 = rig.snapshot()
    ref_batch = _RxBatch()
    for v in views:
        if v.nbytes:
            psock._verdict_spans(v, 0, [v.nbytes], prog, ref_batch)
    s2 = rig.snapshot()
    assert shape(got) == shape(ref_batch.actions)
    assert [b - a for a, b in zip(s0, s1, strict=True)] == [
        b - a for a, b in zip(s1, s2, strict=True)
    ]
    # a raise, and a value that is not a verdict, are both errors
    assert (prog.last_error is not None) == any(op in "XB" and n for op, n in units)
    rig.m.close()


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_redirect_rule_is_the_kernels_per_socket_kind(net: Net, kind: str) -> None:
    """``sock_map_redirect_allowed``, applied inline by the helpers: TCP unless
    LISTEN, any other socket only when ESTABLISHED (connected)."""
    m = sk.SockMap(max_entries=2)
    skb = sk.SkBuff()
    target = net.sock(kind=kind)
    m.update(0, target)
    for state, tcp_ok, other_ok in [
        (sk.TcpState.ESTABLISHED, True, True),
        (sk.TcpState.LISTEN, False, False),
        (sk.TcpState.CLOSE, True, False),
    ]:
        target.state = int(state)
        want = tcp_ok if kind == "tcp" else other_ok
        assert sk.sk_redirect_map(skb, m, 0) == (sk.SK_PASS if want else sk.SK_DROP), state
        assert net.proto.redirect_allowed(target) is want  # the table says the same


def test_a_protocol_that_overrides_the_redirect_rule_is_asked(net: Net) -> None:
    """A plugin that overrides ``redirect_allowed`` (or does not build on
    SkProtoBase at all) is asked per redirect instead of the inline rule."""

    class Picky(sk.SkProtoBase):
        name = "picky"

        def redirect_allowed(self, s: sk.Sock) -> bool:
            return s.local_addr[1] % 2 == 0

    class Plain:  # the bare protocol, no base class
        name = "plain"

        def sk_state_allowed(self, s: sk.Sock) -> bool:
            return True

        def redirect_allowed(self, s: sk.Sock) -> bool:
            return False

        def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
            return 0

    assert sk.SkProtoBase.kernel_redirect_rule and not Picky.kernel_redirect_rule
    m = sk.SockMap(max_entries=3)
    skb = sk.SkBuff()
    socks = [net.sock(), net.sock()]
    for i, s in enumerate(socks):
        s.sk_prot = Picky()
        m.update(i, s)
    got = [sk.sk_redirect_map(skb, m, i) for i in range(2)]
    assert got == [sk.SK_PASS if s.local_addr[1] % 2 == 0 else sk.SK_DROP for s in socks]
    plain = net.sock()
    plain.sk_prot = Plain()
    m.update(2, plain)
    assert sk.sk_redirect_map(skb, m, 2) == sk.SK_DROP


def test_messages_redirected_to_a_datagram_socket_keep_their_boundaries(net: Net) -> None:
    """A run of messages to a stream target is one slice; to a datagram target
    each message stays its own buffer, because each becomes one datagram
    (regression: the run merging once fused them into one datagram)."""
    m, targets = sk.SockMap(max_entries=1), sk.SockMap(max_entries=2)
    m.attach(sk.LengthPrefixParser(1), sk.SK_SKB_STREAM_PARSER)
    m.attach(
        lambda skb: sk.sk_redirect_map(skb, targets, 0 if bytes(skb.data[1:2]) == b"u" else 1),
        sk.SK_SKB_STREAM_VERDICT,
    )
    src, udp, tcp = net.sock(), net.sock(kind="udp"), net.sock()
    m.update(0, src)
    targets.update(0, udp)
    targets.update(1, tcp)
    assert src.psock is not None
    stream = b"".join(bytes([len(x)]) + x for x in [b"u1", b"u2", b"t3", b"t4", b"u5"])
    actions = src.psock.rx_feed(stream)
    assert [(a.target, a.msgs, [bytes(b) for b in a.bufs]) for a in actions] == [
        (udp, 3, [b"\x02u1", b"\x02u2", b"\x02u5"]),
        (tcp, 2, [b"\x02t3\x02t4"]),
    ]
    st = src.psock.statistics()
    assert (st.rx_msgs, st.rx_redirected_bytes) == (5, 15)


@given(
    units=st.lists(st.binary(max_size=40), max_size=20),
    reads=st.lists(st.integers(-1, 100), min_size=1, max_size=30),
)
def test_take_queued_is_a_byte_stream(units: list[bytes], reads: list[int]) -> None:
    """Any units, any read sizes (also 0 and below): each read gives the next
    min(size, left) bytes of the concatenation, in order, and the queue keeps
    exactly the rest (an empty unit is never an obstacle)."""
    from collections import deque

    q = deque(memoryview(u) for u in units)
    stream = b"".join(units)
    pos = 0
    for size in reads:
        got = sk.take_queued(q, size)
        assert type(got) is bytes
        assert got == stream[pos : pos + max(size, 0)]
        pos += len(got)
        assert b"".join(q) == stream[pos:]


def test_take_queued_has_stream_semantics() -> None:
    """Whole units pop, a unit cut short keeps its rest at the front, and an
    empty queue gives nothing (shared by recvmsg and TLS's plaintext queue)."""
    from collections import deque

    q = deque(memoryview(b) for b in (b"abc", b"defg", b"h"))
    assert sk.take_queued(q, 2) == b"ab"
    assert sk.take_queued(q, 4) == b"cdef"
    assert [bytes(b) for b in q] == [b"g", b"h"]
    assert sk.take_queued(q, 100) == b"gh"
    assert sk.take_queued(q, 5) == b"" and not q


@given(units=st.lists(st.tuples(st.sampled_from("PDXRIGUB"), st.integers(1, 4)), max_size=8))
def test_one_message_path_is_the_batch_loop(units: list[tuple[str, int]]) -> None:
    """_verdict_spans has a path of its own for a lone message (verdict mode
    runs once per read); run on each message alone, it must give exactly the
    actions and counters of the batch loop run on all of them at once."""
    rig = _OpRig.make()
    psock, prog, udp = rig.psock, rig.prog, rig.udp
    data = "".join(op * n for op, n in units).encode()
    ends = list(itertools.accumulate(n for _, n in units))
    view = memoryview(data)

    def shape(actions: list[sk.RxAction]) -> list[tuple[object, ...]]:
        # a stream target's bytes may come as one slice or one view per message;
        # a datagram target's must be one buffer per message either way
        return [
            (
                a.kind, a.target, a.ingress, a.nbytes, a.msgs,
                [bytes(b) for b in a.bufs] if a.target is udp else b"".join(a.bufs),
            )
            for a in actions
        ]

    s0 = rig.snapshot()
    alone = _RxBatch()
    for start, end in itertools.pairwise([0, *ends]):
        psock._verdict_one(view, start, end, prog, alone)
    s1 = rig.snapshot()
    together = _RxBatch()
    if len(ends) > 1:  # the batch loop (one message would take the lone path)
        psock._verdict_spans(view, 0, ends, prog, together)
    else:
        for start, end in itertools.pairwise([0, *ends]):
            psock._verdict_one(view, start, end, prog, together)
    s2 = rig.snapshot()
    assert shape(alone.actions) == shape(together.actions)
    assert [b - a for a, b in zip(s0, s1, strict=True)] == [
        b - a for a, b in zip(s1, s2, strict=True)
    ]
    rig.m.close()
