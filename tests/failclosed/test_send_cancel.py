"""A cancelled send never extends its verdict to the next send, on real sockets.

The shape of the attack: a ``send_all`` that blocks on a full socket is
cancelled (``trio.move_on_after``) after its verdict ran; the next
``send_all`` must run the program again, whatever it holds. The engines'
side of the rule, at every action, is the property test of
``tests/core/test_tx_cancel.py`` and ``tests/tls/test_tx_cancel.py``.
"""

from __future__ import annotations

import socket

import pytest
import trio

import skmsg_core as sk
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import enable_both

Pair = tuple[SkStream, SkStream]
SMALL = 4096


def shrink(*streams: SkStream) -> None:
    """Small socket buffers, so a few hundred KiB fill a connection."""
    for s in streams:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)


async def fill(stream: SkStream) -> None:
    """Write to ``stream`` until its connection is full (its peer not reading)."""
    with trio.move_on_after(0.5):
        await stream.send_all(b"." * (8 << 20))


async def drain(stream: SkStream, idle: float = 0.3) -> bytes:
    """Everything ``stream`` receives until it has been quiet for ``idle`` s."""
    got = bytearray()
    while True:
        with trio.move_on_after(idle):
            chunk = await stream.receive_some()
            if not chunk:
                return bytes(got)
            got += chunk
            continue
        return bytes(got)


def no_forbidden(msg: sk.SkMsg) -> int:
    return sk.SK_DROP if b"FORBIDDEN" in msg.tobytes() else sk.SK_PASS


async def test_tcp_pass_verdict_dies_with_its_cancelled_send(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    shrink(a, b)
    await fill(a)
    prog = sockmap.attach(no_forbidden, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with trio.move_on_after(0.3) as scope:
        await a.send_all(b"hello")  # verdict PASS, then blocks on the full socket
    assert scope.cancelled_caught
    assert prog.run_cnt == 1
    await drain(b)
    with pytest.raises(PermissionError):
        await a.send_all(b"FORBIDDEN")
    assert prog.run_cnt == 2
    assert b"FORBIDDEN" not in await drain(b)


@pytest.mark.parametrize("cancel_at", ["blocked", "immediately"])
async def test_tls_redirect_verdict_dies_with_its_cancelled_send(
    skmsg_runtime: object, sockmap: sk.SockMap, cancel_at: str
) -> None:
    """A TLS stream whose program redirects to a plain stream that is full:
    the redirect is cancelled; the next send is verdicted, not redirected."""
    a, b = await tcp_stream_pair()
    c, d = await tcp_stream_pair()
    try:
        shrink(c, d)
        await fill(c)
        redir = sk.SockMap(2)
        redir.update(0, c)

        def route(msg: sk.SkMsg) -> int:
            if b"FORBIDDEN" in msg.tobytes():
                return sk.SK_DROP
            return sk.msg_redirect_map(msg, redir, 0, 0)

        prog = sockmap.attach(route, sk.SK_MSG_VERDICT)
        sockmap.update(0, a)  # the kernel's order: into the map, then TLS
        await enable_both(a, b)
        with trio.move_on_after(0.3 if cancel_at == "blocked" else 0) as scope:
            await a.send_all(b"hello")
        assert scope.cancelled_caught
        runs = prog.run_cnt
        assert runs <= 1
        with pytest.raises(PermissionError):
            await a.send_all(b"FORBIDDEN")
        assert prog.run_cnt == runs + 1
        assert b"FORBIDDEN" not in await drain(d)
    finally:
        await aclose_all([a, b, c, d])
        redir.close()


async def test_tcp_apply_window_survives_only_as_far_as_it_reaches(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """The kernel carries an apply window into later sends: a cancelled send
    spends the bytes it was handed, and the window goes no further."""
    a, b = tcp_stream_pair
    shrink(a, b)
    await fill(a)

    def window(msg: sk.SkMsg) -> int:
        if b"FORBIDDEN" in msg.tobytes():
            return sk.SK_DROP
        sk.msg_apply_bytes(msg, 8)  # this run covers 8 bytes, across sends
        return sk.SK_PASS

    prog = sockmap.attach(window, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with trio.move_on_after(0.3) as scope:
        await a.send_all(b"12345")  # 5 of the window's 8 bytes: 3 left to carry
    assert scope.cancelled_caught
    await drain(b)
    await a.send_all(b"abc")  # the window's last 3 bytes: no run, as the kernel
    assert prog.run_cnt == 1
    with pytest.raises(PermissionError):
        await a.send_all(b"FORBIDDEN")
    assert prog.run_cnt == 2
    got = await drain(b)
    assert got.endswith(b"abc") and b"FORBIDDEN" not in got


async def test_tls_pass_after_cancelled_bulk_send_runs_the_program(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    """A bulk TLS send (records verdicted and sealed a batch at a time) is
    cancelled while it waits on the socket; the next send is verdicted."""
    a, b = await tcp_stream_pair()
    try:
        shrink(a, b)
        prog = sockmap.attach(no_forbidden, sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        await enable_both(a, b)
        with trio.move_on_after(0.5) as scope:
            await a.send_all(b"x" * (4 << 20))
        assert scope.cancelled_caught
        runs = prog.run_cnt
        with pytest.raises(PermissionError):
            await a.send_all(b"FORBIDDEN")
        assert prog.run_cnt == runs + 1
    finally:
        await aclose_all([a, b])
