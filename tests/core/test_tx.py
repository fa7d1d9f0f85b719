"""The TX verdict engine (tcp_bpf_sendmsg / tcp_bpf_send_verdict) on in-test sockets.

Reference §7 cases 1-14 and 20-34, in test_sockmap's topology reduced to what
the core sees: ``c1`` sends with an SK_MSG program (``prog4``), passing to its
own wire, redirecting egress to ``c2``'s wire, or ingress into ``p2``'s queue.
"""

from __future__ import annotations

import errno

import pytest

import skmsg_core as sk

from ._support import (
    SEND_LARGE,
    SEND_MANY,
    SEND_ONE,
    TEST_SEND,
    MemProto,
    Net,
    payload,
    prog4,
    sends,
)


def run_sends(net: Net, c1: sk.Sock, shape: list[tuple[int, int, int]]) -> list[sk.SendResult]:
    return [net.send(c1, chunk) for chunk in sends(shape)]


def expected(shape: list[tuple[int, int, int]]) -> bytes:
    return b"".join(sends(shape))


def received(net: Net, c1: sk.Sock, c2: sk.Sock, p2: sk.Sock, mode: str) -> bytes:
    if mode == "pass":
        return bytes(net.wire[c1])
    if mode == "redir":
        return bytes(net.wire[c2])
    assert p2.psock is not None
    return p2.psock.recvmsg(1 << 30)


MODES = {"pass": None, "redir": 0, "ingress": 2}


def redirect_for(mode: str, redir_map: sk.SockMap | None) -> tuple[sk.SockMap, int, int] | None:
    if mode == "pass" or redir_map is None:
        return None
    return (redir_map, MODES[mode], sk.BPF_F_INGRESS if mode == "ingress" else 0)


def make(net: Net, mode: str, **params: object) -> tuple[sk.Sock, sk.Sock, sk.Sock, sk.Program]:
    """c1 in ``txmsg`` (SK_MSG ``prog4`` attached) at key 0; ``redir`` holds c2 at 0
    and p2 at 2; the program passes, or redirects to c2 (egress) or p2 (ingress)."""
    c1, c2, p2 = net.sock(), net.sock(), net.sock()
    txmsg = sk.SockMap(max_entries=20, name="sock_map_txmsg")
    redir = sk.SockMap(max_entries=20, name="sock_map_redir")
    program = prog4(redirect=redirect_for(mode, redir), **params)  # type: ignore[arg-type]
    prog = txmsg.attach(program, sk.SK_MSG_VERDICT)
    txmsg.update(0, c1)
    redir.update(0, c2)
    redir.update(2, p2)
    return c1, c2, p2, prog


# -- cases 1, 2, 4: pass, redirect, ingress redirect -------------------------------------


@pytest.mark.parametrize("mode", ["pass", "redir", "ingress"])
def test_cases_1_2_4_totals_and_bytes(net: Net, mode: str) -> None:
    c1, c2, p2, prog = make(net, mode)
    results = run_sends(net, c1, TEST_SEND)
    assert [r.retval for r in results] == [len(c) for c in sends(TEST_SEND)]
    got = received(net, c1, c2, p2, mode)
    assert got == expected(TEST_SEND)
    assert len(got) == 1 + 1024 + 1024 + 1536 + 500 + 524288
    # one verdict per sendmsg: 262144-byte sends are one message each
    assert prog.run_cnt == 3 + 512 + 100 + 2
    if mode != "pass":
        assert net.wire[c1] == b""


def test_case_3_drop_every_send_eacces(net: Net) -> None:
    c1, c2, _, prog = make(net, "pass", drop=True)
    for chunk in sends(TEST_SEND):
        result = net.send(c1, chunk)
        assert result.err == errno.EACCES
        assert result.retval == -errno.EACCES
        assert result.passed == 0
    assert net.wire[c1] == b"" and net.wire[c2] == b""
    # the DROP verdict sticks (see test_drop_verdict_sticks): one run, all sends fail
    assert prog.dropped == prog.run_cnt == 1


# -- cases 5-9: apply ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pass", "redir", "ingress"])
def test_cases_5_6_7_apply_1_runs_per_byte(net: Net, mode: str) -> None:
    c1, c2, p2, prog = make(net, mode, apply=1)
    results = run_sends(net, c1, SEND_ONE)
    assert [r.retval for r in results] == [1, 1024, 1024]
    assert received(net, c1, c2, p2, mode) == expected(SEND_ONE)
    assert prog.run_cnt == 1 + 1024 + 1024


