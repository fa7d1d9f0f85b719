"""The boundary around one socket, by fault injection: every kind of exception
(``Exception`` subclasses, ``OSError``, ``SystemExit``, ``GeneratorExit``, a
``BaseException`` of our own, a ``BaseExceptionGroup``; never
``KeyboardInterrupt``, which must go up) raised at each step of one socket's
receive service (the runtime's pump: transport read, ``rx_feed``, the
parser, the verdict, ``rx_action`` pass and redirect, ``ingress_put``, the
endpoint's ``rx_failed``; a redirect target's ``egress_write`` and ingress;
TLS's reader-side record layer and verdict; UDP's datagram loop) and of its
send path (the SK_MSG program, ``SendOp``, ``_locked_send``, ``tx_redirect``,
the target's egress), patched in for that one socket only.

What must hold every time: the runtime and the other connections carry on
(a second connection keeps echoing, both through the handler and through the
runtime's own redirect), the faulty socket's reader (or sender) gets a clear
error that carries what was raised, the error is counted, nothing is
printed as a traceback, and nothing is read around the policy afterwards."""

from __future__ import annotations

import errno
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tcp
import skmsg_udp
from skmsg_core.runtime import Runtime, escapes_boundary, open_runtime
from skmsg_core.runtime import _runtime as runtime_module
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from skmsg_tls._rx import TlsRx
from tests.tls._ulp_helpers import enable_both

from ._support import TIMEOUT, frame, read_exactly, receive_datagrams, runtime_records


class Injected(BaseException):
    """A ``BaseException`` of our own, as a plugin might raise."""


def _group() -> BaseException:
    return BaseExceptionGroup("injected", [Injected("inner"), ValueError("inner")])


EXCEPTIONS = [
    pytest.param(lambda: ValueError("injected"), id="ValueError"),
    pytest.param(lambda: OSError(errno.EIO, "injected"), id="OSError"),
    pytest.param(lambda: SystemExit("injected"), id="SystemExit"),
    pytest.param(lambda: GeneratorExit("injected"), id="GeneratorExit"),
    pytest.param(lambda: Injected("injected"), id="BaseException"),
    pytest.param(_group, id="BaseExceptionGroup"),
]

Make = Callable[[], BaseException]


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, its causes and contexts."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def carries(error: BaseException | None, injected: BaseException) -> bool:
    return any(e is injected for e in chain(error))


@attrs.define(eq=False)
class Conn:
    """One connection: ``server`` is in the receive map, ``client`` in the send
    map; a handler task echoes what ``server`` receives and keeps its error."""

    name: str
    client: SkStream
    server: SkStream
    received: bytearray = attrs.Factory(bytearray)
    reader_error: BaseException | None = None
    done: trio.Event = attrs.Factory(trio.Event)

    async def handle(self) -> None:
        try:
            while data := await self.server.receive_some():
                self.received += data
                await self.server.send_all(data)
        except BaseException as exc:
            if escapes_boundary(exc):
                raise
            self.reader_error = exc
        finally:
            self.done.set()


_seq = itertools.count()


@attrs.define(eq=False)
class Rig:
    """Three connections on one runtime: ``a`` (where faults go), ``b`` (must
    carry on) and ``t`` (a redirect target). Receive map ``rx``: a length-prefix
    parser and a verdict by the message's kind (first byte of the body): ``P``
    passes (the handler echoes it), ``R`` is redirected to the same socket's
    egress (the runtime echoes it), ``T`` to ``t``'s egress, ``I`` to ``t``'s
    ingress. Send map ``tx`` (clients ``a`` and ``b``): an SK_MSG program that
    passes, or redirects kind ``X`` to ``t``'s server's egress."""

    rt: Runtime
    a: Conn
    b: Conn
    t: Conn
    rx: sk.SockHash
    tx: sk.SockHash
    rx_prog: sk.Program
    tx_prog: sk.Program
    #: The SK_MSG program raises this for ``a`` when set.
    program_fault: Make | None = None

    @staticmethod
    def message(kind: bytes) -> bytes:
        return frame(kind + b"-%d" % next(_seq))

    async def round_trip(self, conn: Conn, kind: bytes) -> None:
        """Send one message of ``kind`` (``P`` or ``R``) and read its echo."""
        msg = self.message(kind)
        await conn.client.send_all(msg)
        assert await read_exactly(conn.client, len(msg)) == msg

    async def carries_on(self) -> None:
        """``b`` echoes through the handler and through the runtime's redirect,
        and ``t`` serves as a target."""
        for kind in (b"P", b"R", b"P"):
            await self.round_trip(self.b, kind)
        msg = self.message(b"T")
        await self.b.client.send_all(msg)
        assert await read_exactly(self.t.client, len(msg)) == msg


