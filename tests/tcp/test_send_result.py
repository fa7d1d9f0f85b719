"""The send result: the kernel's return value as one name (``sent``), and the
exception class the errno makes (``PermissionError`` for EACCES,
``BrokenPipeError`` for EPIPE), with the counts on it."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_core.testing import aclose_all
from skmsg_tcp import SendError, SkStream
from skmsg_tcp.testing import tcp_stream_pair as new_pair
from tests.tls._ulp_helpers import enable_both, read_exactly

Pair = tuple[SkStream, SkStream]


def test_the_class_follows_the_errno() -> None:
    drop = sk.SendError.of(errno.EACCES, "dropped", sent=5, accepted=5)
    assert isinstance(drop, PermissionError) and isinstance(drop, sk.SendError)
    assert (drop.errno, drop.sent, drop.accepted) == (errno.EACCES, 5, 5)
    gone = sk.SendError.of(errno.EPIPE, "gone")
    assert isinstance(gone, BrokenPipeError) and not isinstance(gone, PermissionError)
    other = sk.SendError.of(errno.EIO, "io")
    assert type(other) is sk.SendError and other.errno == errno.EIO
    assert type(sk.SendError.of(errno.EACCES, "again")) is type(drop)  # one class per errno
    assert SendError is sk.SendError is skmsg_udp.SendError


async def test_a_short_count_is_sent(tcp_stream_pair: Pair, sockmap: sk.SockMap) -> None:
    """The kernel returns 5 of 6 bytes when the program passes 5 and drops the
    sixth (its apply window): ``sent`` is that 5, the class PermissionError."""
    a, b = tcp_stream_pair
    verdicts = iter([sk.SK_PASS, sk.SK_DROP])

    def five_then_drop(msg: sk.SkMsg) -> int:
        sk.msg_apply_bytes(msg, 5)
        return next(verdicts)

    sockmap.attach(five_then_drop, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with pytest.raises(PermissionError) as info:
        await a.send_all(b"abcdef")
    assert isinstance(info.value, SendError)
    assert (info.value.sent, info.value.accepted) == (5, 5)  # type: ignore[attr-defined]
    assert await read_exactly(b, 5) == b"abcde"


async def test_a_redirect_to_a_socket_gone_is_a_broken_pipe_with_its_cause(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, _ = tcp_stream_pair
    c, d = await new_pair()
    sockmap.update(1, c)
    sockmap.attach(lambda msg: sk.msg_redirect_map(msg, sockmap, 1, 0), sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    # the target's peer resets the connection: the target's writes fail
    d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await d.aclose()
    await trio.sleep(0.05)
    try:
        with pytest.raises(BrokenPipeError) as info:
            for _ in range(50):  # the reset reaches the target's writes within a few
                await a.send_all(b"x" * 65536)
        assert isinstance(info.value, SendError) and info.value.errno == errno.EPIPE
        assert not isinstance(info.value, PermissionError)
        assert info.value.__cause__ is not None
    finally:
        await aclose_all([c])


async def test_tls_drop_is_the_same_class(tcp_stream_pair: Pair, sockmap: sk.SockMap) -> None:
    a, b = tcp_stream_pair
    sockmap.attach(lambda msg: sk.SK_DROP, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    await enable_both(a, b)
    with pytest.raises(PermissionError) as info:
        await a.send_all(b"secret")
    assert isinstance(info.value, SendError) and info.value.sent == 0