@pytest.mark.parametrize("mode", ["pass", "redir", "ingress"])
def test_cases_8_9_apply_1024_on_large_sends(net: Net, mode: str) -> None:
    c1, c2, p2, prog = make(net, mode, apply=1024)
    run_sends(net, c1, SEND_LARGE)
    assert received(net, c1, c2, p2, mode) == expected(SEND_LARGE)
    assert prog.run_cnt == 2 * 256


def test_apply_verdict_persists_across_sends(net: Net) -> None:
    """A verdict with apply_bytes longer than the message covers later sends
    without running the program again (the redirect target persists too)."""
    c1, c2, _, prog = make(net, "redir", apply=10)
    for chunk in (b"abc", b"defg", b"hij", b"klm"):
        assert net.send(c1, chunk).retval == len(chunk)
    assert prog.run_cnt == 2  # bytes 0..9 ride on the first verdict; "klm" gets a new run
    assert bytes(net.wire[c2]) == b"abcdefghijklm"


def test_drop_verdict_sticks(net: Net) -> None:
    """The kernel never resets ``psock->eval`` after a DROP: the program does not
    run again and every later send fails with EACCES (checked on Linux 6.18 with
    a real SK_MSG program: b"ok1" -> 3, b"xbad" -> EACCES, b"ok2" -> EACCES, two runs)."""

    def program(msg: sk.SkMsg) -> int:
        assert sk.msg_pull_data(msg, 0, 1, 0) == 0
        return sk.SK_DROP if msg.data[0] == ord("x") else sk.SK_PASS

    c1 = net.sock()
    m = sk.SockMap(max_entries=1)
    prog = m.attach(program, sk.SK_MSG_VERDICT)
    m.update(0, c1)
    assert [net.send(c1, d).retval for d in (b"ok1", b"xbad", b"ok2", b"ok3")] == [
        3,
        -errno.EACCES,
        -errno.EACCES,
        -errno.EACCES,
    ]
    assert prog.run_cnt == 2 and bytes(net.wire[c1]) == b"ok1"
    m.delete(0)  # the psock goes; a new one starts with no verdict
    m.update(0, c1)
    assert net.send(c1, b"ok4").retval == 3


def test_drop_after_partial_pass_reports_the_count(net: Net) -> None:
    """Part of a send passed, then a DROP: sendmsg returns a count, not the error.
    Linux 6.18 returns 7 for this program and delivers b"abc" (checked)."""
    verdicts = iter([sk.SK_PASS, sk.SK_DROP])

    def program(msg: sk.SkMsg) -> int:
        sk.msg_apply_bytes(msg, 3)
        return next(verdicts)

    c1 = net.sock()
    m = sk.SockMap(max_entries=1)
    m.attach(program, sk.SK_MSG_VERDICT)
    m.update(0, c1)
    result = net.send(c1, b"abcdefghij")
    # copied = 10 - (tosend 3 + delta 0) = 7 as in the kernel; 3 actually passed
    assert (result.copied, result.err, result.passed, result.retval) == (7, errno.EACCES, 3, 7)
    assert bytes(net.wire[c1]) == b"abc"


def test_drop_subtracts_bytes_the_program_popped(net: Net) -> None:
    def program(msg: sk.SkMsg) -> int:
        sk.msg_pop_data(msg, 0, 2)
        return sk.SK_DROP

    c1 = net.sock()
    m = sk.SockMap(max_entries=1)
    m.attach(program, sk.SK_MSG_VERDICT)
    m.update(0, c1)
    result = net.send(c1, b"abcdef")
    assert result.copied == 0 and result.retval == -errno.EACCES


# -- cases 10-14: cork ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("apply", "mode"), [(0, "pass"), (1, "pass"), (0, "redir"), (1, "ingress")]
)
def test_cases_10_11_cork_1_never_corks(net: Net, apply: int, mode: str) -> None:
    c1, c2, p2, _ = make(net, mode, cork=1, apply=apply)
    run_sends(net, c1, TEST_SEND)
    assert received(net, c1, c2, p2, mode) == expected(TEST_SEND)
    assert c1.psock is not None and c1.psock.cork is None


