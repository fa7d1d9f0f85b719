"""strparser: frame a byte stream into messages with a parse program.

Mirrors ``net/strparser/strparser.c`` (``__strp_recv``), sans-I/O: bytes go in
through :meth:`StrParser.feed`, whole messages come out.

Rules (the kernel's)
--------------------
* The parse program sees one :class:`SkBuff`, reused for every call, whose
  ``data``/``len`` are all the bytes accumulated for the current message, from
  its start. It must not keep the context past its return.
* Its return ``> 0`` is the message length from the message start; ``0`` means
  "need more": it is called again, with everything accumulated, when more
  bytes arrive; ``< 0`` is an error with that errno (``-ESTRPIPE`` once bytes
  are accumulated becomes ``ENODATA``); below ``-4095`` (``MAX_ERRNO``) it is
  no errno, and ``EPROTO``.
* A length over ``max_msg_size`` is ``EMSGSIZE`` (stat ``msg_too_big``); a
  length not beyond the bytes accumulated before the newest chunk is ``EPROTO``
  (stat ``bad_hdr_len``: it could have been answered earlier). A return that is
  not an ``int`` (or is a ``bool``), or a program that raises (any exception
  but ``KeyboardInterrupt``, a run over its budget too), is ``EPROTO``. No
  code of the returned value runs.
* Errors are :class:`StrParserError` and sticky: the parser holds nothing more
  and every later :meth:`~StrParser.feed` raises the same error.
* Bytes past a complete message start the next one; a partial one waits.

Theory of operation
-------------------
A fed chunk is walked with an offset. While no message is pending, the program
runs on ``chunk[offset:]`` and each message wholly inside the chunk is handed
out as a zero-copy, read-only memoryview slice of the chunk. The tail that does
not complete a message is copied once into a ``bytearray`` accumulator.

When a message is pending, the next chunk extends the accumulator: wholly
while the length is unknown (the program is then run on the accumulator, as
the kernel runs it on the head skb with the new skb appended), and only up to
the known length once the program has given it (the program is not run again).
A completed message is emitted as a view of the accumulator, which is handed
off (never written again) and replaced by a new one; the rest of the chunk is
walked zero-copy as above. The accumulator grows in place, amortised O(1) per
byte; if the program kept a slice of it (so it cannot be resized), it is
copied once to a fresh one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs

from ._consts import DEFAULT_QUEUE_BYTES
from ._errors import StrParserError, errno_name
from ._progs import describe_error, describe_value
from ._skb import SkBuff

if TYPE_CHECKING:
    from ._sock import Sock

__all__ = ["LengthPrefixParser", "StrParser", "StrParserStats"]

_EMPTY = memoryview(b"")
#: ``MAX_ERRNO``: a negative return below -4095 is no errno.
_MAX_ERRNO = 4095


def _strerror(err: int) -> str:
    try:
        return os.strerror(err)
    except (ValueError, OverflowError):
        return "unknown error"


class LengthPrefixParser:
    """A built-in parse program: messages framed by a ``size``-byte unsigned
    length prefix (``byteorder`` "big" or "little") that counts the body only.

    It is an ordinary parse program (call it with an :class:`SkBuff`: 0 until
    ``size`` bytes are there, then ``size`` + the prefix's value), and the
    stream parser, recognising it, frames with it in its own loop instead of
    calling it per message; the program's run count is kept all the same.

    Raises:
        ValueError: ``size`` is not 1, 2, 4 or 8, or ``byteorder`` is unknown.
    """

    __slots__ = ("byteorder", "size", "unpack_from")

    def __init__(self, size: int = 4, byteorder: str = "big") -> None:
        if size not in (1, 2, 4, 8):
            raise ValueError(f"length prefix size must be 1, 2, 4 or 8, not {size}")
        if byteorder not in ("big", "little"):
            raise ValueError(f"byteorder must be 'big' or 'little', not {byteorder!r}")
        self.size = size
        self.byteorder: Literal["big", "little"] = "big" if byteorder == "big" else "little"
        fmt = (">" if byteorder == "big" else "<") + {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
        #: ``unpack_from(buffer, offset)``: the prefix at ``offset``, as a 1-tuple.
        self.unpack_from = struct.Struct(fmt).unpack_from

    def __call__(self, skb: SkBuff) -> int:
        if skb.len < self.size:
            return 0
        return self.size + int.from_bytes(skb.data[: self.size], self.byteorder)

    def __repr__(self) -> str:
        return f"LengthPrefixParser({self.size}, {self.byteorder!r})"


@attrs.frozen
class StrParserStats:
    """A snapshot of a :class:`StrParser`'s counters (``struct strp_aggr_stats``).

    ``msgs``/``bytes``: messages emitted and their total length; ``need_more``:
    parse calls that returned 0; ``msg_too_big``/``bad_hdr_len``: lengths refused
    with ``EMSGSIZE``/``EPROTO``; ``errors``: errors of any kind (0 or 1, as errors
    are sticky).
    """

    msgs: int
    bytes: int
    need_more: int
    msg_too_big: int
    bad_hdr_len: int
    errors: int


def _views(view: memoryview, start: int, ends: list[int]) -> list[memoryview]:
    """The messages ``view[start:ends[0]]``, ``view[ends[0]:ends[1]]``, ... as views."""
    out = []
    for end in ends:
        out.append(view[start:end])
        start = end
    return out


class StrParser:
    """strparser: frames a byte stream into messages with a parse program."""

    def __init__(
        self,
        parse: Callable[[SkBuff], int],
        *,
        max_msg_size: int = DEFAULT_QUEUE_BYTES,
        sk: Sock | None = None,
        native: LengthPrefixParser | None = None,
    ) -> None:
        """Frame with ``parse``; messages may be up to ``max_msg_size`` bytes (the
        kernel's ``sk_rcvbuf``); the program's context has ``sk`` as its socket.
        With ``native`` (the built-in program ``parse`` wraps), messages inside a
        chunk are framed in this parser's own loop; :meth:`take_native_runs`
        says how many program runs that loop stood in for.

        Raises:
            TypeError: ``parse`` is not callable.
            ValueError: ``max_msg_size`` is less than 1.
        """
        if not callable(parse):
            raise TypeError(f"strparser: parse program {parse!r} is not callable")
        if max_msg_size < 1:
            raise ValueError(f"strparser: max_msg_size {max_msg_size} is less than 1")
        self._parse = parse
        self._native = native
        self._native_runs = 0
        self._name: str = getattr(parse, "__qualname__", None) or repr(parse)
        self._max = max_msg_size
        self._ctx = SkBuff(sk)
        self._acc = bytearray()  # bytes of the pending message
        self._need = 0  # its length, once the program has given it
        self._error: StrParserError | None = None
        self._msgs = self._bytes = self._need_more = 0
        self._too_big = self._bad_hdr = self._errors = 0

    def replace_parse(
        self, parse: Callable[[SkBuff], int], *, native: LengthPrefixParser | None = None
    ) -> None:
        """Frame with ``parse`` (and its ``native`` form) from now on: a message
        already pending is framed by it when more bytes arrive (a length the
        old program gave stands). Counters carry on.

        Raises:
            TypeError: ``parse`` is not callable.
        """
        if not callable(parse):
            raise TypeError(f"strparser: parse program {parse!r} is not callable")
        self._parse = parse
        self._native = native
        self._name = getattr(parse, "__qualname__", None) or repr(parse)

    @property
    def max_msg_size(self) -> int:
        """The longest message accepted, in bytes. The kernel's strparser reads
        ``sk_rcvbuf`` at each check, so raising or lowering the socket's
        buffer changes it for the next message; setting this is that change.

        Raises (on set):
            ValueError: less than 1.
        """
        return self._max

    @max_msg_size.setter
    def max_msg_size(self, value: int) -> None:
        if type(value) is not int or value < 1:
            raise ValueError(f"strparser: max_msg_size {value!r} is not an int of at least 1")
        self._max = value

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete message (0 after an error)."""
        return len(self._acc)

    @property
    def error(self) -> StrParserError | None:
        """The sticky error, or ``None`` while the parser is healthy."""
        return self._error

    def statistics(self) -> StrParserStats:
        """A frozen snapshot of the counters."""
        return StrParserStats(
            self._msgs, self._bytes, self._need_more, self._too_big, self._bad_hdr, self._errors
        )

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Add ``data`` to the stream; return the messages it completes, in order.

        Each message is a read-only memoryview that stays valid and unchanged
        after later feeds. A message wholly inside ``data`` is a slice of it, not
        a copy: a caller that reuses a ``bytearray`` (as for ``recv_into``) must
        not overwrite it while those views are alive. Trailing bytes of an
        incomplete message are copied; ``data`` is not referenced afterwards
        except by the returned views.

        Raises:
            StrParserError: the parse program failed (``errno`` as in the module
                rules), now or on an earlier feed. Messages this ``data``
                completed before the failure are on the error's ``messages``
                (the kernel hands them on before it sets the socket error);
                a repeated raise carries none.
            TypeError: ``data`` is not a C-contiguous bytes-like object.
        """
        head, view, start, ends = self.feed_spans(data)
        return head + _views(view, start, ends)

    def feed_spans(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[memoryview], memoryview, int, list[int]]:
        """:meth:`feed`, with the messages inside ``data`` as offsets, not views.

        Returns ``(head, view, start, ends)``: ``head``, the message completed
        from bytes held before (none or one, a view of its own); then the
        messages ``view[start:ends[0]]``, ``view[ends[0]:ends[1]]``, ... where
        ``view`` is ``data`` as a read-only byte view. A receive engine walks the
        offsets and slices only what it must: consecutive messages bound for one
        place are one slice.

        Raises:
            StrParserError, TypeError: as :meth:`feed`.
        """
        if self._error is not None:
            self._error.messages = []
            raise self._error
        view = memoryview(data).cast("B").toreadonly()
        head: list[memoryview] = []
        ends: list[int] = []
        start = 0
        try:
            if self._acc and view.nbytes:
                start = self._continue(view, head)
            if self._native is not None:
                self._spans_native(self._native, view, start, ends)
            else:
                self._spans(view, start, ends)
        except StrParserError as exc:
            exc.messages = head + _views(view, start, ends)
            self._count(exc.messages)
            raise
        self._msgs += len(head) + len(ends)
        self._bytes += (head[0].nbytes if head else 0) + (ends[-1] - start if ends else 0)
        return head, view, start, ends

    def _count(self, messages: list[memoryview]) -> None:
        self._msgs += len(messages)
        self._bytes += sum(m.nbytes for m in messages)

    def _spans(self, view: memoryview, off: int, ends: list[int]) -> None:
        """Frame the messages of ``view`` from ``off`` with the parse program."""
        n = len(view)
        parse, ctx, max_size = self._parse, self._ctx, self._max
        append = ends.append
        while off < n:
            rest = view[off:]
            ctx._data = rest  # SkBuff.reset, inlined: this loop runs per message
            ctx._len = n - off
            try:
                length: object = parse(ctx)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                raise self._fail(errno.EPROTO, f"raised {describe_error(exc)}") from exc
            if type(length) is not int or not 0 < length <= max_size:
                length = self._check(length, 0)
                if not length:
                    self._check_held(n - off)
                    self._acc = bytearray(rest)
                    break
            end = off + length
            if end > n:
                self._acc = bytearray(rest)
                self._need = length
                break
            append(end)
            off = end
        self._ctx.reset(_EMPTY)

    def _spans_native(
        self, native: LengthPrefixParser, view: memoryview, off: int, ends: list[int]
    ) -> None:
        """The same framing as running ``native`` per message, without the calls."""
        n = len(view)
        size, max_size = native.size, self._max
        unpack_from = native.unpack_from
        append = ends.append
        first = len(ends)
        if max_size >= n - off:
            # No message inside the chunk can be too big, so nothing is checked
            # per message: the walk runs until unpack_from finds no whole prefix
            # at the offset (struct.error; OverflowError past any index), and
            # then the last end, if it lies past the chunk, is a partial message's.
            end = off
            try:
                while True:
                    end += size + unpack_from(view, end)[0]
                    append(end)
            except (struct.error, OverflowError):
                pass
            if len(ends) > first and ends[-1] > n:
                ends.pop()
            off = ends[-1] if len(ends) > first else off
        else:
            while off <= n - size:
                end = off + size + unpack_from(view, off)[0]
                if end - off > max_size:
                    self._native_runs += len(ends) - first + 1
                    self._check(end - off, 0)
                if end > n:
                    break
                append(end)
                off = end
        self._native_runs += len(ends) - first
        if off == n:
            return
        # a partial message: its prefix (one more program run), or part of it
        self._native_runs += 1
        if n - off < size:
            self._check(0, 0)
            self._check_held(n - off)
        else:
            length = size + unpack_from(view, off)[0]
            if length > max_size:
                self._check(length, 0)
            self._need = length
        self._acc = bytearray(view[off:])

    def take_native_runs(self) -> int:
        """Program runs the native loop stood in for since the last call."""
        runs, self._native_runs = self._native_runs, 0
        return runs

    def _continue(self, view: memoryview, out: list[memoryview]) -> int:
        """Add ``view`` to the pending message; append it to ``out`` if complete.

        Returns how many bytes of ``view`` it took.
        """
        before = len(self._acc)
        need = self._need
        if need:
            take = need - before
            if take > len(view):
                self._extend(view)
                return len(view)
            self._extend(view[:take])
            self._emit(need, out)
            return take
        self._extend(view)
        acc = self._acc
        ctx_view = memoryview(acc).toreadonly()
        try:
            length: object = self._parse(self._ctx.reset(ctx_view))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise self._fail(errno.EPROTO, f"raised {describe_error(exc)}") from exc
        finally:
            self._ctx.reset(_EMPTY)
            with contextlib.suppress(BufferError):  # the program exported it; _extend copes
                ctx_view.release()
        length = self._check(length, before)
        if not length:
            self._check_held(len(acc))
            return len(view)
        if length > len(acc):
            self._need = length
            return len(view)
        with contextlib.suppress(BufferError):
            del acc[length:]  # free the next message's bytes, walked in ``view``
        self._emit(length, out)
        return length - before

    def _extend(self, chunk: memoryview) -> None:
        """Append ``chunk`` to the accumulator, copying it first if it is exported."""
        try:
            self._acc += chunk
        except BufferError:
            acc = bytearray(self._acc)
            acc += chunk
            self._acc = acc

    def _emit(self, length: int, out: list[memoryview]) -> None:
        """Hand the accumulated message off to ``out`` and start a new accumulator."""
        out.append(memoryview(self._acc).toreadonly()[:length])
        self._acc = bytearray()
        self._need = 0

    def _check(self, length: object, before: int) -> int:
        """Validate a parse result (``before``: bytes held before this chunk).

        Returns the length, or 0 for "need more" (counted).

        Raises:
            StrParserError: the result is an error, as the module rules say.
        """
        t = type(length)
        if t is not int:
            if t is bool or not issubclass(t, int):
                raise self._fail(errno.EPROTO, f"returned {describe_value(length)}, not an int")
            length = int.__int__(length)  # type: ignore[arg-type]  # no subclass code
        assert isinstance(length, int)
        if length == 0:
            self._need_more += 1
            return 0
        if length < 0:
            err = -length
            if err > _MAX_ERRNO:
                raise self._fail(
                    errno.EPROTO, f"returned {length}, neither a length nor a negative errno"
                )
            if err == errno.ESTRPIPE and before:
                err = errno.ENODATA
            raise self._fail(err, f"returned {length}")
        if length > self._max:
            self._too_big += 1
            raise self._fail(errno.EMSGSIZE, f"returned {length}, over max_msg_size {self._max}")
        if length <= before:
            self._bad_hdr += 1
            raise self._fail(
                errno.EPROTO,
                f"returned {length}, not beyond the {before} bytes accumulated before",
            )
        return length

    def _check_held(self, held: int) -> None:
        """Bounded memory: a program that still needs more after ``max_msg_size``
        bytes can never frame a message that fits, so holding more is refused."""
        if held > self._max:
            self._too_big += 1
            raise self._fail(
                errno.EMSGSIZE,
                f"returned 0 (need more) with {held} bytes held, over max_msg_size {self._max}",
            )

    def _fail(self, err: int, what: str) -> StrParserError:
        """Record the sticky error ``err`` (parse program ``what``); drop held bytes."""
        name = errno_name(err)
        exc = StrParserError(
            err, f"strparser: parse program {self._name} {what}: {name} ({_strerror(err)})"
        )
        self._error = exc
        self._errors += 1
        self._acc = bytearray()
        self._need = 0
        self._ctx.reset(_EMPTY)
        return exc
