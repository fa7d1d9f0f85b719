"""The sk_msg ring (``struct sk_msg``) against a plain ``bytearray`` model.

A hypothesis state machine drives one small :class:`SkMsg` (3..17 slots, an
8..64-byte page frag, so rings fill and elements split) through appends, the
msg helpers, apply-style consumption and the data window, and after every
step checks the bytes, the ring indices, the copy bits, the window and the
exact element layout each helper must produce (reference §1.1 and §3).
Plain tests below cover filling, construction errors, consuming and the
writability of the window.
"""

from __future__ import annotations

import array
import errno
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from skmsg_core._helpers import (
    msg_apply_bytes,
    msg_cork_bytes,
    msg_pop_data,
    msg_pull_data,
    msg_push_data,
)
from skmsg_core._ring import PageFrag, Sge, SkMsg

EINVAL = -errno.EINVAL
U32 = 0xFFFFFFFF
FLAGS = st.sampled_from([0, 0, 0, 0, 1, 2**63])

# What one element must look like after an operation:
#   ("piece", buf, offset, length, copy): a window on a buffer the ring already held;
#   ("fresh", length): a new private buffer (copy bit clear) that no element held.
Expect = tuple[Any, ...]


def payload(n: int) -> bytes:
    """test_sockmap's payload: byte j is ``j mod 256``."""
    return bytes(j % 256 for j in range(n))


def same(e: Sge) -> Expect:
    return ("piece", e.buf, e.offset, e.length, e.copy)


def layout(msg: SkMsg) -> list[tuple[int, Sge]]:
    """Each element with its message offset."""
    out, off = [], 0
    for e in msg._elems:
        out.append((off, e))
        off += e.length
    return out


def holding(msg: SkMsg, pos: int) -> tuple[int, int, Sge]:
    """Index, message offset and element of the element holding byte ``pos``."""
    for i, (off, e) in enumerate(layout(msg)):
        if off <= pos < off + e.length:
            return i, off, e
    raise AssertionError(f"no element holds byte {pos}")


def check_elements(msg: SkMsg, expected: list[Expect], old_bufs: list[memoryview]) -> None:
    got = list(msg._elems)
    assert len(got) == len(expected), (got, expected)
    for e, want in zip(got, expected, strict=True):
        if want[0] == "piece":
            assert e.buf is want[1], (e, want)
            assert (e.offset, e.length, e.copy) == want[2:], (e, want)
        else:
            assert all(e.buf is not b for b in old_bufs), f"{e} reuses a buffer"
            assert (e.length, e.copy) == (want[1], False), (e, want)