@asynccontextmanager
async def open_rig(rt: Runtime) -> AsyncIterator[Rig]:
    conns = []
    for name in "abt":
        client, server = await tcp_stream_pair()
        conns.append(Conn(name, client, server))
    a, b, t = conns
    rx = sk.SockHash(8, name="rx")
    tx = sk.SockHash(8, name="tx")
    t_key = t.server.sk.cookie
    rig: Rig

    def route(skb: sk.SkBuff) -> int:
        kind = bytes(skb.data[4:5])
        if kind == b"R":
            return sk.sk_redirect_hash(skb, rx, skb.sk.cookie if skb.sk else 0, 0)
        if kind == b"T":
            return sk.sk_redirect_hash(skb, rx, t_key, 0)
        if kind == b"I":
            return sk.sk_redirect_hash(skb, rx, t_key, sk.BPF_F_INGRESS)
        return sk.SK_PASS

    def msg_route(msg: sk.SkMsg) -> int:
        if rig.program_fault is not None and msg.sk is a.client.sk:
            raise rig.program_fault()
        if bytes(msg.data[4:5]) == b"X":
            return sk.msg_redirect_hash(msg, rx, t_key, 0)
        return sk.SK_PASS

    rx.attach(sk.LengthPrefixParser(), sk.SK_SKB_STREAM_PARSER)
    rx_prog = rx.attach(route, sk.SK_SKB_STREAM_VERDICT)
    tx_prog = tx.attach(msg_route, sk.SK_MSG_VERDICT)
    for conn in conns:
        rx.update(conn.server.sk.cookie, conn.server)
    for conn in (a, b):
        tx.update(conn.client.sk.cookie, conn.client)
    rig = Rig(rt, a, b, t, rx, tx, rx_prog, tx_prog)
    try:
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(conn.handle)
            await rig.round_trip(a, b"P")  # everything is up
            await rig.carries_on()
            yield rig
            nursery.cancel_scope.cancel()
    finally:
        rx.close()
        tx.close()
        await aclose_all([s for c in conns for s in (c.client, c.server)])


def _raiser(make: Make) -> Callable[..., Any]:
    def fail(*_: object, **__: object) -> Any:
        raise make()

    return fail


def _async_raiser(make: Make) -> Callable[..., Any]:
    async def fail(*_: object, **__: object) -> Any:
        raise make()

    return fail


# -- the receive pump --------------------------------------------------------------------------


def _only(original: Callable[..., Any], is_faulty: Callable[..., bool], make: Make, *,
          is_async: bool = False) -> Callable[..., Any]:
    """``original``, raising ``make()`` instead where ``is_faulty(*args)``."""
    if is_async:

        async def patched_async(*args: Any, **kwargs: Any) -> Any:
            if is_faulty(*args):
                raise make()
            return await original(*args, **kwargs)

        return patched_async

    def patched(*args: Any, **kwargs: Any) -> Any:
        if is_faulty(*args):
            raise make()
        return original(*args, **kwargs)

    return patched


