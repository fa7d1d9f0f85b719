"""The SK_MSG helpers on exact bytes: reference §3 rules and §7 cases 15-43.

Each message is built as one send builds it (``SkMsg.from_bytes``) or with an
exact element layout (``SkMsg.from_frags``) when the rule is about elements.
Pushed bytes are zeros here (the kernel leaves them unspecified).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from skmsg_core._helpers import (
    msg_apply_bytes,
    msg_cork_bytes,
    msg_pop_data,
    msg_pull_data,
    msg_push_data,
)
from skmsg_core._ring import SkMsg

EINVAL = -errno.EINVAL
ALPHA = b"abcdefghijklmnopqrstuvwxyz\0"  # sockmap_helpers_msg's 27-byte buffer
LARGE = 262144  # one send_large sendmsg: 8192 x 32


def payload(n: int) -> bytes:
    """test_sockmap's payload: byte j is ``j mod 256``."""
    return bytes(j % 256 for j in range(n))


ORIG = payload(LARGE)


def Z(n: int) -> bytes:
    return bytes(n)


def lengths(msg: SkMsg) -> list[int]:
    return [e.length for e in msg._elems]


def bufs(msg: SkMsg) -> list[memoryview]:
    return [e.buf for e in msg._elems]


def window(msg: SkMsg) -> tuple[bytes, int, int]:
    return bytes(msg.data), msg.data_off, msg.data_end


# -- pop: sockmap_helpers_msg (cases 38-43) --------------------------------------------


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (0, 5, b"fghijklmnopqrstuvwxyz\0"),  # case 38
        (10, 5, b"abcdefghij" + b"pqrstuvwxyz\0"),  # case 39
        (21, 5, b"abcdefghijklmnopqrstu\0"),  # case 40: POP_END, 27 - 5 - 1
    ],
)
def test_pop_cases_38_to_40(start: int, length: int, expected: bytes) -> None:
    msg = SkMsg.from_bytes(ALPHA)
    assert msg_pop_data(msg, start, length, 0) == 0
    assert msg.tobytes() == expected
    assert msg.size == len(expected) == 22


@pytest.mark.parametrize(("start", "length"), [(0, 28), (22, 10)])
def test_pop_cases_41_42_error_leaves_message_unchanged(start: int, length: int) -> None:
    msg = SkMsg.from_bytes(ALPHA)
    before = bufs(msg)
    assert msg_pop_data(msg, start, length, 0) == EINVAL
    assert msg.tobytes() == ALPHA and msg.size == 27
    assert all(a is b for a, b in zip(bufs(msg), before, strict=True))


@pytest.mark.parametrize(("start", "length"), [(0, 27 * 32), (378, 28), (400, 10)])
def test_pop_case_43_each_send_is_its_own_27_byte_msg(start: int, length: int) -> None:
    """14 MSG_MORE sends and a 15th: each is a 27-byte msg, so every pop errors."""
    msgs = [SkMsg.from_bytes(ALPHA) for _ in range(15)]
    for msg in msgs:
        assert msg_pop_data(msg, start, length, 0) == EINVAL
        assert msg.tobytes() == ALPHA
    assert sum(m.size for m in msgs) == 15 * 27


# -- push then pop in one run on a send_large message (cases 29-34) --------------------


@pytest.mark.parametrize(
    ("push", "pop", "expected"),
    [
        ((1, 10), (5, 4), ORIG[:1] + Z(6) + ORIG[1:]),  # case 29
        ((1, 10), (5, 16), ORIG[:1] + Z(4) + ORIG[11:]),  # case 30
        ((5, 4), (1, 10), ORIG[:1] + ORIG[7:]),  # case 31
        ((5, 16), (1, 10), ORIG[:1] + Z(10) + ORIG[5:]),  # case 32
        ((1, 10), (16, 4), ORIG[:1] + Z(10) + ORIG[1:6] + ORIG[10:]),  # case 33
        ((16, 10), (5, 4), ORIG[:5] + ORIG[9:16] + Z(10) + ORIG[16:]),  # case 34
    ],
    ids=["case29", "case30", "case31", "case32", "case33", "case34"],
)
def test_push_then_pop_cases_29_to_34(
    push: tuple[int, int], pop: tuple[int, int], expected: bytes
) -> None:
    msg = SkMsg.from_bytes(ORIG)
    assert msg_push_data(msg, *push, 0) == 0
    assert msg_pop_data(msg, *pop, 0) == 0
    assert msg.size == len(expected) == LARGE + push[1] - pop[1]
    assert msg.tobytes() == expected