class RingMachine(RuleBasedStateMachine):
    """One SkMsg and its model: the bytes, a copy bit per byte, the window."""

    @initialize(max_frags=st.integers(3, 17), frag_size=st.integers(8, 64))
    def setup(self, max_frags: int, frag_size: int) -> None:
        self.msg = SkMsg(max_frags)
        self.frag = PageFrag(frag_size)
        self.other = SkMsg()  # another message on the same socket's page frag
        self.model = bytearray()
        self.copy: list[bool] = []
        self.win: tuple[int, int] | None = None
        self.start = 0
        self.want_apply = 0
        self.want_cork = 0

    # -- helpers of the model ----------------------------------------------------------

    def bufs(self) -> list[memoryview]:
        return [e.buf for e in self.msg._elems]

    def first_window(self) -> None:
        """``sk_msg_compute_data_pointers`` as the model sees it."""
        elems = self.msg._elems
        self.win = (0, elems[0].length) if elems and not elems[0].copy else None

    def privatise(self, lo: int, hi: int) -> None:
        self.copy[lo:hi] = [False] * (hi - lo)

    def position(self, data: st.DataObject, label: str, hi: int) -> int:
        """A byte offset up to ``hi``: often at or next to an element boundary."""
        marks = sorted({off for off, _ in layout(self.msg)} | {len(self.model)})
        near_mark = st.sampled_from(marks).flatmap(lambda m: st.integers(m - 1, m + 1))
        return data.draw(
            st.integers(0, max(hi, 0)) | near_mark | st.integers(-2, hi + 3), label=label
        )

    # -- filling --------------------------------------------------------------------

    @rule(
        pieces=st.lists(st.binary(max_size=40), min_size=1, max_size=5),
        kind=st.sampled_from([bytes, bytearray, memoryview]),
        limit=st.none() | st.integers(0, 120),
    )
    def append_copy(self, pieces: list[bytes], kind: Any, limit: int | None) -> None:
        joined = b"".join(pieces)
        want = len(joined) if limit is None else min(limit, len(joined))
        before = [same(e) for e in self.msg._elems]
        taken = self.msg.append_copy(
            self.frag, [kind(p) for p in pieces], -1 if limit is None else limit
        )
        assert 0 <= taken <= want
        if taken < want:
            assert self.msg.full, "append_copy stopped short with a free slot"
        got = list(self.msg._elems)
        # earlier elements are untouched; the last may only grow (coalescing)
        for e, want_e in zip(got[: len(before) - 1], before, strict=False):
            assert e.buf is want_e[1] and (e.offset, e.length, e.copy) == want_e[2:]
        if before:
            e, (_, buf, offset, length, copy) = got[len(before) - 1], before[-1]
            assert e.buf is buf and (e.offset, e.copy) == (offset, copy) and e.length >= length
            assert not copy or e.length == length, "grew a borrowed element"
        assert not any(e.copy for e in got[len(before) :])
        self.model += joined[:taken]
        self.copy += [False] * taken

    @rule(buf=st.binary(min_size=1, max_size=40) | st.just(b""))
    def append_borrowed(self, buf: bytes) -> None:
        expected = 0 if self.msg.full or not buf else len(buf)
        before = [same(e) for e in self.msg._elems]
        assert self.msg.append_borrowed(buf) == expected
        if expected:
            last = self.msg._elems[-1]
            assert last.copy and last.buf.readonly and last.buf.obj is buf
            before.append(("piece", last.buf, 0, len(buf), True))
        check_elements(self.msg, before, [])
        self.model += buf[:expected]
        self.copy += [True] * expected

    @rule(n=st.integers(1, 70))
    def other_message_takes_frag(self, n: int) -> None:
        """Another message on the socket takes page-frag space: no more coalescing."""
        assert self.other.append_copy(self.frag, [bytes(n)]) == n
        assert self.other.free() == n

    @rule(data=st.data(), free=st.integers(0, 2))
    def fill_ring(self, data: st.DataObject, free: int) -> None:
        """Add small elements until ``free`` slots are left: near-full rings are where
        push and pop must copy instead of splitting."""
        while self.msg.max_frags - len(self.msg) > free:
            piece = data.draw(st.binary(min_size=1, max_size=6), label="piece")
            if data.draw(st.booleans(), label="borrowed"):
                self.append_borrowed(piece)
            else:
                self.other_message_takes_frag(1)  # so the copy cannot coalesce
                self.append_copy([piece], bytes, None)

    # -- the helpers ------------------------------------------------------------------

    @rule(data=st.data())
    def pull(self, data: st.DataObject) -> None:
        size = len(self.model)
        start = self.position(data, "start", size - 1)
        end = data.draw(
            st.integers(start + 1, max(size, start + 1)) | st.integers(-1, size + 3), label="end"
        )
        flags = data.draw(FLAGS, label="flags")
        old = self.bufs()
        before = [same(e) for e in self.msg._elems]
        if flags or start < 0 or end <= start or start >= size or end > size:
            assert msg_pull_data(self.msg, start, end, flags) == EINVAL
            check_elements(self.msg, before, old)
            return
        i, lo, first = holding(self.msg, start)
        j, off_j, last = holding(self.msg, end - 1)
        expected = before
        if i != j or first.copy:
            hi = off_j + last.length
            expected = [*before[:i], ("fresh", hi - lo), *before[j + 1 :]]
            self.privatise(lo, hi)
        assert msg_pull_data(self.msg, start, end, flags) == 0
        check_elements(self.msg, expected, old)
        self.win = (start, end)

    @rule(data=st.data())
    def push(self, data: st.DataObject) -> None:
        msg, size = self.msg, len(self.model)
        start = self.position(data, "start", size)
        length = data.draw(st.integers(0, 20) | st.integers(-2, 0), label="length")
        flags = data.draw(FLAGS, label="flags")
        old = self.bufs()
        before = [same(e) for e in msg._elems]
        if flags or start < 0 or length < 0 or (length and start > size):
            assert msg_push_data(msg, start, length, flags) == EINVAL
            check_elements(msg, before, old)
            return
        if length == 0:
            assert msg_push_data(msg, start, length, flags) == 0
            check_elements(msg, before, old)
            return
        space = msg.max_frags - len(msg)
        if not before:
            expected: list[Expect] = [("fresh", length)]
        else:
            if start == size:  # append: the point is the end of the last element
                i, off, e = len(before) - 1, size - before[-1][3], msg._elems[-1]
            else:
                i, off, e = holding(msg, start)
            front = start - off
            middle: list[Expect]
            if space == 0 or (space == 1 and front):
                middle = [("fresh", e.length + length)]
                self.privatise(off, off + e.length)
            elif not front:
                middle = [("fresh", length), before[i]]
            elif front == e.length:
                middle = [before[i], ("fresh", length)]
            else:
                middle = [
                    ("piece", e.buf, e.offset, front, e.copy),
                    ("fresh", length),
                    ("piece", e.buf, e.offset + front, e.length - front, e.copy),
                ]
            expected = [*before[:i], *middle, *before[i + 1 :]]
        assert msg_push_data(msg, start, length, flags) == 0
        check_elements(msg, expected, old)
        pushed = msg.tobytes()[start : start + length]
        assert pushed == bytes(length), "pushed bytes are not zero"
        self.model[start:start] = bytes(length)
        self.copy[start:start] = [False] * length
        self.first_window()

    @rule(data=st.data())
    def pop(self, data: st.DataObject) -> None:
        msg, size = self.msg, len(self.model)
        start = self.position(data, "start", size - 1)
        length = data.draw(
            st.integers(1, 6) | st.integers(0, max(size - start, 0)) | st.integers(-2, size + 3),
            label="length",
        )
        flags = data.draw(FLAGS, label="flags")
        old = self.bufs()
        before = [same(e) for e in msg._elems]
        bad = length and (start >= size or start + length > size)
        if flags or start < 0 or length < 0 or bad:
            assert msg_pop_data(msg, start, length, flags) == EINVAL
            check_elements(msg, before, old)
            return
        if length == 0:
            assert msg_pop_data(msg, start, length, flags) == 0
            check_elements(msg, before, old)
            return
        end = start + length
        space = msg.max_frags - len(msg)
        expected: list[Expect] = []
        for off, e in layout(msg):
            top = off + e.length
            if end <= off or top <= start:
                expected.append(same(e))
            elif start <= off and top <= end:
                pass  # wholly popped
            elif off < start and end < top:  # cut inside, bytes left on both sides
                if space:
                    expected.append(("piece", e.buf, e.offset, start - off, e.copy))
                    expected.append(("piece", e.buf, e.offset + end - off, top - end, e.copy))
                else:
                    expected.append(("fresh", e.length - length))
                    self.privatise(off, top)
            elif off < start:
                expected.append(("piece", e.buf, e.offset, start - off, e.copy))
            else:
                expected.append(("piece", e.buf, e.offset + end - off, top - end, e.copy))
        assert msg_pop_data(msg, start, length, flags) == 0
        check_elements(msg, expected, old)
        del self.model[start:end]
        del self.copy[start:end]
        self.first_window()

    @rule(data=st.data())
    def apply(self, data: st.DataObject) -> None:
        """msg_apply_bytes, then the TX engine sends ``tosend`` bytes off the front."""
        msg, size = self.msg, len(self.model)
        n = data.draw(
            st.integers(1, 8) | st.integers(0, size + 3) | st.integers(U32 - 1, U32 + 2), label="n"
        )
        assert msg_apply_bytes(msg, n) == 0
        self.want_apply = n & U32
        tosend = self.want_apply if 0 < self.want_apply < size else size
        expected: list[Expect] = []
        whole = 0
        for off, e in layout(msg):
            if off + e.length <= tosend:
                whole += 1
            elif off < tosend:
                cut = tosend - off
                expected.append(("piece", e.buf, e.offset + cut, e.length - cut, e.copy))
            else:
                expected.append(same(e))
        old = self.bufs()
        out = msg.consume(tosend)
        assert b"".join(out) == self.model[:tosend]
        check_elements(msg, expected, old)
        del self.model[:tosend]
        del self.copy[:tosend]
        self.start = (self.start + whole) % (msg.max_frags + 1)
        self.win = None  # no window into bytes that left

    @rule(n=st.integers(-3, 2**33))
    def cork(self, n: int) -> None:
        assert msg_cork_bytes(self.msg, n) == 0
        self.want_cork = n & U32

    @rule()
    def compute_data_pointers(self) -> None:
        self.msg.compute_data_pointers()
        self.first_window()

    @rule(data=st.data())
    def write_window(self, data: st.DataObject) -> None:
        """A program's direct write through ``data`` lands in the message's bytes."""
        if self.win is None:
            assert bytes(self.msg.data) == b""
            return
        lo, hi = self.win
        view = self.msg.data
        assert not view.readonly
        new = data.draw(st.binary(min_size=hi - lo, max_size=hi - lo), label="bytes")
        view[:] = new
        self.model[lo:hi] = new

    # -- after every step --------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        msg = self.msg
        elems = msg._elems
        assert msg.tobytes() == self.model
        assert msg.size == len(self.model) == sum(e.length for e in elems)
        assert all(e.length > 0 for e in elems)
        assert len(msg) == len(elems) <= msg.max_frags
        assert msg.full == (len(msg) == msg.max_frags)
        assert msg.start == self.start
        assert msg.end == (msg.start + len(msg)) % (msg.max_frags + 1)
        for i, (off, e) in enumerate(layout(msg)):
            assert msg.sg_copy(i) == e.copy
            assert set(self.copy[off : off + e.length]) == {e.copy}, "copy bit moved"
            if e.copy:  # this machine borrows only bytes objects
                assert e.buf.readonly
        assert (msg.apply_bytes, msg.cork_bytes) == (self.want_apply, self.want_cork)

    @invariant()
    def window(self) -> None:
        msg = self.msg
        if self.win is None:
            assert (bytes(msg.data), msg.data_off, msg.data_end) == (b"", 0, 0)
        else:
            lo, hi = self.win
            assert bytes(msg.data) == self.model[lo:hi]
            assert (msg.data_off, msg.data_end) == (lo, hi)
            assert not any(self.copy[lo:hi]), "the window shows a borrowed element"