def inject_rx(step: str, rig: Rig, make: Make, mp: pytest.MonkeyPatch) -> bytes:
    """Make ``step`` of ``a``'s receive service raise ``make()``; the kind of
    message that reaches it."""
    server = rig.a.server
    psock = server.sk.psock
    assert psock is not None
    if step == "transport read":
        mp.setattr(server, "transport_recv_nowait", _raiser(make))
    elif step == "rx_feed":
        mp.setattr(sk.SkPsock, "rx_feed",
                   _only(sk.SkPsock.rx_feed, lambda p, *_: p is psock, make))
    elif step == "parser":
        mp.setattr(sk.StrParser, "feed_spans",
                   _only(sk.StrParser.feed_spans, lambda s, *_: s is psock.strp, make))
    elif step == "verdict":
        mp.setattr(sk.SkPsock, "_verdict_spans",
                   _only(sk.SkPsock._verdict_spans, lambda p, *_: p is psock, make))
    elif step in ("rx_action pass", "rx_action redirect"):
        kind = step.split()[1]
        mp.setattr(Runtime, "rx_action", _only(
            Runtime.rx_action,
            lambda rt, receiver, action: receiver is server and action.kind == kind,
            make, is_async=True))
        return b"R" if kind == "redirect" else b"P"
    elif step == "ingress_put":
        mp.setattr(runtime_module, "ingress_put", _only(
            runtime_module.ingress_put, lambda target, *_: target is server.sk, make,
            is_async=True))
    elif step == "rx_failed":
        mp.setattr(server, "transport_recv_nowait",
                   _raiser(lambda: ConnectionResetError(errno.ECONNRESET, "reset")))
        mp.setattr(server, "rx_failed", _raiser(make))
    else:
        raise AssertionError(step)
    return b"P"


RX_STEPS = ["transport read", "rx_feed", "parser", "verdict", "rx_action pass",
            "rx_action redirect", "ingress_put", "rx_failed"]


@pytest.fixture
async def rig(skmsg_runtime: Runtime) -> AsyncIterator[Rig]:
    async with open_rig(skmsg_runtime) as r:
        yield r