def test_large_pull_pop_push_cases_16_21_26() -> None:
    msg = SkMsg.from_bytes(ORIG)
    assert msg_pull_data(msg, 4096, 9182, 0) == 0  # case 16: inside the first chunk
    assert window(msg) == (ORIG[4096:9182], 4096, 9182)
    assert msg.tobytes() == ORIG
    assert msg_pop_data(msg, 4096, 4096, 0) == 0  # case 21
    assert msg.tobytes() == ORIG[:4096] + ORIG[8192:]
    msg = SkMsg.from_bytes(ORIG)
    assert msg_push_data(msg, 4096, 4096, 0) == 0  # case 26
    assert msg.tobytes() == ORIG[:4096] + Z(4096) + ORIG[4096:]


# -- small sends (cases 15, 20, 22, 25, 27) --------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"), [(3, b"\x00"), (5, b"\x00\x03\x04")], ids=["3B", "5B"]
)
def test_pop_1_2_cases_20_22(n: int, expected: bytes) -> None:
    msg = SkMsg.from_bytes(payload(n))
    assert msg_pop_data(msg, 1, 2, 0) == 0  # start + len == size on 3 B: the fixed tree
    assert msg.tobytes() == expected


def test_push_1_2_case_27() -> None:
    msg = SkMsg.from_bytes(payload(3))
    assert msg_push_data(msg, 1, 2, 0) == 0
    assert msg.tobytes() == b"\x00" + Z(2) + b"\x01\x02"


@pytest.mark.parametrize("n", [1, 3, 5, 1024])
def test_push_1_1_case_25_appends_at_the_end_of_a_1_byte_msg(n: int) -> None:
    msg = SkMsg.from_bytes(payload(n))
    assert msg_push_data(msg, 1, 1, 0) == 0  # start == size on the 1-byte send: allowed
    assert msg.tobytes() == payload(n)[:1] + Z(1) + payload(n)[1:]
    assert msg.size == n + 1


def test_pull_1_2_case_15() -> None:
    one = SkMsg.from_bytes(b"\x00")
    assert msg_pull_data(one, 1, 2, 0) == EINVAL  # start >= size
    assert one.tobytes() == b"\x00" and window(one) == (b"\x00", 0, 1)
    many = SkMsg.from_bytes(payload(3))
    assert msg_pull_data(many, 1, 2, 0) == 0
    assert window(many) == (b"\x01", 1, 2)
    assert many.tobytes() == payload(3)


# -- pull ---------------------------------------------------------------------------------


def test_pull_inside_one_plain_element_copies_nothing() -> None:
    msg = SkMsg.from_frags([b"abcd", b"efgh"])
    before = bufs(msg)
    assert msg_pull_data(msg, 5, 8, 0) == 0
    assert all(a is b for a, b in zip(bufs(msg), before, strict=True))
    assert lengths(msg) == [4, 4]
    assert window(msg) == (b"fgh", 5, 8)


def test_pull_across_elements_merges_exactly_the_covering_ones() -> None:
    msg = SkMsg.from_frags([b"ab", b"cd", b"ef", b"gh", b"ij"])
    a, b, c, d, e = bufs(msg)
    assert msg_pull_data(msg, 3, 6, 0) == 0  # bytes d, e, f: elements 1 and 2
    assert lengths(msg) == [2, 4, 2, 2]
    new = msg._elems[1]
    assert new.buf is not b and new.buf is not c and new.buf.nbytes == 4  # only those bytes
    assert bytes(new.view()) == b"cdef" and not new.copy
    assert bufs(msg)[0] is a and bufs(msg)[2] is d and bufs(msg)[3] is e
    assert window(msg) == (b"def", 3, 6)
    assert msg.tobytes() == b"abcdefghij"
    assert (msg.size, msg.end) == (10, 4)


def test_pull_of_a_copy_bit_element_copies_it_alone() -> None:
    msg = SkMsg.from_frags([b"abc", b"def", b"ghi"], copy=True)
    a, b, c = bufs(msg)
    assert window(msg) == (b"", 0, 0)
    assert msg_pull_data(msg, 4, 5, 0) == 0
    assert lengths(msg) == [3, 3, 3]
    assert bufs(msg)[0] is a and bufs(msg)[1] is not b and bufs(msg)[2] is c
    assert [e.copy for e in msg._elems] == [True, False, True]
    assert window(msg) == (b"e", 4, 5)
    assert not msg.data.readonly