TestRing = RingMachine.TestCase
TestRing.settings = settings(stateful_step_count=60)


# -- filling --------------------------------------------------------------------------


def test_one_send_of_1024_one_byte_buffers_is_one_element() -> None:
    data = payload(1024)
    msg = SkMsg()
    assert msg.append_copy(PageFrag(), [data[i : i + 1] for i in range(1024)]) == 1024
    assert len(msg) == 1
    assert msg.tobytes() == data
    assert msg.size == 1024


def test_consecutive_appends_into_one_frag_coalesce() -> None:
    frag, msg = PageFrag(), SkMsg()
    for piece in (b"abc", b"de", b"fgh"):
        msg.append_copy(frag, [piece])
    assert len(msg) == 1
    assert msg.tobytes() == b"abcdefgh"
    # another message taking frag space in between breaks contiguity
    other = SkMsg()
    other.append_copy(frag, [b"zz"])
    msg.append_copy(frag, [b"ij"])
    assert len(msg) == 2
    assert msg.tobytes() == b"abcdefghij"
    assert other.tobytes() == b"zz"


def test_appends_cross_frag_chunks_and_do_not_merge_into_borrowed() -> None:
    frag, msg = PageFrag(8), SkMsg(10)
    assert msg.append_copy(frag, [b"0123456789"]) == 10  # 8 + 2: two chunks
    assert [e.length for e in msg._elems] == [8, 2]
    msg.append_borrowed(b"BB")
    msg.append_copy(frag, [b"xy"])  # contiguous in the chunk, but the last element is borrowed
    assert [(e.length, e.copy) for e in msg._elems] == [
        (8, False),
        (2, False),
        (2, True),
        (2, False),
    ]
    assert msg.tobytes() == b"0123456789BBxy"


