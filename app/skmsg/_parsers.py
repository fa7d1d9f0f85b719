"""The built-in framings of ``skmsg proxy``: parse programs and their helpers.

Rules
-----
A framing's ``parse`` is a stream parser program (``SK_SKB_STREAM_PARSER``):
it sees an :class:`~skmsg_core.SkBuff` whose ``data`` holds every byte of the
next message received so far, from its start, and returns the message length,
or 0 for "need more". A stream the framing cannot serve is refused by raising
:class:`FramingError`: the stream parser turns that into ``EPROTO`` and the
connection's error, with the exception's text in the message.

The programs never copy the stream to search it: ``re`` scans the
``memoryview`` in place, and only an HTTP header block is copied (to read
``Content-Length``).

Besides ``parse``, a :class:`Framing` knows how to build a message (the demo
client sends those), how to answer one (the embedded echo backends), how to
show one, and what to tell a client whose stream it refused (HTTP only).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

import skmsg_core as sk

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "FRAMINGS",
    "MAX_HEADER_BYTES",
    "MAX_LINE_BYTES",
    "Framing",
    "FramingError",
    "http_parser",
    "line_parser",
    "parse_http",
    "parse_length_prefixed",
    "parse_line",
]

#: The longest line the line framing accepts, newline included.
MAX_LINE_BYTES = 65536
#: The longest HTTP header block (request line and headers) accepted.
MAX_HEADER_BYTES = 65536
#: The proxy's default limit on one message, whatever the framing
#: (``--max-message-size``): 1 MiB.
DEFAULT_MAX_MESSAGE = 1 << 20

_NL = re.compile(b"\n")
_EOH = re.compile(b"\r\n\r\n")
_STATUS = {
    400: b"Bad Request",
    413: b"Payload Too Large",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}


class FramingError(ValueError):
    """The remote peer's bytes cannot be framed (their fault, not ours).

    ``status`` is the HTTP status that describes the refusal.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- parse programs ----------------------------------------------------------------------


#: A 4-byte big-endian length, then that many bytes (the length excludes itself):
#: the core's built-in program, which the stream parser frames natively.
parse_length_prefixed = sk.LengthPrefixParser(4, "big")


def line_parser(limit: int = MAX_LINE_BYTES) -> Callable[[sk.SkBuff], int]:
    """A parse program for lines of at most ``limit`` bytes, newline included.

    The program raises :class:`FramingError` (413) for a longer line, as soon
    as ``limit`` bytes came without a newline.
    """

    def parse_line(skb: sk.SkBuff) -> int:
        m = _NL.search(skb.data)
        if m is not None:
            end: int = m.end()
            if end > limit:
                raise FramingError(f"line longer than {limit} bytes", 413)
            return end
        if skb.len >= limit:
            raise FramingError(f"line longer than {limit} bytes", 413)
        return 0

    parse_line.__doc__ = f"One line, up to and including ``\\n``, of at most {limit} bytes."
    return parse_line


def http_parser(limit: int | None = None) -> Callable[[sk.SkBuff], int]:
    """A parse program for HTTP/1.x messages of at most ``limit`` bytes, header
    block and body (``None``: the body's length is not limited); the header
    block alone is at most :data:`MAX_HEADER_BYTES` (or ``limit`` if smaller).

    The program refuses a message over ``limit`` with :class:`FramingError`
    (413) as soon as its header block says its length, before the body comes.
    """
    head_limit = MAX_HEADER_BYTES if limit is None else min(MAX_HEADER_BYTES, limit)

    def parse_http(skb: sk.SkBuff) -> int:
        data = skb.data
        m = _EOH.search(data)
        if m is None:
            if skb.len > head_limit:
                raise FramingError(f"HTTP header block over {head_limit} bytes", 413)
            return 0
        end: int = m.end()
        if end > head_limit:
            raise FramingError(f"HTTP header block over {head_limit} bytes", 413)
        total = end + (_content_length(bytes(data[: m.start()])) or 0)
        if limit is not None and total > limit:
            raise FramingError(
                f"HTTP message of {total} bytes is over the proxy's limit of {limit} bytes",
                413,
            )
        return total

    parse_http.__doc__ = _PARSE_HTTP_DOC
    return parse_http


def _content_length(head: bytes) -> int | None:
    """The ``Content-Length`` of an HTTP header block (request or status line
    first), ``None`` when it has none.

    Raises:
        FramingError: chunked or otherwise transfer-encoded bodies (501), a
            malformed header line or ``Content-Length`` (400).
    """
    length: int | None = None
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise FramingError(f"malformed HTTP header line {line[:40]!r}")
        name = name.lower()
        if name == b"transfer-encoding":
            raise FramingError(
                f"Transfer-Encoding: {value.strip().decode('latin-1')} bodies are not "
                "supported by the http framing; send a Content-Length body",
                501,
            )
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise FramingError(f"bad Content-Length {text[:20]!r}")
            if length is not None and int(text) != length:
                raise FramingError("conflicting Content-Length headers")
            length = int(text)
    return length


