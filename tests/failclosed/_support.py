"""Shared pieces of the fail-closed tests: values that are not verdicts (some
of them record every operator asked of them), programs that return or raise
them, and real loopback connections to run them on."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import attrs
import pytest
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_tcp import SkStream

#: A guard against hangs; every wait ends on an event long before it.
TIMEOUT = 10.0
#: The runtime's logger: program errors and socket errors are logged there.
RUNTIME_LOGGER = "skmsg_core.runtime._runtime"

#: Every operator a spy value was asked, as ``"Type.__op__"``; a runner that
#: maps a return to a verdict must ask none.
TOUCHED: list[str] = []


def _spy(name: str, result: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: object, *args: object) -> Any:
        TOUCHED.append(f"{type(self).__name__}.{name}")
        return result(self, *args)

    method.__name__ = name
    return method


def _raise(exc: BaseException) -> Callable[..., Any]:
    def fail(*_: object) -> Any:
        raise exc

    return fail


class EqAlways:
    """Says it equals anything, and is true, and is 1."""

    __eq__ = _spy("__eq__", lambda self, other: True)
    __ne__ = _spy("__ne__", lambda self, other: False)
    __bool__ = _spy("__bool__", lambda self: True)
    __int__ = _spy("__int__", lambda self: 1)
    __index__ = _spy("__index__", lambda self: 1)
    __hash__ = _spy("__hash__", lambda self: 1)


class EqRaises:
    """A comparison with it raises."""

    __eq__ = _spy("__eq__", _raise(RuntimeError("compared")))
    __ne__ = _spy("__ne__", _raise(RuntimeError("compared")))
    __index__ = _spy("__index__", lambda self: 1)
    __hash__ = _spy("__hash__", lambda self: 1)


class BoolRaises:
    """A comparison with it gives itself back, whose truth value raises."""

    __eq__ = _spy("__eq__", lambda self, other: self)
    __ne__ = _spy("__ne__", lambda self, other: self)
    __bool__ = _spy("__bool__", _raise(RuntimeError("asked for a truth value")))
    __hash__ = _spy("__hash__", lambda self: 1)


class FakeArray:
    """What a numpy array of two elements does: ``==`` is elementwise, and the
    truth value of the result is ambiguous (a ``ValueError``)."""

    def __init__(self, items: list[object]) -> None:
        self.items = items

    __eq__ = _spy("__eq__", lambda self, other: FakeArray([x == other for x in self.items]))
    __ne__ = _spy("__ne__", lambda self, other: FakeArray([x != other for x in self.items]))
    __bool__ = _spy(
        "__bool__",
        _raise(ValueError("The truth value of an array with more than one element is ambiguous")),
    )
    __index__ = _spy("__index__", _raise(TypeError("only integer scalar arrays")))
    __len__ = _spy("__len__", lambda self: len(self.items))
    __hash__ = None  # type: ignore[assignment]


class PolicyAbort(BaseException):
    """A program's own ``BaseException`` subclass."""


def _exit(ctx: Any) -> object:
    sys.exit()


def _abort(ctx: Any) -> object:
    raise PolicyAbort("the policy gave up")


def _write(field: str, value: object) -> Callable[[Any], object]:
    """Set the context's ``field`` to ``value`` (``SELF``: the context's own
    socket), then pass."""

    def write(ctx: Any) -> object:
        setattr(ctx, field, ctx.sk if value is SELF else value)
        return sk.SK_PASS

    return write


SELF = object()


@attrs.frozen
class Bad:
    """What a program does with a message it does not like (``behave(ctx)``):
    return a value that is not a verdict, raise, or write a context field the
    engines read after the run. ``error``: the type of the program's
    ``last_error`` then; ``names``: what that error's text names."""

    behave: Callable[[Any], object]
    error: type[BaseException]
    names: str