@pytest.mark.parametrize("mode", ["pass", "redir"])
def test_cases_12_14_hanging_cork_with_apply(net: Net, mode: str) -> None:
    """cork=4097 apply=4097 on two 262144-byte sends: 63 windows, 4033 B corked;
    the second send releases it and 64 windows go, 3969 B stay corked (no error)."""
    c1, c2, p2, _ = make(net, mode, cork=4097, apply=4097)
    results = run_sends(net, c1, SEND_LARGE)
    assert [r.retval for r in results] == [262144, 262144]
    assert results[0].corked and results[1].corked
    got = received(net, c1, c2, p2, mode)
    assert len(got) == 63 * 4097 + 64 * 4097 == 520319
    assert got == expected(SEND_LARGE)[:520319]
    assert c1.psock is not None and c1.psock.cork is not None
    assert c1.psock.cork.size == 524288 - 520319 == 3969


def test_case_13_hanging_cork_redirect_no_apply(net: Net) -> None:
    c1, c2, _, _ = make(net, "redir", cork=4097)
    run_sends(net, c1, SEND_LARGE)
    assert bytes(net.wire[c2]) == expected(SEND_LARGE)


def test_cork_accumulates_across_sends_by_whole_send_size(net: Net) -> None:
    c1, _, _, prog = make(net, "pass", cork=10)
    for chunk in (b"abc", b"def", b"ghi"):
        result = net.send(c1, chunk)
        assert result.retval == 3 and result.corked
    assert net.wire[c1] == b"" and prog.run_cnt == 1
    assert net.send(c1, b"jk").retval == 2
    assert bytes(net.wire[c1]) == b"abcdefghijk"
    assert prog.run_cnt == 2  # re-run on the whole accumulated message


def test_drop_of_a_corked_message_sticks_and_does_not_cork_again(net: Net) -> None:
    """Found by the kernel conformance suite (scenario ``cork-then-drop``, Linux 6.18):
    cork 10 then DROP. Two 4-B sends are held; the third releases 12 B, the run
    drops them (EACCES). The DROP sticks, and the emptied cork message must not
    cork the fourth send on its old ``cork_bytes`` (the kernel's ``sk_msg_free``
    re-initialises the message): it fails EACCES too, without a run."""
    c1, _, _, prog = make(net, "pass", cork=10, drop=True)
    results = [net.send(c1, b"abcd") for _ in range(4)]
    assert [r.retval for r in results] == [4, 4, -errno.EACCES, -errno.EACCES]
    assert prog.run_cnt == 2 and net.wire[c1] == b""


def test_full_ring_overrides_cork() -> None:
    proto_net = Net(MemProto())
    c1 = proto_net.sock()
    m = sk.SockMap(max_entries=1)
    m.attach(prog4(cork=1 << 30), sk.SK_MSG_VERDICT)
    m.update(0, c1)
    big = payload(sk.MAX_MSG_FRAGS * sk.FRAG_SIZE + 100)
    result = proto_net.send(c1, big)
    assert result.retval == len(big)
    # the first message filled the ring and went; the 100-byte tail is corked
    assert len(proto_net.wire[c1]) == sk.MAX_MSG_FRAGS * sk.FRAG_SIZE
    assert c1.psock is not None and c1.psock.cork is not None and c1.psock.cork.size == 100


# -- cases 15-19: pull ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "cork"), [("pass", 0), ("redir", 0), ("pass", 512), ("redir", 512)]
)
def test_cases_15_17_18_19_pull_keeps_payload(net: Net, mode: str, cork: int) -> None:
    c1, c2, p2, _ = make(net, mode, pull=(1, 2), cork=cork)
    shape = SEND_MANY if cork else TEST_SEND
    run_sends(net, c1, shape)
    got = received(net, c1, c2, p2, mode)
    assert c1.psock is not None
    corked = c1.psock.cork.size if c1.psock.cork is not None else 0
    if corked:
        assert c1.psock.cork is not None and got + c1.psock.cork.tobytes() == expected(shape)
    assert got == expected(shape)[: len(got)] and len(got) + corked == len(expected(shape))


def test_case_16_pull_4096_9182_on_large(net: Net) -> None:
    seen: list[bytes] = []

    def program(msg: sk.SkMsg) -> int:
        assert sk.msg_pull_data(msg, 4096, 9182, 0) == 0
        seen.append(bytes(msg.data))
        return sk.SK_PASS

    c1 = net.sock()
    m = sk.SockMap(max_entries=1)
    m.attach(program, sk.SK_MSG_VERDICT)
    m.update(0, c1)
    run_sends(net, c1, SEND_LARGE)
    assert bytes(net.wire[c1]) == expected(SEND_LARGE)
    assert seen == [payload(262144)[4096:9182]] * 2