def test_full_ring_stops_append_copy_and_gives_the_frag_space_back() -> None:
    frag, msg = PageFrag(8), SkMsg(3)
    assert msg.append_copy(frag, [payload(40)]) == 24
    assert msg.full and len(msg) == 3 and msg.size == 24
    assert msg.tobytes() == payload(24)
    assert msg.append_copy(frag, [b"more"]) == 0
    assert frag.used == 0  # the chunk it could not use is handed back
    other = SkMsg()
    assert other.append_copy(frag, [b"ok"]) == 2
    assert other._elems[0].offset == 0


def test_full_ring_still_coalesces_into_the_last_element() -> None:
    frag, msg = PageFrag(64), SkMsg(1)
    assert msg.append_copy(frag, [b"a" * 10]) == 10
    assert msg.full
    assert msg.append_copy(frag, [b"b" * 10, b"c" * 4], limit=12) == 12
    assert len(msg) == 1 and msg.tobytes() == b"a" * 10 + b"b" * 10 + b"cc"


def test_append_borrowed_on_a_full_ring_or_empty_buffer_takes_nothing() -> None:
    msg = SkMsg.from_frags([b"a", b"b"], max_frags=2)
    assert msg.append_borrowed(b"c") == 0
    assert SkMsg().append_borrowed(b"") == 0
    assert msg.tobytes() == b"ab"