_PARSE_HTTP_DOC = """One HTTP/1.x message: the header block up to ``\\r\\n\\r\\n``, then a
``Content-Length`` body (none when the header is absent).

Requests and responses frame alike (the first line is not read), so the
demo client frames the echo backends' responses with it too.

Raises:
    FramingError: chunked or otherwise transfer-encoded bodies (501), a
        header block or message over the limits (413), a malformed header
        line or ``Content-Length`` (400).
"""

#: One line, up to and including ``\n`` (at most :data:`MAX_LINE_BYTES`).
parse_line = line_parser()
#: One HTTP/1.x message (a header block of at most :data:`MAX_HEADER_BYTES`, any body).
parse_http = http_parser()


# -- what the demo client and the echo backends need -----------------------------------------


def _frame_lp(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def _reply_lp(tag: bytes, message: bytes) -> bytes:
    return _frame_lp(tag + message[4:])


def _show_lp(message: bytes) -> str:
    return repr(message[4:])


def _frame_line(payload: bytes) -> bytes:
    return payload + b"\n"


def _reply_line(tag: bytes, message: bytes) -> bytes:
    return tag + message


def _show_line(message: bytes) -> str:
    return repr(message.rstrip(b"\r\n"))


def _frame_http(payload: bytes) -> bytes:
    path = b"/" + payload
    if len(payload) % 2:
        return b"GET " + path + b" HTTP/1.1\r\nHost: skmsg-demo\r\n\r\n"
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: skmsg-demo\r\nContent-Length: "
        + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )


def http_response(status: int, body: bytes, *, close: bool = False) -> bytes:
    """A minimal HTTP/1.1 response with a ``text/plain`` body."""
    reason = b"OK" if status == 200 else _STATUS.get(status, b"Error")
    return (
        b"HTTP/1.1 " + str(status).encode() + b" " + reason + b"\r\n"
        b"Content-Type: text/plain\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body
    )


def _reply_http(tag: bytes, message: bytes) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    request_line = head.split(b"\r\n", 1)[0]
    return http_response(200, tag + request_line + (b" " + body if body else b"") + b"\n")


def _show_http(message: bytes) -> str:
    head, _, body = message.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    return f"{first} {body!r}" if body else first


def _refuse_http(exc: FramingError) -> bytes:
    return http_response(exc.status, str(exc).encode() + b"\n", close=True)


def _unavailable_http(text: str) -> bytes:
    return http_response(503, text.encode() + b"\n", close=True)


@attrs.frozen
class Framing:
    """A named framing: its parse program and the helpers around it.

    ``frame(payload)``: a message carrying ``payload`` (what the demo sends);
    ``reply(tag, message)``: an echo backend's answer; ``show(message)``: a
    short text for people; ``refuse(exc)``: bytes to send a client whose
    stream was refused, or ``None``; ``unavailable(text)``: bytes to send a
    client whose message no backend could take, or ``None``;
    ``within(limit)``: the parse program for messages of at most ``limit``
    bytes (``None``: ``parse``, the stream parser's own limit is the only one).
    """

    name: str
    parse: Callable[[sk.SkBuff], int]
    help: str
    frame: Callable[[bytes], bytes]
    reply: Callable[[bytes, bytes], bytes]
    show: Callable[[bytes], str]
    refuse: Callable[[FramingError], bytes] | None = None
    unavailable: Callable[[str], bytes] | None = None
    within: Callable[[int], Callable[[sk.SkBuff], int]] | None = None

    def parse_within(self, limit: int) -> Callable[[sk.SkBuff], int]:
        """The parse program for messages of at most ``limit`` bytes: one that
        refuses a longer message with :class:`FramingError` (413) where the
        framing can tell early, else :attr:`parse` (the stream parser refuses
        it then, with ``EMSGSIZE``, given ``limit`` as its ``max_msg_size``)."""
        return self.parse if self.within is None else self.within(limit)

    @classmethod
    def custom(cls, parse: Callable[[sk.SkBuff], int], name: str) -> Framing:
        """A policy file's own parser: messages are echoed unchanged and shown raw;
        the demo client sends lines."""
        return cls(name, parse, "the policy file's parse(skb)", _frame_line,
                   lambda tag, message: message, repr)


FRAMINGS: dict[str, Framing] = {
    f.name: f
    for f in (
        Framing("length-prefixed", parse_length_prefixed,
                "a 4-byte big-endian length, then that many bytes",
                _frame_lp, _reply_lp, _show_lp),
        Framing("line", parse_line, "one line, ending with \\n",
                _frame_line, _reply_line, _show_line, within=line_parser),
        Framing("http", parse_http,
                "an HTTP/1.x request: headers to \\r\\n\\r\\n, then a Content-Length body "
                "(chunked bodies are refused)",
                _frame_http, _reply_http, _show_http, _refuse_http, _unavailable_http,
                within=http_parser),
    )
}
