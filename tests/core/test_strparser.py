"""strparser: framing, the kernel's length rules, errors and buffer ownership."""

from __future__ import annotations

import array
import errno
import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skmsg_core._errors import StrParserError
from skmsg_core._skb import SkBuff
from skmsg_core._strparser import StrParser, StrParserStats

_HDR = struct.Struct(">I")


def length_prefixed(ctx: SkBuff) -> int:
    """A 4-byte big-endian length, then that many bytes."""
    if ctx.len < 4:
        return 0
    return 4 + int(_HDR.unpack_from(ctx.data)[0])


def line(ctx: SkBuff) -> int:
    """A message ends at a newline: needs more until one arrives."""
    return bytes(ctx.data).find(b"\n") + 1


def frame(payload: bytes) -> bytes:
    return _HDR.pack(len(payload)) + payload


def constant(n: int) -> tuple[list[SkBuff], list[bytes], Callable[[SkBuff], int]]:
    """A parser returning ``n``, recording the context and the bytes it saw."""
    ctxs: list[SkBuff] = []
    seen: list[bytes] = []

    def parse(ctx: SkBuff) -> int:
        ctxs.append(ctx)
        seen.append(bytes(ctx.data))
        assert ctx.len == ctx.data.nbytes
        return n

    return ctxs, seen, parse


def feed_all(sp: StrParser, chunks: list[bytes]) -> list[bytes]:
    return [bytes(m) for chunk in chunks for m in sp.feed(chunk)]


def test_length_prefixed_one_feed() -> None:
    sp = StrParser(length_prefixed)
    msgs = sp.feed(frame(b"hello") + frame(b"") + frame(b"world!"))
    assert [bytes(m) for m in msgs] == [frame(b"hello"), frame(b""), frame(b"world!")]
    assert all(m.readonly for m in msgs)
    assert sp.pending == 0
    assert sp.statistics() == StrParserStats(
        msgs=3, bytes=9 + 4 + 10, need_more=0, msg_too_big=0, bad_hdr_len=0, errors=0
    )


def test_kernel_512_in_two_256_byte_feeds() -> None:
    _, seen, parse = constant(512)
    sp = StrParser(parse)
    assert sp.feed(b"a" * 256) == []
    assert sp.pending == 256
    msgs = sp.feed(b"b" * 256)
    assert [bytes(m) for m in msgs] == [b"a" * 256 + b"b" * 256]
    assert sp.pending == 0
    assert seen == [b"a" * 256]  # the length is known: not asked again


def test_kernel_parser_10_one_20_byte_feed() -> None:
    ctxs, seen, parse = constant(10)
    sp = StrParser(parse)
    data = bytes(range(20))
    msgs = sp.feed(data)
    assert [bytes(m) for m in msgs] == [data[:10], data[10:]]
    assert sp.pending == 0
    assert seen == [data, data[10:]]  # from each message's start
    assert all(c is ctxs[0] for c in ctxs)  # one context, reused
    assert isinstance(ctxs[0], SkBuff)
    assert ctxs[0].sk is None


def test_kernel_parser_3_leaves_the_4th_byte_pending() -> None:
    _, seen, parse = constant(3)
    sp = StrParser(parse)
    assert [bytes(m) for m in sp.feed(b"abc\0")] == [b"abc"]
    assert sp.pending == 1
    assert seen == [b"abc\0", b"\0"]
    assert [bytes(m) for m in sp.feed(b"de")] == [b"\0de"]
    assert sp.pending == 0


message_lists = st.lists(st.binary(max_size=40), max_size=20)