# -- construction ---------------------------------------------------------------------


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="max_frags"):
        SkMsg(0)
    with pytest.raises(ValueError, match="do not fit"):
        SkMsg.from_bytes(bytes(100), max_frags=3, frag_size=32)
    with pytest.raises(ValueError, match="empty"):
        SkMsg.from_frags([b"a", b""])
    with pytest.raises(ValueError, match="more than 2"):
        SkMsg.from_frags([b"a", b"b", b"c"], max_frags=2)
    assert SkMsg.from_bytes(bytes(96), max_frags=3, frag_size=32).full


def test_from_bytes_counts_bytes_not_items() -> None:
    """A memoryview of 2-byte items holds ``nbytes`` bytes, not ``len`` of them."""
    data = memoryview(array.array("H", [1, 2, 3]))
    msg = SkMsg.from_bytes(data)
    assert msg.tobytes() == data.tobytes() and msg.size == 6
    with pytest.raises(ValueError, match="6 bytes do not fit"):
        SkMsg.from_bytes(data, max_frags=1, frag_size=4)


def test_from_frags_references_and_marks_copy() -> None:
    a, b = b"abc", bytearray(b"de")
    msg = SkMsg.from_frags([a, b], copy=True)
    assert msg._elems[0].buf.obj is a and msg._elems[1].buf.obj is b
    assert [msg.sg_copy(i) for i in range(2)] == [True, True]
    assert (bytes(msg.data), msg.data_off, msg.data_end) == (b"", 0, 0)
    plain = SkMsg.from_frags([a, b])
    assert bytes(plain.data) == b"abc"
    assert plain.frags()[1].obj is b


# -- consuming --------------------------------------------------------------------------


