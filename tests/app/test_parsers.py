"""The built-in framings as stream parser programs, sans-I/O: every message comes
out whole whatever the split, and what a framing refuses it refuses clearly."""

from __future__ import annotations

import errno
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

import skmsg_core as sk
from skmsg._parsers import (
    FRAMINGS,
    MAX_HEADER_BYTES,
    MAX_LINE_BYTES,
    FramingError,
    http_response,
)


def feed_split(framing: str, wire: bytes, cuts: list[int]) -> list[bytes]:
    parser = sk.StrParser(FRAMINGS[framing].parse)
    out: list[bytes] = []
    edges = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(edges):
        out += [bytes(m) for m in parser.feed(wire[lo:hi])]
    assert parser.pending == 0
    return out


payloads = st.lists(st.binary(max_size=300), min_size=1, max_size=8)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@given(payloads, cuts)
def test_length_prefixed_frames_whole_messages_at_any_split(
    items: list[bytes], at: list[int]
) -> None:
    frame = FRAMINGS["length-prefixed"].frame
    wire = b"".join(frame(p) for p in items)
    assert feed_split("length-prefixed", wire, at) == [frame(p) for p in items]


@given(st.lists(st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")), min_size=1,
                max_size=8), cuts)
def test_line_frames_whole_lines_at_any_split(items: list[bytes], at: list[int]) -> None:
    wire = b"".join(p + b"\n" for p in items)
    assert feed_split("line", wire, at) == [p + b"\n" for p in items]


http_bodies = st.lists(st.binary(max_size=200), min_size=1, max_size=6)


@given(http_bodies, cuts)
def test_http_frames_requests_and_their_bodies_at_any_split(
    bodies: list[bytes], at: list[int]
) -> None:
    requests = [
        b"POST /%d HTTP/1.1\r\nHost: x\r\ncontent-length: %d\r\n\r\n%s" % (i, len(b), b)
        if b else b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i
        for i, b in enumerate(bodies)
    ]
    assert feed_split("http", b"".join(requests), at) == requests


def test_http_frames_responses_too() -> None:
    wire = http_response(200, b"hello") + http_response(501, b"no")
    msgs = feed_split("http", wire, [7, 50])
    assert [m.split(b"\r\n", 1)[0] for m in msgs] == [b"HTTP/1.1 200 OK",
                                                       b"HTTP/1.1 501 Not Implemented"]


def refusal(framing: str, wire: bytes) -> sk.StrParserError:
    parser = sk.StrParser(FRAMINGS[framing].parse)
    with pytest.raises(sk.StrParserError) as info:
        parser.feed(wire)
    assert info.value.errno == errno.EPROTO
    return info.value


@pytest.mark.parametrize(
    ("wire", "status", "text"),
    [
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501,
         "Transfer-Encoding: chunked bodies are not supported"),
        (b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "bad Content-Length b'ten'"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
         "conflicting Content-Length headers"),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed HTTP header line"),
        (b"GET / HTTP/1.1\r\nX: " + b"y" * MAX_HEADER_BYTES, 413, "HTTP header block over"),
    ],
)
def test_http_refuses_what_it_cannot_frame(wire: bytes, status: int, text: str) -> None:
    exc = refusal("http", wire)
    cause = exc.__cause__
    assert isinstance(cause, FramingError)
    assert cause.status == status
    assert text in str(cause)
    assert text in str(exc)  # the connection's error names it
    refuse = FRAMINGS["http"].refuse
    assert refuse is not None
    assert refuse(cause).startswith(b"HTTP/1.1 %d " % status)


def test_an_endless_line_is_refused() -> None:
    exc = refusal("line", b"x" * MAX_LINE_BYTES)
    assert isinstance(exc.__cause__, FramingError)
    assert f"line longer than {MAX_LINE_BYTES} bytes" in str(exc)


def test_a_length_over_the_receive_buffer_is_emsgsize() -> None:
    parser = sk.StrParser(FRAMINGS["length-prefixed"].parse, max_msg_size=1000)
    with pytest.raises(sk.StrParserError) as info:
        parser.feed((1000).to_bytes(4, "big"))
    assert info.value.errno == errno.EMSGSIZE


@pytest.mark.parametrize("name", list(FRAMINGS))
def test_each_framing_frames_its_own_demo_messages_and_echo_replies(name: str) -> None:
    f = FRAMINGS[name]
    for payload in (b"hello", b"kiwi"):
        message = f.frame(payload)
        assert feed_split(name, message, [3]) == [message]
        reply = f.reply(b"[backend 0] ", message)
        assert feed_split(name, reply, [5]) == [reply]
        assert "backend 0" in f.show(reply)