@given(message_lists, st.data())
def test_any_split_gives_the_same_messages(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    sp = StrParser(length_prefixed)
    assert feed_all(sp, chunks) == [frame(p) for p in payloads]
    assert sp.pending == 0
    stats = sp.statistics()
    assert (stats.msgs, stats.bytes, stats.errors) == (len(payloads), len(stream), 0)


@given(message_lists)
def test_one_byte_feeds_give_the_same_messages(payloads: list[bytes]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    sp = StrParser(length_prefixed)
    assert feed_all(sp, [stream[i : i + 1] for i in range(len(stream))]) == [
        frame(p) for p in payloads
    ]
    assert sp.pending == 0


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"") + b"\n")), st.data())
def test_need_more_until_terminator_any_split(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    sp = StrParser(line)
    assert feed_all(sp, chunks) == lines
    assert sp.pending == 0


def test_excess_after_accumulated_message_is_parsed() -> None:
    sp = StrParser(length_prefixed)
    a, b, c = frame(b"first"), frame(b"second"), frame(b"third")
    assert sp.feed(a[:2]) == []
    assert [bytes(m) for m in sp.feed(a[2:] + b + c[:5])] == [a, b]
    assert sp.pending == 5
    assert [bytes(m) for m in sp.feed(c[5:])] == [c]
    assert sp.statistics().need_more == 1


def test_emitted_views_unchanged_after_later_feeds() -> None:
    sp = StrParser(length_prefixed)
    a, b, c, d = (frame(bytes([i]) * (10 + i)) for i in range(4))
    kept = sp.feed(a + b[:3])  # zero-copy slice of the chunk
    kept += sp.feed(b[3:8])
    kept += sp.feed(b[8:] + c[:7])  # from the accumulator
    kept += sp.feed(c[7:] + d + a[:1])
    kept += sp.feed(a[1:])
    assert [bytes(m) for m in kept] == [a, b, c, d, a]
    for _ in range(3):
        sp.feed(frame(b"\xff" * 50)[:30])
        sp.feed(frame(b"\xff" * 50)[30:])
    assert [bytes(m) for m in kept] == [a, b, c, d, a]
    assert all(m.readonly for m in kept)


def test_partial_bytes_are_copied_out_of_the_callers_buffer() -> None:
    sp = StrParser(length_prefixed)
    msg = frame(b"payload")
    buf = bytearray(msg[:6])
    assert sp.feed(buf) == []
    buf.clear()  # no view of it is kept: it can be resized and reused
    buf += b"\0" * 3
    assert [bytes(m) for m in sp.feed(memoryview(msg)[6:])] == [msg]


def test_feed_takes_any_contiguous_buffer() -> None:
    sp = StrParser(constant(2)[2])
    msgs = sp.feed(memoryview(array.array("H", [1, 2])))
    assert [bytes(m) for m in msgs] == [struct.pack("=H", 1), struct.pack("=H", 2)]
    assert sp.feed(b"") == []


def test_parser_keeping_a_slice_does_not_break_parsing() -> None:
    kept: list[memoryview] = []

    def hoarder(ctx: SkBuff) -> int:
        kept.append(ctx.data[:4])  # breaks the "do not keep it" contract
        return length_prefixed(ctx)

    payloads = [b"x" * 7, b"", b"yz" * 20]
    stream = b"".join(frame(p) for p in payloads)
    sp = StrParser(hoarder)
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert feed_all(sp, chunks) == [frame(p) for p in payloads]
    assert sp.pending == 0
    heads = {bytes(k) for k in kept if k.nbytes == 4}
    assert heads <= {frame(p)[:4] for p in payloads}  # the kept slices are not overwritten


def test_accumulator_grows_in_place_and_is_not_rejoined() -> None:
    calls: list[object] = []

    def parse(ctx: SkBuff) -> int:
        calls.append(ctx.data.obj)
        return length_prefixed(ctx)

    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = frame(payload)
    sp = StrParser(parse, max_msg_size=len(stream))
    out = sp.feed(stream[:1]) + sp.feed(stream[1:2])
    for i in range(2, len(stream), 1000):
        out += sp.feed(stream[i : i + 1000])
    assert len(out) == 1
    assert out[0] == stream
    assert sp.pending == 0
    # On 1 byte (the chunk), 2 and 1002 bytes (accumulated); never after the length.
    assert len(calls) == 3
    # The message is the very buffer the program saw, grown in place, not a re-join.
    assert isinstance(calls[1], bytearray)
    assert calls[1] is calls[2] is out[0].obj
    assert sp.statistics() == StrParserStats(1, len(stream), 2, 0, 0, 0)


def test_emsgsize() -> None:
    sp = StrParser(constant(101)[2], max_msg_size=100)
    with pytest.raises(StrParserError) as info:
        sp.feed(b"x" * 200)
    assert info.value.errno == errno.EMSGSIZE
    assert isinstance(info.value, ConnectionError)
    assert "101" in str(info.value)
    assert "parse" in str(info.value)  # names the program
    stats = sp.statistics()
    assert (stats.msg_too_big, stats.errors, stats.msgs) == (1, 1, 0)
    StrParser(constant(100)[2], max_msg_size=100).feed(b"x" * 100)


@pytest.mark.parametrize(("answer", "ok"), [(4, False), (5, False), (6, True)])
def test_bad_hdr_len(answer: int, ok: bool) -> None:
    def parse(ctx: SkBuff) -> int:
        return 0 if ctx.len < 8 else answer

    sp = StrParser(parse)
    assert sp.feed(b"12345") == []
    if ok:
        assert [bytes(m) for m in sp.feed(b"67890")] == [b"123456"]
        assert sp.pending == 4
        return
    with pytest.raises(StrParserError) as info:
        sp.feed(b"67890")
    assert info.value.errno == errno.EPROTO
    assert f"returned {answer}" in str(info.value)
    assert sp.statistics().bad_hdr_len == 1
    assert sp.pending == 0


def test_negative_return_is_that_errno() -> None:
    def refuse(ctx: SkBuff) -> int:
        return -errno.ECONNRESET

    sp = StrParser(refuse)
    with pytest.raises(StrParserError) as info:
        sp.feed(b"abc")
    assert info.value.errno == errno.ECONNRESET
    assert "refuse" in str(info.value)
    assert "ECONNRESET" in str(info.value)


def test_estrpipe_without_bytes_accumulated_stays_estrpipe() -> None:
    sp = StrParser(constant(-errno.ESTRPIPE)[2])
    with pytest.raises(StrParserError) as info:
        sp.feed(b"abc")
    assert info.value.errno == errno.ESTRPIPE


def test_estrpipe_with_bytes_accumulated_becomes_enodata() -> None:
    def parse(ctx: SkBuff) -> int:
        return 0 if ctx.len < 4 else -errno.ESTRPIPE

    sp = StrParser(parse)
    assert sp.feed(b"ab") == []
    with pytest.raises(StrParserError) as info:
        sp.feed(b"cd")
    assert info.value.errno == errno.ENODATA


def test_raising_program_is_eproto_chained() -> None:
    boom = ValueError("boom")

    def explode(ctx: SkBuff) -> int:
        raise boom

    sp = StrParser(explode)
    with pytest.raises(StrParserError) as info:
        sp.feed(b"abc")
    assert info.value.errno == errno.EPROTO
    assert info.value.__cause__ is boom
    assert "explode" in str(info.value)
    assert "boom" in str(info.value)


def test_raising_program_on_the_accumulator_is_eproto_chained() -> None:
    def parse(ctx: SkBuff) -> int:
        if ctx.len < 4:
            return 0
        raise KeyError("late")

    sp = StrParser(parse)
    sp.feed(b"ab")
    with pytest.raises(StrParserError) as info:
        sp.feed(b"cd")
    assert info.value.errno == errno.EPROTO
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("bad", [None, "12", 1.5, True, False, b"\x01"])
@pytest.mark.parametrize("accumulated", [False, True])
def test_non_int_return_is_eproto(bad: object, accumulated: bool) -> None:
    def parse(ctx: SkBuff) -> object:
        return 0 if accumulated and ctx.len < 2 else bad

    sp = StrParser(parse)  # type: ignore[arg-type]
    if accumulated:
        sp.feed(b"a")
    with pytest.raises(StrParserError) as info:
        sp.feed(b"bc")
    assert info.value.errno == errno.EPROTO
    assert repr(bad) in str(info.value)


def test_error_is_sticky() -> None:
    calls: list[int] = []

    def parse(ctx: SkBuff) -> int:
        calls.append(ctx.len)
        return 0 if ctx.len < 4 else 2

    sp = StrParser(parse)
    sp.feed(b"ab")
    with pytest.raises(StrParserError) as first:
        sp.feed(b"cd")
    assert sp.error is first.value
    assert sp.pending == 0
    for data in (b"", b"xyz", frame(b"ok")):
        with pytest.raises(StrParserError) as again:
            sp.feed(data)
        assert again.value is first.value
    assert calls == [2, 4]  # never run again
    assert sp.statistics().errors == 1


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="max_msg_size"):
        StrParser(length_prefixed, max_msg_size=0)
    with pytest.raises(TypeError, match="not callable"):
        StrParser(42)  # type: ignore[arg-type]
    assert StrParser(length_prefixed).error is None