def no_traceback(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, err
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", RX_STEPS)
async def test_a_receive_step_that_raises_is_that_socket_error(
    step: str, make: Make, *, rig: Rig, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    raised: list[BaseException] = []

    def recording() -> BaseException:
        raised.append(make())
        return raised[-1]

    kind = inject_rx(step, rig, recording, monkeypatch)
    errors = rig.rt.socket_errors
    await rig.a.client.send_all(Rig.message(kind))
    with trio.fail_after(TIMEOUT):
        await rig.a.done.wait()
    error = rig.a.reader_error
    assert isinstance(error, trio.BrokenResourceError), repr(error)
    assert raised, "the fault was never hit"
    if step != "rx_failed":  # a plugin that cannot take its error cannot be handed it
        assert carries(error, raised[0]), repr(error)
    await rig.a.client.send_all(Rig.message(b"P"))
    with pytest.raises(trio.BrokenResourceError):  # for good: nothing read around the policy
        await rig.a.server.receive_some()
    counted = rig.rt.socket_errors - errors
    own = isinstance(raised[0], OSError) and step != "rx_failed"  # the connection's own error
    assert counted == (0 if own else 1)
    if not own:
        assert any(r.getMessage().startswith("event=socket_error ")
                   for r in runtime_records(caplog))
    monkeypatch.undo()
    await rig.carries_on()
    no_traceback(capfd, caplog)


# -- redirect targets: a failing target costs only the bytes sent to it ----------------------


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("kind", [b"T", b"I"], ids=["egress_write", "ingress_put"])
async def test_a_redirect_target_that_raises_drops_those_bytes_only(
    kind: bytes, make: Make, *, rig: Rig, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    target = rig.t.server
    if kind == b"T":
        monkeypatch.setattr(target, "egress_write", _async_raiser(make))
    else:
        monkeypatch.setattr(runtime_module, "ingress_put", _only(
            runtime_module.ingress_put, lambda sock, *_: sock is target.sk, make,
            is_async=True))
    before = rig.rt.redirect_errors
    await rig.a.client.send_all(Rig.message(kind))
    await rig.round_trip(rig.a, b"P")  # the source carries on, after the target failed
    assert rig.rt.redirect_errors == before + 1
    assert rig.a.reader_error is None
    monkeypatch.undo()
    await rig.carries_on()  # t got nothing of the dropped message: b's comes first
    assert rig.t.reader_error is None
    no_traceback(capfd, caplog)


# -- the send path -----------------------------------------------------------------------------


def inject_tx(step: str, rig: Rig, make: Make, mp: pytest.MonkeyPatch) -> bytes:
    """Make ``step`` of ``a``'s send path raise ``make()``; the kind of message
    that reaches it."""
    client = rig.a.client
    psock = client.sk.psock
    if step == "program":
        rig.program_fault = make
    elif step == "SendOp":
        mp.setattr(sk.SendOpBase, "__next__",
                   _only(sk.SendOpBase.__next__, lambda op: op.psock is psock, make))
    elif step == "_locked_send":
        mp.setattr(client, "_locked_send", _async_raiser(make))
    elif step == "tx_redirect":
        mp.setattr(skmsg_tcp._stream, "tx_redirect", _async_raiser(make))
        return b"X"
    elif step == "target egress":
        mp.setattr(rig.t.server, "egress_write", _async_raiser(make))
        return b"X"
    else:
        raise AssertionError(step)
    return b"P"


TX_STEPS = ["program", "SendOp", "_locked_send", "tx_redirect", "target egress"]


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", TX_STEPS)
async def test_a_send_step_that_raises_fails_that_send_only(
    step: str, make: Make, *, rig: Rig, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    raised: list[BaseException] = []

    def recording() -> BaseException:
        raised.append(make())
        return raised[-1]

    kind = inject_tx(step, rig, recording, monkeypatch)
    redirect_errors = rig.rt.redirect_errors
    prog_errors = rig.tx_prog.statistics().errors
    with pytest.raises(BaseException) as info:
        await rig.a.client.send_all(Rig.message(kind))
    error = info.value
    assert raised, "the fault was never hit"
    if step == "program":  # fail closed: a DROP
        assert isinstance(error, PermissionError) and error.errno == errno.EACCES, repr(error)
        assert rig.tx_prog.statistics().errors == prog_errors + 1
    elif step == "target egress":  # the target's failure: a failed redirect, as the kernel's
        assert isinstance(error, PermissionError) and error.errno == errno.EPIPE, repr(error)
        assert rig.rt.redirect_errors == redirect_errors + 1
        if not isinstance(raised[0], OSError):  # named in the log (a transport error is not news)
            name = type(raised[0]).__name__
            assert any(r.getMessage().startswith("event=redirect_failed ")
                       and (f'error="{name}: ' in r.getMessage()
                            or r.getMessage().endswith(f" error={name}"))
                       for r in runtime_records(caplog))
    else:  # the sender's own call failed: it gets what was raised
        assert carries(error, raised[0]) or (
            isinstance(raised[0], OSError) and isinstance(error, OSError)
        ), repr(error)
    rig.program_fault = None
    monkeypatch.undo()
    # nothing of that message reached a's peer, nor the target's
    await rig.a.client.send_eof()
    with trio.fail_after(TIMEOUT):
        await rig.a.done.wait()
    assert (rig.a.reader_error, bytes(rig.a.received).count(b"-")) == (None, 1)  # the set-up's
    await rig.carries_on()
    no_traceback(capfd, caplog)


# -- TLS: the record layer and the verdict run in the reader ------------------------------


@asynccontextmanager
async def tls_pairs(rt: Runtime) -> AsyncIterator[tuple[tuple[SkStream, SkStream], ...]]:
    """Two TLS connections ``(client, server)``, each server with a pass verdict."""
    smap = sk.SockMap(2)
    smap.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    pairs = (await tcp_stream_pair(), await tcp_stream_pair())
    try:
        for i, (client, server) in enumerate(pairs):
            smap.update(i, server)
            await enable_both(client, server)
        yield pairs
    finally:
        smap.close()
        await aclose_all([s for p in pairs for s in p])


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", ["records", "verdict"])
async def test_tls_a_receive_step_that_raises_is_that_socket_error(
    step: str, make: Make, *, skmsg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    raised: list[BaseException] = []

    def recording() -> BaseException:
        raised.append(make())
        return raised[-1]

    async with tls_pairs(skmsg_runtime) as ((client, server), (other_client, other_server)):
        await client.send_all(b"before ")
        assert await read_exactly(server, 7) == b"before "
        ulp = server._ulp
        assert ulp is not None
        if step == "records":
            rx = ulp.rx  # type: ignore[attr-defined]
            monkeypatch.setattr(TlsRx, "open_records", _only(
                TlsRx.open_records, lambda self, *_: self is rx, recording))
        else:
            psock = server.sk.psock
            monkeypatch.setattr(sk.SkPsock, "rx_verdict", _only(
                sk.SkPsock.rx_verdict, lambda p, *_: p is psock, recording))
        errors = skmsg_runtime.socket_errors
        await client.send_all(b"SECRET")
        with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError) as info:
            await server.receive_some()
        assert carries(info.value, raised[0]), repr(info.value)
        assert skmsg_runtime.socket_errors == errors + 1
        monkeypatch.undo()
        await client.send_all(b"later")
        with pytest.raises(trio.BrokenResourceError):  # for good: nothing read around it
            await server.receive_some()
        await other_client.send_all(b"other")
        assert await read_exactly(other_server, 5) == b"other"
    no_traceback(capfd, caplog)


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", ["program", "target egress"])
async def test_tls_a_send_step_that_raises_fails_that_send_only(
    step: str, make: Make, *, skmsg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    raised: list[BaseException] = []

    def recording() -> BaseException:
        raised.append(make())
        return raised[-1]

    (a, b), (t_client, t_server) = await tcp_stream_pair(), await tcp_stream_pair()
    smap = sk.SockMap(2)

    def program(msg: sk.SkMsg) -> int:  # "X...": to the target's egress
        data = bytes(msg.data)
        if step == "program" and b"BOOM" in data:
            raise recording()
        if data.startswith(b"X"):
            return sk.msg_redirect_map(msg, smap, 1, 0)
        return sk.SK_PASS

    try:
        prog = smap.attach(program, sk.SK_MSG_VERDICT)
        smap.update(0, a)  # the kernel's order: into the map, then TLS
        smap.update(1, t_server)
        await enable_both(a, b)
        if step == "target egress":
            monkeypatch.setattr(t_server, "egress_write", _async_raiser(recording))
        redirect_errors = skmsg_runtime.redirect_errors
        with pytest.raises(PermissionError) as info:
            await a.send_all(b"X BOOM")
        if step == "program":
            assert info.value.errno == errno.EACCES
            assert prog.statistics().errors == 1
        else:
            assert info.value.errno == errno.EPIPE
            assert skmsg_runtime.redirect_errors == redirect_errors + 1
            monkeypatch.undo()
            await a.send_all(b"X after")  # a redirect is no sticky verdict
            assert await read_exactly(t_client, 7) == b"X after"  # nothing before it
            await a.send_all(b"passed")
        await a.send_eof()
        with trio.fail_after(TIMEOUT):
            got = b""
            while chunk := await b.receive_some():
                got += chunk
        assert got == (b"passed" if step == "target egress" else b"")
    finally:
        smap.close()
        await aclose_all((a, b, t_client, t_server))
    no_traceback(capfd, caplog)


# -- UDP: the datagram loop ----------------------------------------------------------------


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", ["rx_datagrams", "queue_datagram", "target egress"])
async def test_udp_a_receive_step_that_raises(
    step: str, make: Make, *, skmsg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = await skmsg_udp.udp_socket_pair()  # b: the faulty receiver
    c, d = await skmsg_udp.udp_socket_pair()  # d: another receiver
    e, f = await skmsg_udp.udp_socket_pair()  # e: the redirect target (egress to f)
    async with a, b, c, d, e, f:
        smap = sk.SockMap(3)
        smap.attach(
            lambda skb: sk.sk_redirect_map(skb, smap, 2, 0)
            if bytes(skb.data[:1]) == b"T" else sk.SK_PASS,
            sk.SK_SKB_VERDICT,
        )
        for i, sock in enumerate((b, d, e)):
            smap.update(i, sock)
        await a.send(b"before")
        assert await receive_datagrams(b, 1) == [b"before"]
        raised: list[BaseException] = []

        def recording() -> BaseException:
            raised.append(make())
            return raised[-1]

        rt = skmsg_runtime
        socket_errors, redirect_errors = rt.socket_errors, rt.redirect_errors
        await trio.testing.wait_all_tasks_blocked()  # b's burst is over: the next uses the patch
        if step == "target egress":
            monkeypatch.setattr(e, "egress_send_nowait", _raiser(recording))
            await a.send(b"T to the target")
            await a.send(b"after")
            assert await receive_datagrams(b, 1) == [b"after"]  # b carries on
            assert rt.redirect_errors == redirect_errors + 1
            monkeypatch.undo()
            await c.send(b"T from d")
            assert await receive_datagrams(f, 1) == [b"T from d"]  # nothing before it
        else:
            monkeypatch.setattr(b, step, _raiser(recording) if step == "queue_datagram"
                                else _async_raiser(recording))
            await a.send(b"SECRET")
            with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError) as info:
                await b.receive()
            assert carries(info.value, raised[0]), repr(info.value)
            own = isinstance(raised[0], OSError)  # the runtime cannot tell it from the socket's own
            assert rt.socket_errors == socket_errors + (0 if own else 1)
            monkeypatch.undo()
            await a.send(b"later")
            with pytest.raises(trio.BrokenResourceError):  # for good
                await b.receive()
        await c.send(b"other")
        assert await receive_datagrams(d, 1) == [b"other"]
        smap.close()
    no_traceback(capfd, caplog)


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", ["program", "target egress"])
async def test_udp_a_send_step_that_raises_fails_that_send_only(
    step: str, make: Make, *, skmsg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = await skmsg_udp.udp_socket_pair()
    e, f = await skmsg_udp.udp_socket_pair()
    async with a, b, e, f:
        raised: list[BaseException] = []

        def recording() -> BaseException:
            raised.append(make())
            return raised[-1]

        smap = sk.SockMap(2)

        def program(msg: sk.SkMsg) -> int:
            if step == "program" and b"BOOM" in bytes(msg.data):
                raise recording()
            return sk.msg_redirect_map(msg, smap, 1, 0)

        prog = smap.attach(program, sk.SK_MSG_VERDICT)
        smap.update(0, a)
        smap.update(1, e)
        if step == "target egress":
            monkeypatch.setattr(e, "egress_send_nowait", _raiser(recording))
        redirect_errors = skmsg_runtime.redirect_errors
        with pytest.raises(PermissionError) as info:
            await a.send(b"BOOM")
        if step == "program":
            assert info.value.errno == errno.EACCES
            assert prog.statistics().errors == 1
        else:
            assert info.value.errno == errno.EPIPE
            assert carries(info.value, raised[0]), repr(info.value)
            assert skmsg_runtime.redirect_errors == redirect_errors + 1
        monkeypatch.undo()
        await a.send(b"after")
        assert await receive_datagrams(f, 1) == [b"after"]  # nothing before it
        smap.close()
    no_traceback(capfd, caplog)


# -- what must go up: Ctrl-C, alone or in a group -------------------------------------------


@pytest.mark.parametrize(
    "make",
    [KeyboardInterrupt, lambda: BaseExceptionGroup("x", [ValueError(), KeyboardInterrupt()])],
    ids=["KeyboardInterrupt", "group-with-KeyboardInterrupt"],
)
async def test_ctrl_c_goes_up_through_the_boundary(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BaseException) as info:
        with trio.fail_after(TIMEOUT):
            async with open_runtime():
                client, server = await tcp_stream_pair()
                smap = sk.SockMap(1)
                try:
                    smap.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
                    smap.update(0, server)
                    await trio.testing.wait_all_tasks_blocked()
                    monkeypatch.setattr(server, "transport_recv_nowait", _raiser(make))
                    await client.send_all(b"x")
                    await trio.sleep_forever()  # ended by the runtime's failure
                finally:
                    smap.close()
                    await aclose_all((client, server))
    assert any(isinstance(e, KeyboardInterrupt) for e in _leaves(info.value)), repr(info.value)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc
