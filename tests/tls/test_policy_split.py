"""A forbidden pattern cannot slip through a TLS stream by being split across
sends or records: the verdict sees one record at a time, and ``PatternGuard``'s
per-socket state (or nothing) is what stands between the halves. Real loopback
connections, real records; hypothesis chooses the splits."""

from __future__ import annotations

import errno

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_core.runtime import open_runtime
from skmsg_core.testing import aclose_all
from skmsg_tcp import SendError, SkStream
from skmsg_tcp.testing import tcp_stream_pair

from ._ulp_helpers import enable_both

SECRET = b"SECRET"
Case = tuple[bytes, list[tuple[bytes, bool]]]
FILLER = st.binary(max_size=40).map(lambda b: b.replace(b"S", b"s"))


@st.composite
def split_payloads(draw: st.DrawFn) -> tuple[bytes, list[tuple[bytes, bool]]]:
    """A payload (with the secret somewhere, or not), cut into sends at random
    places, each with a random ``more`` flag (records then span sends)."""
    before, after = draw(FILLER), draw(FILLER)
    payload = before + SECRET + after if draw(st.booleans()) else before + after
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(payload) - 1)), max_size=8)))
    pieces = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    pieces = [p for p in pieces if p]
    mores = [draw(st.booleans()) for _ in pieces]
    return payload, [(p, m) for p, m in zip(pieces, mores, strict=True)]


async def drain(stream: SkStream) -> bytes:
    got = bytearray()
    with trio.fail_after(10):  # ends at the EOF that follows every case
        while chunk := await stream.receive_some():
            got += chunk
    return bytes(got)


def _check_prefix(payload: bytes, got: bytes, had_secret: bool) -> None:
    assert SECRET not in got
    assert payload.startswith(got)  # nothing reordered, nothing invented
    if had_secret:
        assert len(got) < payload.index(SECRET) + len(SECRET)


SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(case=split_payloads())
async def test_egress_guard_stops_a_split_secret(case: Case) -> None:
    payload, sends = case
    guard = tls.PatternGuard(SECRET)

    def egress(msg: sk.SkMsg) -> int:
        return sk.SK_DROP if guard.matches(msg) else sk.SK_PASS

    async with open_runtime():
        a, b = await tcp_stream_pair()
        smap = sk.SockMap(max_entries=1)
        try:
            smap.attach(egress, sk.SK_MSG_VERDICT)
            smap.update(0, a)
            await enable_both(a, b)
            dropped = False
            for piece, more in sends:
                try:
                    await a.send_all(piece, more=more)
                except SendError as exc:
                    assert exc.errno == errno.EACCES
                    dropped = True
                    break
            if not dropped:
                try:
                    await a.send_all(b"")  # close a record the last more=True left open
                except SendError:
                    dropped = True
            await a.send_eof()
            got = await drain(b)
            _check_prefix(payload, got, SECRET in payload)
            assert dropped == (SECRET in payload)
        finally:
            smap.close()
            await aclose_all((a, b))


@SETTINGS
@given(case=split_payloads())
async def test_ingress_guard_stops_a_split_secret(case: Case) -> None:
    payload, sends = case
    guard = tls.PatternGuard(SECRET)

    def ingress(skb: sk.SkBuff) -> int:
        return sk.SK_DROP if guard.matches(skb) else sk.SK_PASS

    async with open_runtime():
        a, b = await tcp_stream_pair()
        smap = sk.SockMap(max_entries=1)
        try:
            smap.attach(ingress, sk.SK_SKB_STREAM_VERDICT)
            smap.update(0, b)
            await enable_both(a, b)
            for piece, more in sends:  # the sender has no policy: every piece goes
                await a.send_all(piece, more=more)
            await a.send_all(b"")
            await a.send_eof()
            got = await drain(b)
            _check_prefix(payload, got, SECRET in payload)
            assert guard.matched(b) == (SECRET in payload)
        finally:
            smap.close()
            await aclose_all((a, b))


async def test_a_stateless_check_per_record_is_bypassed_by_a_split() -> None:
    """Why the guard exists: looking at each record alone lets the halves through."""

    def naive(skb: sk.SkBuff) -> int:
        return sk.SK_DROP if SECRET in bytes(skb.data) else sk.SK_PASS

    async with open_runtime():
        a, b = await tcp_stream_pair()
        smap = sk.SockMap(max_entries=1)
        try:
            smap.attach(naive, sk.SK_SKB_STREAM_VERDICT)
            smap.update(0, b)
            await enable_both(a, b)
            await a.send_all(b"the SEC")
            await a.send_all(b"RET plan")
            await a.send_eof()
            assert await drain(b) == b"the SECRET plan"
        finally:
            smap.close()
            await aclose_all((a, b))


async def test_a_record_cut_at_16k_cannot_hide_the_secret_from_the_guard() -> None:
    guard = tls.PatternGuard(SECRET)

    def egress(msg: sk.SkMsg) -> int:
        return sk.SK_DROP if guard.matches(msg) else sk.SK_PASS

    async with open_runtime():
        a, b = await tcp_stream_pair()
        smap = sk.SockMap(max_entries=1)
        try:
            smap.attach(egress, sk.SK_MSG_VERDICT)
            smap.update(0, a)
            await enable_both(a, b)
            payload = b"x" * (16384 - 3) + SECRET  # "SEC" ends record 1, "RET" starts 2
            with pytest.raises(SendError) as info:
                await a.send_all(payload)
            assert info.value.accepted == 16384
            await a.send_eof()
            got = await drain(b)
            assert got == payload[:16384] and SECRET not in got
            assert guard.matched(a)
        finally:
            smap.close()
            await aclose_all((a, b))


def test_guard_rejects_empty_patterns() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        tls.PatternGuard()
    with pytest.raises(ValueError, match="non-empty"):
        tls.PatternGuard(b"")


def test_guard_ignore_case_and_sticky_on_a_bare_context() -> None:
    guard = tls.PatternGuard(b"/Admin", ignore_case=True)
    skb = sk.SkBuff()
    assert not guard.matches(skb.reset(memoryview(b"GET /ad")))
    assert guard.matches(skb.reset(memoryview(b"MIN HTTP/1.1")))
    assert guard.matches(skb.reset(memoryview(b"anything")))  # sticky: fail closed