def test_need_more_is_bounded_by_max_msg_size() -> None:
    """A parse program that never finds a length cannot make the parser hold
    more than max_msg_size bytes (found by the CLI work: 10 MiB held before)."""
    p = StrParser(lambda skb: 0, max_msg_size=1000)
    for _ in range(15):
        p.feed(bytes(64))  # 960 bytes held: still allowed
    assert p.pending == 960
    with pytest.raises(StrParserError) as info:
        p.feed(bytes(64))
    assert info.value.errno == errno.EMSGSIZE and p.pending == 0
    q = StrParser(lambda skb: 0, max_msg_size=100)
    with pytest.raises(StrParserError) as info:
        q.feed(bytes(101))  # one chunk, length still unknown
    assert info.value.errno == errno.EMSGSIZE
    assert q.statistics().msg_too_big == 1


# -- the built-in length-prefix parser ---------------------------------------------------


def _framed(bodies: list[bytes], size: int, order: str) -> bytes:
    return b"".join(len(b).to_bytes(size, order) + b for b in bodies)  # type: ignore[arg-type]


@given(
    bodies=st.lists(st.binary(max_size=40), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
    size=st.sampled_from([1, 2, 4, 8]),
    order=st.sampled_from(["big", "little"]),
)
def test_native_framing_equals_running_the_program(
    bodies: list[bytes], cuts: list[int], size: int, order: str
) -> None:
    from skmsg_core import LengthPrefixParser

    prog = LengthPrefixParser(size, order)
    stream = _framed(bodies, size, order)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    native, generic = StrParser(prog, native=prog), StrParser(prog)
    got_native = [bytes(m) for c in chunks for m in native.feed(c)]
    got_generic = [bytes(m) for c in chunks for m in generic.feed(c)]
    want = [len(b).to_bytes(size, order) + b for b in bodies]  # type: ignore[arg-type]
    assert got_native == got_generic == want
    assert native.pending == generic.pending == 0


@given(
    stream=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
    size=st.sampled_from([1, 2, 4, 8]),
    order=st.sampled_from(["big", "little"]),
    max_msg_size=st.sampled_from([1, 9, 64, 1 << 20]),
)
def test_native_framing_equals_the_program_on_any_bytes(
    stream: bytes, cuts: list[int], size: int, order: str, max_msg_size: int
) -> None:
    """Arbitrary bytes, so prefixes that point past the chunk, past any index
    (an 8-byte prefix near 2**64) or past ``max_msg_size``: the native walk
    frames, holds and refuses exactly as running the program does."""
    from skmsg_core import LengthPrefixParser

    prog = LengthPrefixParser(size, order)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]

    def run(parser: StrParser) -> tuple[list[bytes], int, int | None]:
        got: list[bytes] = []
        for c in chunks:
            try:
                got += [bytes(m) for m in parser.feed(c)]
            except StrParserError as exc:
                got += [bytes(m) for m in exc.messages]
                return got, parser.pending, exc.errno
        return got, parser.pending, None

    native = StrParser(prog, native=prog, max_msg_size=max_msg_size)
    generic = StrParser(prog, max_msg_size=max_msg_size)
    assert run(native) == run(generic)