def test_consume_across_elements_advances_start_modulo_ring() -> None:
    msg = SkMsg.from_frags([b"abc", b"defg", b"hi"], max_frags=3)
    assert [bytes(v) for v in msg.consume(5)] == [b"abc", b"de"]
    assert (msg.start, len(msg), msg.end, msg.size) == (1, 2, 3, 4)
    assert msg.tobytes() == b"fghi"
    assert msg._elems[0].offset == 2
    assert [bytes(v) for v in msg.consume(100)] == [b"fg", b"hi"]
    assert (msg.start, len(msg), msg.end, msg.size) == (3, 0, 3, 0)
    frag = PageFrag(4)
    msg.append_copy(frag, [b"jklmnopq"])  # two 4-byte chunks: slots 3 and 0
    assert (msg.start, msg.end) == (3, 1)
    assert [bytes(v) for v in msg.consume(4)] == [b"jklm"]
    assert (msg.start, msg.end) == (0, 1)  # wrapped past NR_MSG_FRAG_IDS == 4
    assert msg.free() == 4
    assert (msg.start, msg.end, msg.size) == (1, 1, 0)
    assert msg.consume(0) == []


def test_consume_rejects_a_negative_count() -> None:
    msg = SkMsg.from_bytes(b"abcdef")
    with pytest.raises(ValueError, match="-1"):
        msg.consume(-1)
    assert msg.tobytes() == b"abcdef" and msg.size == 6
    with pytest.raises(ValueError):
        SkMsg().consume(-3)


def test_consumed_views_survive_later_appends() -> None:
    frag, msg = PageFrag(16), SkMsg()
    msg.append_copy(frag, [b"first"])
    out = msg.consume(5)
    msg.append_copy(frag, [b"second-second"])
    assert b"".join(out) == b"first"
    assert msg.tobytes() == b"second-second"


# -- the window -------------------------------------------------------------------------


def test_writes_through_data_land_in_private_chunks() -> None:
    msg = SkMsg.from_bytes(b"hello world")
    assert not msg.data.readonly
    msg.data[0:5] = b"HELLO"
    assert msg.tobytes() == b"HELLO world"
    frag = PageFrag(4)
    msg = SkMsg(8)
    msg.append_copy(frag, [b"abcdefghij"])
    assert msg_pull_data(msg, 2, 7) == 0  # spans three chunks: copied into one
    msg.data[:] = b"CDEFG"
    assert msg.tobytes() == b"abCDEFGhij"


def test_pull_of_a_borrowed_bytearray_writes_only_the_private_copy() -> None:
    page = bytearray(b"abcdef")
    msg = SkMsg()
    msg.append_borrowed(page)
    assert bytes(msg.data) == b""
    assert msg_pull_data(msg, 1, 4) == 0
    msg.data[:] = b"XYZ"
    assert msg.tobytes() == b"aXYZef"
    assert page == b"abcdef"


def test_borrowed_bytes_are_read_only() -> None:
    msg = SkMsg.from_frags([b"abc"])  # referenced without copy bit: visible, not writable
    assert msg.data.readonly
    with pytest.raises(TypeError):
        msg.data[0:1] = b"X"
    borrowed = SkMsg()
    borrowed.append_borrowed(b"xyz")
    assert borrowed._elems[0].buf.readonly
    assert bytes(borrowed.data) == b""
    assert msg_pull_data(borrowed, 0, 3) == 0
    assert not borrowed.data.readonly and bytes(borrowed.data) == b"xyz"


def test_set_window_and_repr() -> None:
    msg = SkMsg.from_frags([b"abc", b"defg"])
    msg.set_window(1, 1, 2)
    assert (bytes(msg.data), msg.data_off, msg.data_end) == (b"ef", 4, 6)
    assert "size=7" in repr(msg) and "length=3" in repr(msg._elems[0])
    clone = msg._elems[1].clone()
    assert clone.buf is msg._elems[1].buf and bytes(clone.view()) == b"defg"


def test_of_private_wraps_one_fresh_buffer_without_copying() -> None:
    buf = bytearray(b"record plaintext")
    msg = SkMsg.of_private(buf, max_frags=4)
    assert (msg.size, len(msg), msg.max_frags, msg.sg_copy(0)) == (16, 1, 4, False)
    assert bytes(msg.data) == b"record plaintext"
    msg.data[0:1] = b"R"  # the window is the caller's buffer itself
    assert buf.startswith(b"Record")
    with pytest.raises(ValueError, match="empty"):
        SkMsg.of_private(bytearray())