def test_pull_whole_message_makes_one_element() -> None:
    msg = SkMsg.from_frags([b"ab", b"cd", b"ef"], copy=True)
    assert msg_pull_data(msg, 0, 6, 0) == 0
    assert lengths(msg) == [6] and not msg.sg_copy(0)
    assert window(msg) == (b"abcdef", 0, 6)


@pytest.mark.parametrize(
    ("start", "end", "flags"),
    [(0, 2, 1), (2, 2, 0), (3, 2, 0), (6, 7, 0), (7, 8, 0), (0, 7, 0), (5, 7, 0)],
)
def test_pull_errors_change_nothing(start: int, end: int, flags: int) -> None:
    msg = SkMsg.from_frags([b"abc", b"def"])
    assert msg_pull_data(msg, 1, 5, 0) == 0  # a window the errors must keep
    before = bufs(msg)
    assert msg_pull_data(msg, start, end, flags) == EINVAL
    assert all(a is b for a, b in zip(bufs(msg), before, strict=True))
    assert msg.tobytes() == b"abcdef"
    assert window(msg) == (b"bcde", 1, 5)


# -- push element accounting -------------------------------------------------------------


def test_push_at_a_boundary_takes_one_slot() -> None:
    msg = SkMsg.from_frags([b"abc", b"def"], max_frags=3)
    a, b = bufs(msg)
    assert msg_push_data(msg, 3, 2, 0) == 0
    assert lengths(msg) == [3, 2, 3]
    assert bufs(msg)[0] is a and bufs(msg)[2] is b
    assert msg.tobytes() == b"abc\0\0def"


def test_push_inside_an_element_splits_it_with_two_slots() -> None:
    msg = SkMsg.from_frags([b"abcdef"], max_frags=3)
    (a,) = bufs(msg)
    assert msg_push_data(msg, 2, 2, 0) == 0
    assert lengths(msg) == [2, 2, 4]
    assert bufs(msg)[0] is a and bufs(msg)[2] is a  # both halves still reference it
    assert msg.tobytes() == b"ab\0\0cdef"
    assert msg.full


def test_push_inside_with_one_slot_copies_that_element() -> None:
    msg = SkMsg.from_frags([b"abc", b"def"], max_frags=3)
    a, b = bufs(msg)
    assert msg_push_data(msg, 1, 2, 0) == 0
    assert lengths(msg) == [5, 3]
    assert bufs(msg)[0] is not a and bufs(msg)[1] is b
    assert msg.tobytes() == b"a\0\0bcdef"


def test_push_on_a_full_ring_copies_the_element_holding_start() -> None:
    msg = SkMsg.from_frags([b"ab", b"cd", b"ef"], max_frags=3)
    a, b, c = bufs(msg)
    assert msg_push_data(msg, 2, 1, 0) == 0  # boundary, no slot: element 1 gets the bytes
    assert lengths(msg) == [2, 3, 2]
    assert bufs(msg)[0] is a and bufs(msg)[1] is not b and bufs(msg)[2] is c
    assert msg.tobytes() == b"ab\0cdef"


def test_push_at_the_end() -> None:
    msg = SkMsg.from_frags([b"ab"], max_frags=3)
    assert msg_push_data(msg, 2, 2, 0) == 0  # a free slot: a new last element
    assert lengths(msg) == [2, 2]
    assert msg_push_data(msg, 4, 1, 0) == 0  # one slot, start != offset: copy the last
    assert lengths(msg) == [2, 3]
    assert msg.tobytes() == b"ab\0\0\0"
    empty = SkMsg()
    assert msg_push_data(empty, 0, 3, 0) == 0
    assert empty.tobytes() == Z(3) and len(empty) == 1


def test_push_resets_the_window_and_copies_borrowed_bytes_only_when_needed() -> None:
    msg = SkMsg.from_frags([b"abc", b"def"], copy=True, max_frags=4)
    assert msg_pull_data(msg, 4, 5, 0) == 0
    assert msg_push_data(msg, 1, 1, 0) == 0  # split: the halves keep the copy bit
    assert [e.copy for e in msg._elems] == [True, False, True, False]
    assert window(msg) == (b"", 0, 0)  # first element is borrowed
    assert msg.full
    assert msg_push_data(msg, 0, 2, 0) == 0  # no slot: "a" is copied with the new bytes
    assert [e.copy for e in msg._elems] == [False, False, True, False]
    assert window(msg) == (b"\0\0a", 0, 3)
    assert msg.tobytes() == b"\0\0a\0bcdef"