# -- cases 20-28: pop and push ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["pass", "redir"])
def test_cases_20_22_pop_1_2_send_many(net: Net, mode: str) -> None:
    c1, c2, p2, _ = make(net, mode, pop=(1, 2))
    run_sends(net, c1, SEND_MANY)
    got = received(net, c1, c2, p2, mode)
    assert got == b"\x00" * 512 + b"\x00\x03\x04" * 100
    assert len(got) == 512 + 300


def test_case_21_pop_4096_4096_on_large(net: Net) -> None:
    c1, _, _, _ = make(net, "pass", pop=(4096, 4096))
    run_sends(net, c1, SEND_LARGE)
    orig = payload(262144)
    assert bytes(net.wire[c1]) == (orig[:4096] + orig[8192:]) * 2
    assert len(net.wire[c1]) == 516096


@pytest.mark.parametrize(("mode", "cork"), [("pass", 512), ("redir", 4)])
def test_cases_23_24_pop_with_cork_passes(net: Net, mode: str, cork: int) -> None:
    c1, c2, p2, prog = make(net, mode, pop=(1, 2), cork=cork)
    results = run_sends(net, c1, SEND_MANY)
    assert all(r.err == 0 for r in results)
    got = received(net, c1, c2, p2, mode)
    assert c1.psock is not None
    corked = c1.psock.cork.size if c1.psock.cork is not None else 0
    # every run popped 2 bytes: what arrived plus what is corked is the rest
    assert len(got) + corked == 1536 + 500 - 2 * prog.run_cnt


def test_case_25_push_1_1_every_send_grows_by_one(net: Net) -> None:
    c1, _, _, _ = make(net, "pass", push=(1, 1))
    results = run_sends(net, c1, TEST_SEND)
    assert all(r.err == 0 for r in results)
    want = b"".join(chunk[:1] + b"\x00" + chunk[1:] for chunk in sends(TEST_SEND))
    assert bytes(net.wire[c1]) == want
    sizes = [len(c) + 1 for c in sends(TEST_SEND)]
    assert sizes[:3] == [2, 1025, 1025] and sum(sizes[3:515]) == 2048
    assert sum(sizes[515:615]) == 600 and sum(sizes[615:]) == 524290


def test_case_26_push_4096_4096_on_large(net: Net) -> None:
    c1, _, _, _ = make(net, "pass", push=(4096, 4096))
    run_sends(net, c1, SEND_LARGE)
    orig = payload(262144)
    assert bytes(net.wire[c1]) == (orig[:4096] + bytes(4096) + orig[4096:]) * 2


def test_case_27_push_1_2_redirect_send_many(net: Net) -> None:
    c1, c2, _, _ = make(net, "redir", push=(1, 2))
    run_sends(net, c1, SEND_MANY)
    got = bytes(net.wire[c2])
    assert got == b"\x00\x00\x00\x01\x02" * 512 + b"\x00\x00\x00\x01\x02\x03\x04" * 100
    assert len(got) == 2560 + 700


def test_case_28_push_with_cork_passes(net: Net) -> None:
    c1, _, _, prog = make(net, "pass", push=(1, 2), cork=512)
    results = run_sends(net, c1, SEND_MANY)
    assert all(r.err == 0 for r in results)
    assert c1.psock is not None
    corked = c1.psock.cork.size if c1.psock.cork is not None else 0
    assert len(net.wire[c1]) + corked == 1536 + 500 + 2 * prog.run_cnt


ORIG = payload(262144)
J = b"\x00"


@pytest.mark.parametrize(
    ("push", "pop", "want"),
    [
        ((1, 10), (5, 4), ORIG[:1] + J * 6 + ORIG[1:]),  # case 29
        ((1, 10), (5, 16), ORIG[:1] + J * 4 + ORIG[11:]),  # case 30
        ((5, 4), (1, 10), ORIG[:1] + ORIG[7:]),  # case 31
        ((5, 16), (1, 10), ORIG[:1] + J * 10 + ORIG[5:]),  # case 32
        ((1, 10), (16, 4), ORIG[:1] + J * 10 + ORIG[1:6] + ORIG[10:]),  # case 33
        ((16, 10), (5, 4), ORIG[:5] + ORIG[9:16] + J * 10 + ORIG[16:]),  # case 34
    ],
)
def test_cases_29_34_push_then_pop_layouts(
    net: Net, push: tuple[int, int], pop: tuple[int, int], want: bytes
) -> None:
    c1, _, _, _ = make(net, "pass", push=push, pop=pop)
    run_sends(net, c1, SEND_LARGE)
    assert bytes(net.wire[c1]) == want * 2