def test_native_framing_counts_runs_and_refuses_oversized() -> None:
    from skmsg_core import LengthPrefixParser

    prog = LengthPrefixParser(4)
    p = StrParser(prog, native=prog, max_msg_size=100)
    msgs = p.feed(_framed([b"ab", b"cde"], 4, "big") + b"\x00\x00")
    assert [bytes(m) for m in msgs] == [b"\x00\x00\x00\x02ab", b"\x00\x00\x00\x03cde"]
    assert p.take_native_runs() == 3 and p.take_native_runs() == 0  # two messages, one wait
    with pytest.raises(StrParserError) as info:
        p.feed(b"\x01\x00")  # completes the header 00 00 01 00: 4 + 256 > 100
    assert info.value.errno == errno.EMSGSIZE
    with pytest.raises(ValueError, match="1, 2, 4 or 8"):
        LengthPrefixParser(3)
    with pytest.raises(ValueError, match="byteorder"):
        LengthPrefixParser(4, "middle")
    skb = SkBuff()
    assert prog(skb.reset(memoryview(b"\x00\x00"))) == 0
    assert prog(skb.reset(memoryview(b"\x00\x00\x00\x05"))) == 9


def test_psock_counts_native_runs_on_the_program() -> None:
    import skmsg_core as sk

    m = sk.SockMap(max_entries=1)
    parser = m.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
    verdict = m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    s = sk.Sock(sk.SkProtoBase(), state=sk.TcpState.ESTABLISHED)
    m.update(0, s)
    assert s.psock is not None and s.psock.strp is not None
    [action] = s.psock.rx_feed(_framed([b"x", b"yy", b"zzz"], 4, "big"))
    assert action.msgs == 3 and verdict.run_cnt == 3
    assert parser.run_cnt == 3  # the native loop stood in for three runs


