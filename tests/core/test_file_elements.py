"""File elements (a send of a file: the kernel's sendpage pages): the helpers
act on them as on memory, read only what they must, and the engine hands
unread bytes on as FileSpans."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

import skmsg_core as sk

CONTENT = bytes(range(256)) * 64  # 16 KiB: four pages


@pytest.fixture(scope="module")
def fd() -> Iterator[int]:
    with tempfile.TemporaryFile() as f:
        f.write(CONTENT)
        f.flush()
        yield f.fileno()


def file_msg(fd: int, spans: list[tuple[int, int]], max_frags: int = sk.MAX_MSG_FRAGS) -> sk.SkMsg:
    msg = sk.SkMsg(max_frags)
    for pos, n in spans:
        assert msg.append_file(fd, pos, n) == n
    msg.compute_data_pointers()
    return msg


def mem_msg(spans: list[tuple[int, int]]) -> sk.SkMsg:
    return sk.SkMsg.from_frags([CONTENT[p : p + n] for p, n in spans], copy=True)


def test_a_file_element_shows_no_window_and_reads_nothing_until_pulled(fd: int) -> None:
    msg = file_msg(fd, [(100, 5000)])
    assert msg.size == 5000 and len(msg.data) == 0 and msg.sg_copy(0)
    assert sk.msg_pull_data(msg, 10, 20, 0) == 0
    assert bytes(msg.data) == CONTENT[110:120]
    # only the page holding it became memory; the rest is still the file's
    kinds = [(e.file is not None, e.length) for e in msg._elems]
    assert kinds == [(False, 3996), (True, 1004)]
    assert msg.tobytes() == CONTENT[100:5100]


def test_consume_spans_hands_on_the_file_unread(fd: int) -> None:
    msg = file_msg(fd, [(0, 4096), (8192, 100)])
    assert sk.msg_pull_data(msg, 10, 12, 0) == 0  # the first page is memory now
    out = msg.consume_spans(4096 + 50)
    assert type(out[0]) is memoryview and bytes(out[0]) == CONTENT[:4096]
    span = out[1]
    assert isinstance(span, sk.FileSpan) and (span.offset, span.nbytes) == (8192, 50)
    assert bytes(span.view()) == CONTENT[8192:8242]
    assert msg.size == 50 and msg.tobytes() == CONTENT[8242:8292]


def test_a_full_ring_pull_copies_the_whole_element(fd: int) -> None:
    msg = file_msg(fd, [(0, 8192)], max_frags=1)
    assert sk.msg_pull_data(msg, 5000, 5010, 0) == 0
    assert bytes(msg.data) == CONTENT[5000:5010] and msg._elems[0].file is None


def test_a_file_that_shrank_is_eio_not_a_crash(tmp_path: object) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(b"z" * 9000)
        f.flush()
        msg = file_msg(f.fileno(), [(0, 9000)])
        os.ftruncate(f.fileno(), 10)
        assert sk.msg_pull_data(msg, 8000, 8004, 0) == -errno.EIO
        with pytest.raises(OSError) as info:
            msg.tobytes()
        assert info.value.errno == errno.EIO


@given(
    spans=st.lists(
        st.tuples(st.integers(0, len(CONTENT) - 1), st.integers(1, 3000)).map(
            lambda t: (t[0], min(t[1], len(CONTENT) - t[0]))
        ),
        min_size=1,
        max_size=4,
    ),
    ops=st.lists(
        st.tuples(st.sampled_from(["pull", "push", "pop"]), st.integers(0, 9000),
                  st.integers(0, 3000)),
        max_size=6,
    ),
)
def test_helpers_on_file_elements_match_memory(
    fd: int, spans: list[tuple[int, int]], ops: list[tuple[str, int, int]]
) -> None:
    """Whatever the helpers do, a message of file elements has the bytes and
    the results of the same message in memory (with the copy bit), and a pull
    shows the same window. (After a push or pop the window is the first
    element's, which a file element split into pages may keep closed where
    one big memory element copied whole is open: the kernel's pages do that.)"""
    f, m = file_msg(fd, spans), mem_msg(spans)
    for op, a, n in ops:
        helper = {"pull": sk.msg_pull_data, "push": sk.msg_push_data, "pop": sk.msg_pop_data}[op]
        b = a + n if op == "pull" else n
        assert helper(f, a, b, 0) == helper(m, a, b, 0)
        assert f.size == m.size
        if op == "pull":
            assert bytes(f.data) == bytes(m.data) and f.data_off == m.data_off
    assert f.tobytes() == m.tobytes()
