"""SK_MSG on real loopback sockets: reference §7 cases 1-34, 53, 55 and 67.

Cases 1-34 run in test_sockmap's TS topology (``_topology``): ``c1`` sends
test_sockmap's shapes (``send_one``, ``send_many``, ``send_large``; payload
byte j of each chunk is ``j mod 256``) through its SK_MSG program
(``prog4``: bpf_prog4 / 6 / 10 with apply, cork, pull, push, pop); the bytes
travel c1 => p1 => (SK_SKB redirect egress) => c2 => p2, or are redirected by
the SK_MSG program straight out of ``c2`` or into ``p2``'s receive queue, and
``p2`` reads exactly the expected total, shape by shape, then nothing more.

skmsg's deliberate difference that shows here (docs/kernel-differences.md):
bytes inserted by ``msg_push_data`` are zeros (the kernel leaves them
uninitialised), so pushed layouts are compared byte for byte.

Cases 53, 55 and 67 are sockmap_listen / sockmap_basic's SK_MSG redirects
between connected pairs ``cN -> pN``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import tcp_stream_pair
from tests.core._support import SEND_LARGE, SEND_MANY, SEND_ONE, TEST_SEND, payload

from ._topology import (
    Mode,
    Topology,
    assert_quiet,
    open_listener,
    open_topology,
    read_exact,
    tcp_pair,
    transfer,
)

Shape = list[tuple[int, int, int]]
Transform = Callable[[bytes], bytes]


def unchanged(chunk: bytes) -> bytes:
    return chunk


async def run_shape(ts: Topology, shape: Shape, transform: Transform = unchanged) -> list[int]:
    """Send each group of ``shape`` from c1 and read at p2 exactly what
    ``transform`` says each send becomes; return the per-group totals."""
    totals = []
    for iov_len, iov_count, rate in shape:
        chunk = payload(iov_len * iov_count)
        want = transform(chunk) * rate
        got = await transfer(ts.c1, ts.p2, [chunk] * rate, len(want))
        assert got == want, f"group {(iov_len, iov_count, rate)}: bytes differ"
        totals.append(len(got))
    await assert_quiet(ts.p2)
    return totals


def corked(stream: skmsg_tcp.SkStream) -> int:
    psock = stream.sk.psock
    assert psock is not None
    return psock.cork.size if psock.cork is not None else 0


MODES: list[Mode] = ["pass", "redir", "ingress"]
TEST_SEND_TOTALS = [1, 1024, 1024, 1536, 500, 524288]


# -- cases 1, 2, 4: pass, redirect, ingress redirect -------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_cases_1_2_4_test_send_totals(mode: Mode) -> None:
    """1: txmsg_pass; 2: txmsg_redir (egress out of c2); 4: txmsg_ingress +
    txmsg_redir (into p2's queue, never crossing TCP). p2 gets 1, 1024, 1024,
    1536, 500 and 524288 B, intact; one verdict per sendmsg."""
    async with open_runtime(), open_topology(mode) as ts:
        assert await run_shape(ts, TEST_SEND) == TEST_SEND_TOTALS
        assert ts.txmsg is not None and ts.txmsg.run_cnt == 3 + 512 + 100 + 2
        assert ts.verdict is not None
        if mode == "pass":
            # the bytes crossed c1 -> p1 and p1's SK_SKB verdict sent them out of c2
            assert sum(ts.verdict_lens) == sum(TEST_SEND_TOTALS)
            assert ts.txmsg.passed == ts.txmsg.run_cnt
        else:
            assert ts.verdict_lens == [] and ts.c1.bytes_sent == 0
            assert ts.txmsg.redirected == ts.txmsg.run_cnt
        if mode == "ingress":
            assert ts.c2.bytes_sent == 0  # straight into p2's receive queue


async def test_case_3_drop_every_send_is_eacces() -> None:
    """txmsg_drop: every sendmsg on c1 fails EACCES with nothing accepted; p2
    receives nothing. The DROP verdict sticks (kernel behaviour we reproduce):
    the program runs once and every later send fails without a run."""
    async with open_runtime(), open_topology("drop") as ts:
        for iov_len, iov_count, rate in TEST_SEND:
            chunk = payload(iov_len * iov_count)
            for _ in range(rate):
                with pytest.raises(skmsg_tcp.SendError) as info:
                    await ts.c1.send_all(chunk)
                assert isinstance(info.value, PermissionError)
                assert info.value.errno == errno.EACCES and info.value.accepted == 0
        await assert_quiet(ts.p2)
        assert ts.c1.bytes_sent == 0
        assert ts.txmsg is not None and ts.txmsg.run_cnt == ts.txmsg.dropped == 1


# -- cases 5-9: apply ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_cases_5_6_7_apply_1_send_one(mode: Mode) -> None:
    """apply=1 with pass (5), redirect (6), redirect+ingress (7): the program runs
    once per byte; totals 1, 1024, 1024 at p2."""
    async with open_runtime(), open_topology(mode, apply=1) as ts:
        assert await run_shape(ts, SEND_ONE) == [1, 1024, 1024]
        assert ts.txmsg is not None and ts.txmsg.run_cnt == 1 + 1024 + 1024


@pytest.mark.parametrize("mode", MODES)
async def test_cases_8_9_apply_1024_send_large(mode: Mode) -> None:
    """apply=1024, pass (8), redirect and redirect+ingress (9): 524288 B; the
    program runs 256 times per 262144-B send."""
    async with open_runtime(), open_topology(mode, apply=1024) as ts:
        assert await run_shape(ts, SEND_LARGE) == [524288]
        assert ts.txmsg is not None and ts.txmsg.run_cnt == 2 * 256


# -- cases 10-14: cork -----------------------------------------------------------------------------


async def test_case_10_cork_1_never_corks() -> None:
    async with open_runtime(), open_topology("pass", cork=1) as ts:
        assert await run_shape(ts, TEST_SEND) == TEST_SEND_TOTALS
        assert corked(ts.c1) == 0


async def test_case_11_cork_1_apply_1() -> None:
    """cork=1 + apply=1, pass, test_send: normal totals, one verdict per byte
    (526,853 verdicts); the PASS windows of one send go out in batched writes."""
    async with open_runtime(), open_topology("pass", cork=1, apply=1) as ts:
        assert await run_shape(ts, TEST_SEND) == TEST_SEND_TOTALS
        assert ts.txmsg is not None and ts.txmsg.run_cnt == sum(TEST_SEND_TOTALS)
        assert corked(ts.c1) == 0


@pytest.mark.parametrize("mode", ["pass", "redir"])
async def test_cases_12_14_hanging_cork_apply_4097(mode: Mode) -> None:
    """cork=4097 + apply=4097 on two 262144-B sends, pass (12) or redirect (14).

    The kernel test accepts a receive timeout; skmsg's split is exact: 63
    windows go and 4033 B cork, the second send releases them and 64 windows
    go, 3969 B stay corked. Both sends succeed; p2 gets exactly 520319 B,
    then nothing (no error)."""
    async with open_runtime(), open_topology(mode, cork=4097, apply=4097) as ts:
        chunk = payload(262144)
        got = await transfer(ts.c1, ts.p2, [chunk, chunk], 520319)
        assert got == (chunk * 2)[:520319]
        await assert_quiet(ts.p2, 0.3)
        assert corked(ts.c1) == 524288 - 520319 == 3969


async def test_case_13_hanging_cork_redirect_no_apply() -> None:
    """cork=4097, redirect, apply 0: a 262144-B message is never below the
    cork, so nothing hangs in skmsg: all 524288 B reach p2."""
    async with open_runtime(), open_topology("redir", cork=4097) as ts:
        assert await run_shape(ts, SEND_LARGE) == [524288]
        assert corked(ts.c1) == 0


# -- cases 15-19: pull -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pass", "redir"])
async def test_cases_15_17_pull_1_2_test_send(mode: Mode) -> None:
    """pull 1..2 with pass (15) or redirect (17): payload unchanged (on 1-byte
    messages the pull fails with EINVAL, which the program ignores)."""
    async with open_runtime(), open_topology(mode, pull=(1, 2)) as ts:
        assert await run_shape(ts, TEST_SEND) == TEST_SEND_TOTALS


async def test_case_16_pull_4096_9182_send_large() -> None:
    seen: list[bytes] = []

    def program(msg: sk.SkMsg) -> int:
        assert sk.msg_pull_data(msg, 4096, 9182, 0) == 0
        seen.append(bytes(msg.data))
        return sk.SK_PASS

    async with open_runtime(), open_topology("pass", program=program) as ts:
        assert await run_shape(ts, SEND_LARGE) == [524288]
    assert seen == [payload(262144)[4096:9182]] * 2


@pytest.mark.parametrize("mode", ["pass", "redir"])
async def test_cases_18_19_pull_1_2_cork_512_send_many(mode: Mode) -> None:
    """pull 1..2 + cork 512, pass (18) or redirect (19): what arrives is the
    payload, intact; with the cork the tail below 512 B stays corked."""
    async with open_runtime(), open_topology(mode, pull=(1, 2), cork=512) as ts:
        chunks = [payload(n * c) for n, c, rate in SEND_MANY for _ in range(rate)]
        whole = b"".join(chunks)
        for chunk in chunks:
            await ts.c1.send_all(chunk)  # small: never blocks
        held = corked(ts.c1)
        assert 0 <= held < 512
        got = await read_exact(ts.p2, len(whole) - held)
        assert got == whole[: len(got)]
        await assert_quiet(ts.p2)


# -- cases 20-28: pop and push ---------------------------------------------------------------


def pop_1_2(chunk: bytes) -> bytes:
    return chunk[:1] + chunk[3:]


@pytest.mark.parametrize("mode", ["pass", "redir"])
async def test_cases_20_22_pop_1_2_send_many(mode: Mode) -> None:
    """pop(1, 2), pass (20) or redirect (22), fixed tree: each 3-B message
    arrives as ``00`` (512 B), each 5-B one as ``00 03 04`` (300 B)."""
    async with open_runtime(), open_topology(mode, pop=(1, 2)) as ts:
        assert await run_shape(ts, SEND_MANY, pop_1_2) == [512, 300]


async def test_case_21_pop_4096_4096_send_large() -> None:
    """Bytes [4096, 8192) of each send are missing: 516096 B."""
    async with open_runtime(), open_topology("pass", pop=(4096, 4096)) as ts:
        totals = await run_shape(ts, SEND_LARGE, lambda c: c[:4096] + c[8192:])
        assert totals == [524288 - 8192]


@pytest.mark.parametrize(("mode", "cork"), [("pass", 512), ("redir", 4)])
async def test_cases_23_24_pop_with_cork(mode: Mode, cork: int) -> None:
    """pop(1, 2) + cork 512 (23) / + redirect + cork 4 (24): every send passes;
    every program run popped 2 bytes, so what p2 gets plus what is still
    corked is the rest (the layout is not checked, as in the selftest)."""
    async with open_runtime(), open_topology(mode, pop=(1, 2), cork=cork) as ts:
        chunks = [payload(n * c) for n, c, rate in SEND_MANY for _ in range(rate)]
        for chunk in chunks:
            await ts.c1.send_all(chunk)  # no error
        assert ts.txmsg is not None
        due = 1536 + 500 - 2 * ts.txmsg.run_cnt - corked(ts.c1)
        await read_exact(ts.p2, due)
        await assert_quiet(ts.p2)


def push_1_1(chunk: bytes) -> bytes:
    return chunk[:1] + b"\x00" + chunk[1:]


async def test_case_25_push_1_1_test_send() -> None:
    """Every sendmsg grows by 1 B inserted after byte 0 (fixed tree: also the
    1-byte sends, pushing at ``start == size``): totals 2, 1025, 1025, 2048,
    600, 524290; original bytes intact and in order; pushed bytes are zeros."""
    async with open_runtime(), open_topology("pass", push=(1, 1)) as ts:
        assert await run_shape(ts, TEST_SEND, push_1_1) == [2, 1025, 1025, 2048, 600, 524290]


async def test_case_26_push_4096_4096_send_large() -> None:
    async with open_runtime(), open_topology("pass", push=(4096, 4096)) as ts:
        totals = await run_shape(ts, SEND_LARGE, lambda c: c[:4096] + bytes(4096) + c[4096:])
        assert totals == [524288 + 8192]


async def test_case_27_push_1_2_redirect_send_many() -> None:
    """3-B messages become ``00 ? ? 01 02`` (2560 B), 5-B ones 7 B (700 B)."""
    async with open_runtime(), open_topology("redir", push=(1, 2)) as ts:
        totals = await run_shape(ts, SEND_MANY, lambda c: c[:1] + bytes(2) + c[1:])
        assert totals == [2560, 700]


async def test_case_28_push_1_2_cork_512_send_many() -> None:
    """Every send passes; each run pushed 2 B (layout not checked, as in the selftest)."""
    async with open_runtime(), open_topology("pass", push=(1, 2), cork=512) as ts:
        chunks = [payload(n * c) for n, c, rate in SEND_MANY for _ in range(rate)]
        for chunk in chunks:
            await ts.c1.send_all(chunk)
        assert ts.txmsg is not None
        due = 1536 + 500 + 2 * ts.txmsg.run_cnt - corked(ts.c1)
        await read_exact(ts.p2, due)
        await assert_quiet(ts.p2)


# -- cases 29-34: push then pop in one run ----------------------------------------------------

J = b"\x00"  # the "unspecified" pushed bytes: zeros in skmsg


@pytest.mark.parametrize(
    ("push", "pop", "layout", "delta"),
    [
        ((1, 10), (5, 4), lambda o: o[:1] + J * 6 + o[1:], +6),
        ((1, 10), (5, 16), lambda o: o[:1] + J * 4 + o[11:], -6),
        ((5, 4), (1, 10), lambda o: o[:1] + o[7:], -6),
        ((5, 16), (1, 10), lambda o: o[:1] + J * 10 + o[5:], +6),
        ((1, 10), (16, 4), lambda o: o[:1] + J * 10 + o[1:6] + o[10:], +6),
        ((16, 10), (5, 4), lambda o: o[:5] + o[9:16] + J * 10 + o[16:], +6),
    ],
    ids=["case29", "case30", "case31", "case32", "case33", "case34"],
)
async def test_cases_29_34_push_then_pop_send_large(
    push: tuple[int, int], pop: tuple[int, int], layout: Transform, delta: int
) -> None:
    """push then pop in one run, on each 262144-B send: the exact layout of
    reference §7 (pushed bytes zeros), ``delta`` bytes more or fewer per send."""
    async with open_runtime(), open_topology("pass", push=push, pop=pop) as ts:
        assert await run_shape(ts, SEND_LARGE, layout) == [2 * (262144 + delta)]


# -- a DROP after part of a send passed (kernel behaviour we reproduce) ----------------------


async def test_drop_after_partial_pass_says_what_was_accepted() -> None:
    """apply 3: the first 3 B pass, the next run drops. The kernel's sendmsg
    returns 7 for a 10-B send (copied minus the dropped window) and delivers
    3 B (docs/kernel-differences.md); ``send_all`` raises EACCES saying 3 B were
    accepted and 7 counted."""
    verdicts = iter([sk.SK_PASS, sk.SK_DROP])

    def program(msg: sk.SkMsg) -> int:
        sk.msg_apply_bytes(msg, 3)
        return next(verdicts)

    async with open_runtime(), open_topology("pass", program=program) as ts:
        with pytest.raises(skmsg_tcp.SendError) as info:
            await ts.c1.send_all(b"abcdefghij")
        assert info.value.errno == errno.EACCES
        assert (info.value.accepted, info.value.sent) == (3, 7)
        assert await read_exact(ts.p2, 3) == b"abc"
        await assert_quiet(ts.p2)


# -- cases 53, 55, 67: SK_MSG redirects between connected pairs -----------------------------


@pytest.mark.parametrize("attach", ["prog_attach", "link"])
async def test_case_53_msg_redirect_to_connected(attach: str) -> None:
    """sockmap_listen "redir to connected" (SK_MSG): p0 at key 0, p1 at key 1;
    p1 writes "a", its verdict redirects egress to p0 ⇒ c0 receives 1 B, one
    successful verdict. Also with a bpf_link attach."""
    async with open_runtime():
        c0, p0 = await tcp_stream_pair()
        c1, p1 = await tcp_stream_pair()
        m = sk.SockMap(max_entries=2)

        def verdict(msg: sk.SkMsg) -> int:
            return sk.msg_redirect_map(msg, m, 0, 0)

        if attach == "link":
            prog = m.link_create(verdict, sk.SK_MSG_VERDICT).prog
        else:
            prog = m.attach(verdict, sk.SK_MSG_VERDICT)
        assert prog is not None
        async with c0, p0, c1, p1:
            m.update(0, p0)
            m.update(1, p1)
            await p1.send_all(b"a")
            assert await read_exact(c0, 1) == b"a"
            await assert_quiet(c0)
            await assert_quiet(c1)
            assert (prog.redirected, prog.dropped) == (1, 0)
            m.close()


async def test_case_55_msg_redirect_to_listening_is_eacces() -> None:
    """sockmap_listen "redir to listening" (SK_MSG): listener s at key 0, p at
    key 1; p writes "a" ⇒ the helper refuses a listener (SK_DROP), the write
    fails EACCES, drop count 1; nothing arrives."""
    async with open_runtime():
        s = await open_listener()
        async with s:
            c, p = await tcp_pair(s)
            async with c, p:
                m = sk.SockMap(max_entries=2)
                prog = m.attach(lambda msg: sk.msg_redirect_map(msg, m, 0, 0), sk.SK_MSG_VERDICT)
                m.update(0, s)
                m.update(1, p)
                with pytest.raises(PermissionError) as info:
                    await p.send_all(b"a")
                assert info.value.errno == errno.EACCES
                assert isinstance(info.value, skmsg_tcp.SendError)
                assert info.value.accepted == 0
                assert (prog.dropped, prog.redirected, prog.passed) == (1, 0, 0)
                await assert_quiet(c)
                m.close()


async def test_case_67_msg_verdict_redirect_ingress_then_egress() -> None:
    """sockmap_basic msg_verdict redirect: p1 sends 256 B; redirect to key 1
    (c1) with BPF_F_INGRESS ⇒ c1 receives 256 B; to key 2 (p0) egress ⇒ c0
    receives 256 B; each twice in a row."""
    async with open_runtime():
        c0, p0 = await tcp_stream_pair()
        c1, p1 = await tcp_stream_pair()
        async with c0, p0, c1, p1:
            m = sk.SockMap(max_entries=3)
            target = {"key": 1, "flags": sk.BPF_F_INGRESS}
            prog = m.attach(
                lambda msg: sk.msg_redirect_map(msg, m, target["key"], target["flags"]),
                sk.SK_MSG_VERDICT,
            )
            m.update(0, p1)
            m.update(1, c1)
            m.update(2, p0)
            data = payload(256)
            for _ in range(2):
                await p1.send_all(data)
                assert await read_exact(c1, 256) == data
            target.update(key=2, flags=0)
            for _ in range(2):
                await p1.send_all(data)
                assert await read_exact(c0, 256) == data
            await assert_quiet(c0)
            await assert_quiet(c1)
            assert p1.bytes_sent == 0  # nothing left through p1's own connection
            assert prog.redirected == 4
            m.close()