@pytest.mark.parametrize("shape", ["one", "split", "consumed"])
def test_reset_private_is_of_private_again(shape: str) -> None:
    """A reused message looks exactly like a fresh of_private one, whatever a
    program or a consume did to it; views of the old bytes are not touched."""
    old = bytearray(b"first record")
    msg = SkMsg.of_private(old, max_frags=4)
    msg.sk = sentinel = object()  # type: ignore[assignment]
    kept = msg.frags()[0]
    if shape == "split":  # a push splits the element: two or more of them
        assert msg_push_data(msg, 5, 3, 0) == 0
        assert len(msg) == 3
    elif shape == "consumed":
        msg.consume(6)
    msg.apply_bytes, msg.cork_bytes, msg._flags = 3, 10, 1
    msg._redir = msg.sk
    new = bytearray(b"second")
    msg.reset_private(new)
    fresh = SkMsg.of_private(bytearray(b"second"), max_frags=4)
    for m in (msg, fresh):
        assert (m.size, len(m), m.start, m.max_frags, m.sg_copy(0)) == (6, 1, 0, 4, False)
        assert (bytes(m.data), m.data_off, m.data_end) == (b"second", 0, 6)
        assert (m.apply_bytes, m.cork_bytes, m.flags, m.sk_redir) == (0, 0, 0, None)
        assert m.tobytes() == b"second"
    assert msg.sk is sentinel
    msg.data[0:1] = b"S"  # the window is the new buffer itself
    assert new == b"Second"
    assert bytes(kept) == b"first record"  # the old bytes are the old buffer's
    with pytest.raises(ValueError, match="empty"):
        msg.reset_private(bytearray())
    assert msg.tobytes() == b"Second"
    sole = msg.sole_frag()
    assert sole is not None and bytes(sole) == b"Second" and sole.obj is new


def test_reset_lazy_copies_only_when_the_program_looks() -> None:
    """reset_lazy: the sender's bytes until the window is asked for; then the
    message's own copy (every element still on the sender's bytes moves to
    it, split ones included), so writes never reach the sender's buffer."""
    sender = bytearray(b"hello world")
    view = memoryview(sender)
    msg = SkMsg.of_private(bytearray(b"old"), max_frags=4)
    msg.apply_bytes, msg._redir = 2, msg  # type: ignore[assignment]
    msg.reset_lazy(view[0:11])
    assert (msg.size, len(msg), msg.apply_bytes, msg.sk_redir) == (11, 1, 0, None)
    sole = msg.sole_frag()
    assert sole is not None and sole.obj is sender  # no copy made yet
    assert msg.tobytes() == b"hello world"
    assert msg_pop_data(msg, 2, 2, 0) == 0  # a helper splits the element
    assert len(msg) == 2 and msg.tobytes() == b"heo world"
    assert all(e.buf.obj is sender for e in msg._elems)
    window = msg.data  # the program looks: the bytes become the message's own
    window[0:1] = b"H"
    assert sender == b"hello world"
    assert msg.tobytes() == b"Heo world"
    assert all(e.buf.obj is not sender for e in msg._elems)
    msg.materialize()  # already its own: nothing changes
    assert msg.tobytes() == b"Heo world"
    with pytest.raises(ValueError, match="empty"):
        msg.reset_lazy(view[0:0])
    msg.reset_lazy(view[6:11])
    msg.materialize()  # the engine's call before a record may outlive the send
    sender[6:7] = b"W"
    assert msg.tobytes() == b"world"
    msg.free()
    del view, sole, window
    sender.extend(b"!")  # nothing of the message holds the sender's buffer now
    assert msg.size == 0


def _state(msg: SkMsg) -> tuple[object, ...]:
    """What a program or an engine can observe of a message (no copy made)."""
    return (
        msg.tobytes(), msg.size, len(msg), msg.start, msg.max_frags,
        [msg.sg_copy(i) for i in range(len(msg))], msg._win,
        msg.apply_bytes, msg.cork_bytes, msg.flags, msg.sk_redir,
    )  # fmt: skip