# -- redirect failures ---------------------------------------------------------------------


def test_redirect_to_a_socket_that_lost_its_psock_is_epipe(net: Net) -> None:
    c1, c2, _, _ = make(net, "redir")
    target_psock = c2.psock
    assert target_psock is not None
    # the target leaves its map between the lookup and the hand-off
    holder = {"first": True}

    def deliver(action: sk.TxAction) -> None:
        if holder.pop("first", False):
            c2.close()
        net.deliver(c1)(action)

    assert c1.psock is not None
    result = sk.SendOp(c1.psock, b"data").run(deliver)
    assert (result.err, result.passed, result.retval) == (errno.EPIPE, 0, -errno.EPIPE)


def test_redirect_to_empty_key_drops(net: Net) -> None:
    c1 = net.sock()
    m = sk.SockMap(max_entries=4)
    m.attach(lambda msg: sk.msg_redirect_map(msg, m, 3, 0), sk.SK_MSG_VERDICT)
    m.update(0, c1)
    assert net.send(c1, b"a").err == errno.EACCES


def test_redirect_to_listener_drops_case_55(net: Net) -> None:
    p = net.sock()
    s = net.sock(sk.TcpState.LISTEN)
    m = sk.SockMap(max_entries=2)
    prog = m.attach(lambda msg: sk.msg_redirect_map(msg, m, 0, 0), sk.SK_MSG_VERDICT)
    m.update(0, s)
    m.update(1, p)
    assert net.send(p, b"a").err == errno.EACCES
    assert prog.dropped == 1


def test_case_53_msg_redirect_to_connected(net: Net) -> None:
    p0, p1 = net.sock(), net.sock()
    m = sk.SockMap(max_entries=2)
    prog = m.attach(lambda msg: sk.msg_redirect_map(msg, m, 0, 0), sk.SK_MSG_VERDICT)
    m.update(0, p0)
    m.update(1, p1)
    assert net.send(p1, b"a").retval == 1
    assert net.wire[p0] == b"a" and prog.redirected == 1


def test_case_67_msg_verdict_redirect_ingress_and_egress(net: Net) -> None:
    p1, c1, p0 = net.sock(), net.sock(), net.sock()
    m = sk.SockMap(max_entries=3)
    target = {"key": 1, "flags": sk.BPF_F_INGRESS}
    m.attach(
        lambda msg: sk.msg_redirect_map(msg, m, target["key"], target["flags"]), sk.SK_MSG_VERDICT
    )
    m.update(0, p1)
    m.update(1, c1)
    m.update(2, p0)
    data = payload(256)
    for _ in range(2):
        assert net.send(p1, data).retval == 256
        assert c1.psock is not None and c1.psock.recvmsg(1000) == data
    target.update(key=2, flags=0)
    for _ in range(2):
        assert net.send(p1, data).retval == 256
    assert net.wire[p0] == data * 2


def test_program_raising_is_a_counted_drop(net: Net) -> None:
    def program(msg: sk.SkMsg) -> int:
        raise RuntimeError("policy bug")

    c1 = net.sock()
    m = sk.SockMap(max_entries=1)
    prog = m.attach(program, sk.SK_MSG_VERDICT)
    m.update(0, c1)
    assert net.send(c1, b"x").err == errno.EACCES
    assert prog.errors == 1 and isinstance(prog.last_error, RuntimeError)


def test_send_result_requires_all_actions_taken(net: Net) -> None:
    c1, _, _, _ = make(net, "pass")
    assert c1.psock is not None
    op = sk.SendOp(c1.psock, b"abc")
    with pytest.raises(RuntimeError, match="before its actions"):
        op.result()
    actions = list(op)
    assert [a.kind for a in actions] == ["pass"] and actions[0].nbytes == 3
    assert op.result().retval == 3


def test_more_hint_marks_all_but_the_last_action(net: Net) -> None:
    c1 = net.sock()
    m = sk.SockMap(max_entries=1)
    m.attach(prog4(apply=2), sk.SK_MSG_VERDICT)
    m.update(0, c1)
    assert c1.psock is not None
    actions = list(sk.SendOp(c1.psock, b"abcde"))
    assert [a.more for a in actions] == [True, True, False]
    actions = list(sk.SendOp(c1.psock, b"abcde", more=True))
    assert all(a.more for a in actions)