BAD = [
    pytest.param(Bad(lambda _: 1.0, sk.VerdictError, "float"), id="float"),
    pytest.param(
        Bad(lambda _: Fraction(1), sk.VerdictError, "fractions.Fraction"), id="fraction"
    ),
    pytest.param(Bad(lambda _: complex(1), sk.VerdictError, "complex"), id="complex"),
    pytest.param(Bad(lambda _: True, sk.VerdictError, "bool"), id="true"),
    pytest.param(Bad(lambda _: EqAlways(), sk.VerdictError, "EqAlways"), id="eq-always"),
    pytest.param(Bad(lambda _: Decimal("sNaN"), sk.VerdictError, "decimal.Decimal"), id="snan"),
    pytest.param(Bad(lambda _: EqRaises(), sk.VerdictError, "EqRaises"), id="eq-raises"),
    pytest.param(Bad(lambda _: BoolRaises(), sk.VerdictError, "BoolRaises"), id="bool-raises"),
    pytest.param(Bad(lambda _: FakeArray([1, 1]), sk.VerdictError, "FakeArray"), id="array"),
    pytest.param(Bad(_exit, SystemExit, "SystemExit"), id="sys-exit"),
    pytest.param(Bad(_abort, PolicyAbort, "PolicyAbort"), id="base-exception"),
]

#: Writes an SK_MSG program may not make: the fields the TX engine reads after
#: the run are read-only, apply/cork take a u32 only.
WRITES_MSG = [
    pytest.param(Bad(_write(f, v), e, e.__name__), id=f"write-{f}-{i}")
    for i, (f, v, e) in enumerate([
        ("sk_redir", SELF, AttributeError),
        ("flags", sk.BPF_F_INGRESS, AttributeError),
        ("size", 10**9, AttributeError),
        ("start", -1, AttributeError),
        ("max_frags", 0, AttributeError),
        ("apply_bytes", 2**40, ValueError),
        ("apply_bytes", -1, ValueError),
        ("apply_bytes", 1.5, TypeError),
        ("cork_bytes", "1", TypeError),
        ("cork_bytes", EqAlways(), TypeError),
    ])
]
#: Writes an SK_SKB program may not make: the fields the RX engines read.
WRITES_SKB = [
    pytest.param(Bad(_write(f, v), AttributeError, "AttributeError"), id=f"write-{f}-{i}")
    for i, (f, v) in enumerate([
        ("sk_redir", SELF),
        ("flags", sk.BPF_F_INGRESS),
        ("len", -5),
        ("len", 10**9),
    ])
]


def policy(bad: Bad) -> Callable[[Any], Any]:
    """A verdict program (SK_MSG or SK_SKB alike) that passes every message but
    those holding ``BAD``, for which it does what ``bad`` says."""

    def program(ctx: Any) -> Any:
        if b"BAD" in bytes(ctx.data):
            return bad.behave(ctx)
        return sk.SK_PASS

    return program


def check_failed_closed(
    prog: sk.Program, bad: Bad, caplog: pytest.LogCaptureFixture, *, runs: int
) -> None:
    """``prog`` ran ``runs`` times and dropped exactly one message as an error
    that names what the program did, and the runtime logged one line about it."""
    stats = prog.statistics()
    assert (stats.run_cnt, stats.dropped, stats.errors) == (runs, 1, 1), stats
    assert stats.passed == runs - 1
    error = prog.last_error
    assert type(error) is bad.error, repr(error)
    assert bad.names in f"{type(error).__name__}: {error}"
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == RUNTIME_LOGGER and getattr(r, "event", None) == "program_error"
        and r.fields["program"] == prog.name  # type: ignore[attr-defined]
    ]
    assert len(lines) == 1, lines
    assert bad.names in lines[0]
    assert lines[0].startswith("event=program_error program=")
    assert lines[0].endswith(" verdict=SK_DROP")
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"


def frame(payload: bytes) -> bytes:
    """A 4-byte big-endian length prefix, then ``payload``."""
    return len(payload).to_bytes(4, "big") + payload


async def read_exactly(stream: SkStream, n: int) -> bytes:
    """``receive_some`` until ``n`` bytes came (EOF first fails the test)."""
    got = bytearray()
    with trio.fail_after(TIMEOUT):
        while len(got) < n:
            chunk = await stream.receive_some()
            assert chunk, f"EOF after {bytes(got)!r}, expected {n} bytes"
            got += chunk
    return bytes(got)


async def read_to_eof(stream: SkStream) -> bytes:
    """Everything ``stream`` receives until EOF."""
    got = bytearray()
    with trio.fail_after(TIMEOUT):
        while chunk := await stream.receive_some():
            got += chunk
    return bytes(got)


async def receive_datagrams(sock: skmsg_udp.UdpSocket, n: int) -> list[bytes]:
    """The next ``n`` datagrams ``sock`` receives."""
    with trio.fail_after(TIMEOUT):
        return [await sock.receive() for _ in range(n)]


def runtime_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the runtime logged during the test."""
    return [r for r in caplog.records if r.name == RUNTIME_LOGGER]