def test_native_framing_refuses_an_oversized_header_wherever_it_lands() -> None:
    """EMSGSIZE as soon as a too-big length is read: in a chunk's partial tail
    (regression: the span fast path once held it as pending), and inside a chunk
    bigger than max_msg_size; the messages before it are still handed on."""
    from skmsg_core import LengthPrefixParser

    prog = LengthPrefixParser(2)
    tail = StrParser(prog, native=prog, max_msg_size=50)
    with pytest.raises(StrParserError) as info:
        tail.feed(b"\x00\x01a" + b"\x00\xff" + b"x")  # 2 + 255 > 50, only 1 body byte here
    assert info.value.errno == errno.EMSGSIZE
    assert [bytes(m) for m in info.value.messages] == [b"\x00\x01a"]
    assert tail.pending == 0 and tail.statistics().msg_too_big == 1
    inside = StrParser(prog, native=prog, max_msg_size=10)
    with pytest.raises(StrParserError) as info:
        inside.feed(b"\x00\x01a" + b"\x00\x0c" + bytes(12) + b"\x00\x01b")  # 14 > 10
    assert info.value.errno == errno.EMSGSIZE
    assert [bytes(m) for m in info.value.messages] == [b"\x00\x01a"]


@given(
    bodies=st.lists(st.binary(max_size=40), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=6),
    max_size=st.integers(min_value=1, max_value=60),
)
def test_native_framing_errors_equal_running_the_program(
    bodies: list[bytes], cuts: list[int], max_size: int
) -> None:
    """With any max_msg_size, the native loop hands on the same messages and
    fails with the same errno on the same chunk as running the program."""
    from skmsg_core import LengthPrefixParser

    prog = LengthPrefixParser(2)
    stream = _framed(bodies, 2, "big")
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]

    def run(p: StrParser) -> list[object]:
        seen: list[object] = []
        for c in chunks:
            try:
                seen.append([bytes(m) for m in p.feed(c)])
            except StrParserError as exc:
                seen.append((exc.errno, [bytes(m) for m in exc.messages]))
                break
        return seen

    native = StrParser(prog, native=prog, max_msg_size=max_size)
    generic = StrParser(prog, max_msg_size=max_size)
    assert run(native) == run(generic)
    assert native.statistics() == generic.statistics()