@pytest.mark.parametrize(("start", "length", "flags"), [(7, 1, 0), (0, 1, 1), (-1, 1, 0)])
def test_push_errors_change_nothing(start: int, length: int, flags: int) -> None:
    msg = SkMsg.from_bytes(b"abcdef")
    assert msg_pull_data(msg, 2, 4, 0) == 0
    assert msg_push_data(msg, start, length, flags) == EINVAL
    assert msg.tobytes() == b"abcdef" and window(msg) == (b"cd", 2, 4)


def test_push_and_pop_of_zero_bytes_are_no_ops() -> None:
    msg = SkMsg.from_bytes(b"abcdef")
    assert msg_pull_data(msg, 2, 4, 0) == 0
    assert msg_push_data(msg, 100, 0, 0) == 0
    assert msg_pop_data(msg, 100, 0, 0) == 0
    assert msg.tobytes() == b"abcdef" and window(msg) == (b"cd", 2, 4)


# -- pop element accounting --------------------------------------------------------------


def test_pop_inside_one_element_splits_it_with_a_free_slot() -> None:
    msg = SkMsg.from_frags([b"abcdef"], max_frags=3)
    (a,) = bufs(msg)
    assert msg_pop_data(msg, 2, 2, 0) == 0
    assert lengths(msg) == [2, 2]
    assert bufs(msg)[0] is a and bufs(msg)[1] is a
    assert msg._elems[1].offset == 4
    assert msg.tobytes() == b"abef"


def test_pop_inside_one_element_on_a_full_ring_copies_both_parts() -> None:
    msg = SkMsg.from_frags([b"abcdef", b"gh", b"ij"], max_frags=3)
    a, b, c = bufs(msg)
    assert msg_pop_data(msg, 2, 2, 0) == 0
    assert lengths(msg) == [4, 2, 2]
    new = msg._elems[0]
    assert new.buf is not a and new.buf.nbytes == 4 and bytes(new.view()) == b"abef"
    assert bufs(msg)[1] is b and bufs(msg)[2] is c


def test_pop_across_elements_trims_and_drops() -> None:
    msg = SkMsg.from_frags([b"abc", b"def", b"ghi"])
    a, _, c = bufs(msg)
    assert msg_pop_data(msg, 2, 5, 0) == 0  # c | def | g
    assert lengths(msg) == [2, 2]
    assert bufs(msg)[0] is a and bufs(msg)[1] is c
    assert msg.tobytes() == b"abhi"
    assert window(msg) == (b"ab", 0, 2)


def test_pop_whole_elements_and_through_the_last_byte() -> None:
    msg = SkMsg.from_frags([b"abc", b"def", b"ghi"])
    assert msg_pop_data(msg, 3, 3, 0) == 0
    assert lengths(msg) == [3, 3] and msg.tobytes() == b"abcghi"
    assert msg_pop_data(msg, 4, 2, 0) == 0  # up to and including the last byte
    assert msg.tobytes() == b"abcg"
    assert msg_pop_data(msg, 0, 4, 0) == 0  # the whole message
    assert (msg.size, len(msg), window(msg)) == (0, 0, (b"", 0, 0))


def test_pop_keeps_copy_bits_and_resets_the_window() -> None:
    msg = SkMsg.from_frags([b"abcdef"], copy=True, max_frags=3)
    assert msg_pull_data(msg, 0, 6, 0) == 0
    msg.append_borrowed(b"ghijkl")
    assert msg_pop_data(msg, 7, 2, 0) == 0  # split of the borrowed element
    assert [e.copy for e in msg._elems] == [False, True, True]
    assert window(msg) == (b"abcdef", 0, 6)
    assert msg.tobytes() == b"abcdefgjkl"


@pytest.mark.parametrize(
    ("start", "length", "flags"), [(6, 1, 0), (5, 2, 0), (0, 7, 0), (0, 1, 1), (-1, 2, 0)]
)
def test_pop_errors_change_nothing(start: int, length: int, flags: int) -> None:
    msg = SkMsg.from_frags([b"abc", b"def"])
    assert msg_pull_data(msg, 1, 2, 0) == 0
    before = bufs(msg)
    assert msg_pop_data(msg, start, length, flags) == EINVAL
    assert all(a is b for a, b in zip(bufs(msg), before, strict=True))
    assert msg.tobytes() == b"abcdef" and window(msg) == (b"b", 1, 2)


# -- flags, apply, cork ---------------------------------------------------------------


Helper = Callable[[SkMsg, int, int, int], int]


@pytest.mark.parametrize("helper", [msg_pull_data, msg_push_data, msg_pop_data])
@pytest.mark.parametrize("flags", [1, 2, 1 << 63])
def test_flags_are_rejected(helper: Helper, flags: int) -> None:
    msg = SkMsg.from_bytes(b"abcdef")
    assert helper(msg, 1, 2, flags) == EINVAL
    assert helper(msg, 1, 0, flags) == EINVAL  # before the zero-length no-op
    assert msg.tobytes() == b"abcdef"


@pytest.mark.parametrize(
    ("value", "stored"), [(0, 0), (1, 1), (4097, 4097), (-1, 0xFFFFFFFF), (2**32 + 5, 5)]
)
def test_apply_and_cork_return_0_and_store_u32(value: int, stored: int) -> None:
    msg = SkMsg.from_bytes(b"abc")
    assert msg_apply_bytes(msg, value) == 0
    assert msg_cork_bytes(msg, value + 1) == 0
    assert msg.apply_bytes == stored
    assert msg.cork_bytes == (value + 1) & 0xFFFFFFFF
    # the fields live in the message: other helpers leave them alone
    assert msg_push_data(msg, 0, 1, 0) == 0 and msg_pop_data(msg, 0, 1, 0) == 0
    assert (msg.apply_bytes, msg.cork_bytes) == (stored, (value + 1) & 0xFFFFFFFF)
    assert msg.tobytes() == b"abc"


# -- cost: operations near the start leave the later elements alone ---------------------


def test_cost_near_the_start_of_a_full_17_frag_256k_message() -> None:
    """17 elements of 15421 bytes (the last 15408): a full ring."""

    def fresh() -> tuple[SkMsg, list[memoryview]]:
        msg = SkMsg.from_bytes(ORIG, frag_size=15421)
        assert len(msg) == 17 and msg.full
        return msg, bufs(msg)

    msg, before = fresh()
    assert msg_pull_data(msg, 1, 2, 0) == 0  # no copy at all
    assert all(a is b for a, b in zip(bufs(msg), before, strict=True))

    assert msg_pull_data(msg, 10, 20000, 0) == 0  # the first two elements, merged
    assert len(msg) == 16 and msg._elems[0].buf.nbytes == 2 * 15421
    assert all(a is b for a, b in zip(bufs(msg)[1:], before[2:], strict=True))
    assert msg.tobytes() == ORIG

    msg, before = fresh()
    assert msg_push_data(msg, 1, 10, 0) == 0  # full ring: copies only the first element
    assert len(msg) == 17 and msg._elems[0].buf.nbytes == 15421 + 10
    assert all(a is b for a, b in zip(bufs(msg)[1:], before[1:], strict=True))
    assert msg.tobytes() == ORIG[:1] + Z(10) + ORIG[1:]

    msg, before = fresh()
    assert msg_pop_data(msg, 5, 4, 0) == 0  # full ring, inside: copies only a + b
    assert len(msg) == 17 and msg._elems[0].buf.nbytes == 15421 - 4
    assert all(a is b for a, b in zip(bufs(msg)[1:], before[1:], strict=True))
    assert msg.tobytes() == ORIG[:5] + ORIG[9:]


def test_cost_near_the_start_with_free_slots_copies_nothing() -> None:
    msg = SkMsg.from_bytes(ORIG)  # 8 chunks of 32 KiB, 9 free slots
    before = bufs(msg)
    assert len(msg) == 8
    assert msg_push_data(msg, 1, 10, 0) == 0
    assert lengths(msg)[:3] == [1, 10, 32767]
    assert bufs(msg)[0] is before[0] and bufs(msg)[2] is before[0]
    assert all(a is b for a, b in zip(bufs(msg)[3:], before[1:], strict=True))
    assert msg_pop_data(msg, 5, 4, 0) == 0  # inside element 1 (the pushed zeros)
    assert bufs(msg)[0] is before[0]
    assert all(a is b for a, b in zip(bufs(msg)[-7:], before[1:], strict=True))
    assert msg.tobytes() == ORIG[:1] + Z(6) + ORIG[1:]