_PROGRAM_STEPS = st.lists(
    st.sampled_from(["none", "look", "write", "pull", "push", "pop", "apply", "cork", "redir"]),
    max_size=3,
)


@given(
    steps=st.lists(st.tuples(st.integers(1, 12), _PROGRAM_STEPS), min_size=1, max_size=6),
)
def test_relend_is_lent_bytes_then_reset_lazy(steps: list[tuple[int, list[str]]]) -> None:
    """relend (the TLS engine's step from one record to the next) gives what
    lent_bytes then reset_lazy give, whatever the program did to the message
    in between; the bytes handed on are the sender's own view exactly when
    the program left the message as lent."""
    sender = bytearray(range(256)) * 2
    src = memoryview(sender)
    fast, slow = SkMsg(max_frags=4), SkMsg(max_frags=4)
    pos = 0
    for n, program in steps:
        view = src[pos : pos + n]
        pos += n
        if pos == n:  # the first record: lent by reset_lazy
            fast.reset_lazy(view)
            slow.reset_lazy(view)
        else:
            expect = slow.lent_bytes()
            slow.reset_lazy(view)
            got = fast.relend(view)
            assert bytes(got) == bytes(expect)
            assert (got.obj is sender) == (expect.obj is sender)
        assert _state(fast) == _state(slow)
        for m in (fast, slow):
            for step in program:
                if step == "look":
                    m.data  # the program reads its window: a copy is made
                elif step == "write" and m.data.nbytes:
                    m.data[0:1] = b"!"
                elif step == "pull":
                    msg_pull_data(m, 0, 1, 0)
                elif step == "push":
                    msg_push_data(m, 0, 2, 0)
                elif step == "pop" and m.size > 1:
                    msg_pop_data(m, 0, 1, 0)
                elif step == "apply":
                    msg_apply_bytes(m, 1)
                elif step == "cork":
                    msg_cork_bytes(m, 100)
                elif step == "redir":
                    m._redir, m._flags = m.sk, 1
        assert _state(fast) == _state(slow)
        lent = fast.lent_bytes()
        if set(program) <= {"none", "apply", "cork", "redir"}:  # bytes and shape as lent
            assert lent is view
        if {"look", "write"} & set(program):  # the program saw a private copy
            assert lent.obj is not sender
    assert sender == bytearray(range(256)) * 2  # no write ever reached the sender


def test_relend_rejects_an_empty_view_and_changes_nothing() -> None:
    src = memoryview(b"abcdef")
    msg = SkMsg(max_frags=4)
    msg.reset_lazy(src[0:3])
    before = _state(msg)
    with pytest.raises(ValueError, match="empty"):
        msg.relend(src[3:3])
    assert _state(msg) == before and msg.lent_bytes().obj is src.obj


def test_sole_frag_is_the_one_element_or_none() -> None:
    assert SkMsg().sole_frag() is None
    assert SkMsg.from_frags([b"ab", b"cd"]).sole_frag() is None
    msg = SkMsg.from_frags([b"abcdef"])
    msg.consume(2)  # a trimmed element: the view is its window, not its buffer
    sole = msg.sole_frag()
    assert sole is not None and bytes(sole) == b"cdef" == msg.tobytes()


def test_free_reinitialises_the_helper_fields() -> None:
    """``sk_msg_free`` ends with ``sk_msg_init``: apply, cork, flags and the redirect
    target are cleared with the bytes (a consume of every byte keeps them)."""
    msg = SkMsg.from_bytes(b"abcdef")
    msg.apply_bytes, msg.cork_bytes, msg._flags = 3, 10, 1
    msg.consume(6)
    assert (msg.apply_bytes, msg.cork_bytes, msg.flags) == (3, 10, 1)
    msg.append_copy(PageFrag(64), [b"xyz"])
    assert msg.free() == 3
    assert (msg.apply_bytes, msg.cork_bytes, msg.flags, msg.sk_redir) == (0, 0, 0, None)
