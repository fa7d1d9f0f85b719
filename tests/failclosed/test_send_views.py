"""What goes on the wire is what the program was shown, on real sockets.

- A view of ``msg.data`` kept past the run and written later changes
  nothing that is sent (the kernel allows writes only during the run).
- On TLS, whatever accessor a program reads the message with (``data``,
  ``tobytes()``, ``frags()``, ``elements()``), the records sealed hold the
  bytes it was shown, even when the caller's buffer changes while the send
  waits on a full socket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio

import skmsg_core as sk
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import enable_both, read_exactly

Pair = tuple[SkStream, SkStream]


def shrink(*streams: SkStream, size: int = 4096) -> None:
    for s in streams:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


async def test_tcp_kept_data_view_written_later_changes_nothing_sent(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    shrink(a, b)
    kept: list[memoryview] = []

    def keep(msg: sk.SkMsg) -> int:
        # a program that keeps its window: the message's last bytes, which
        # are still waiting when the send blocks on the full socket
        assert sk.msg_pull_data(msg, msg.size - 100, msg.size, 0) == 0
        kept.append(msg.data)
        return sk.SK_PASS

    sockmap.attach(keep, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    payload = bytes(range(256)) * 1024  # 256 KiB: the send waits on the socket
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, payload)
        await trio.testing.wait_all_tasks_blocked()
        assert kept, "the program ran"
        for view in kept:  # after the run, while the bytes wait to be sent
            view[:] = b"X" * view.nbytes
        got = await read_exactly(b, len(payload))
    assert got == payload


async def test_tcp_data_view_writes_during_the_run_are_sent(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """The other half of the rule: a write during the run lands, as the kernel's."""
    a, b = tcp_stream_pair

    def upper(msg: sk.SkMsg) -> int:
        msg.data[:5] = bytes(msg.data[:5]).upper()
        return sk.SK_PASS

    sockmap.attach(upper, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    await a.send_all(b"hello world")
    assert await read_exactly(b, 11) == b"HELLO world"


def test_accessors_other_than_data_are_read_only() -> None:
    msg = sk.SkMsg.from_bytes(b"hello")
    for view in [*msg.frags(), msg.sole_frag(), *(e.buf for e in msg.elements())]:
        assert view is not None and view.readonly
    with pytest.raises(AttributeError):
        msg.sk_redir = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        msg.apply_bytes = "5"  # type: ignore[assignment]


async def test_tls_kept_record_view_written_by_a_later_run_changes_nothing_sealed(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    """Records verdicted one after another (apply splits them, so they go
    through the engine and wait in a batch): each run writes the views the
    runs before it kept. The peer still gets the bytes each run passed."""
    a, b = await tcp_stream_pair()
    try:
        kept: list[memoryview] = []
        shown: list[bytes] = []

        def meddle(msg: sk.SkMsg) -> int:
            for view in kept:
                view[:] = b"Z" * view.nbytes
            kept.append(msg.data)
            shown.append(msg.tobytes())
            sk.msg_apply_bytes(msg, msg.size)
            return sk.SK_PASS

        sockmap.attach(meddle, sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        await enable_both(a, b)
        payload = bytes(range(256)) * 256  # 64 KiB: four records
        await a.send_all(payload)
        assert await read_exactly(b, len(payload)) == payload
        assert b"".join(shown) == payload
    finally:
        await aclose_all([a, b])


ACCESSORS: dict[str, Callable[[sk.SkMsg], bytes]] = {
    "tobytes": lambda m: m.tobytes(),
    "frags": lambda m: b"".join(m.frags()),
    "elements": lambda m: b"".join(bytes(e.view()) for e in m.elements()),
    "data": lambda m: bytes(m.data),
}


@pytest.mark.parametrize("accessor", sorted(ACCESSORS))
async def test_tls_sealed_bytes_are_the_bytes_shown_whatever_the_caller_does(
    skmsg_runtime: object, sockmap: sk.SockMap, accessor: str
) -> None:
    """A 1 MiB send from a bytearray the caller rewrites while the send waits
    on a full socket: the peer receives exactly what the program was shown,
    record by record (new bytes only ever after a verdict ran on them)."""
    a, b = await tcp_stream_pair()
    try:
        shrink(a, b, size=16384)
        read = ACCESSORS[accessor]
        shown: list[bytes] = []

        def look(msg: sk.SkMsg) -> int:
            shown.append(read(msg))
            return sk.SK_PASS

        sockmap.attach(look, sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        await enable_both(a, b)
        buf = bytearray(b"A" * (1 << 20))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, buf)
            await trio.testing.wait_all_tasks_blocked()
            assert 0 < len(shown) < 64, "the send waits with records still to verdict"
            buf[:] = b"E" * len(buf)  # the caller changes its buffer mid-send
            got = await read_exactly(b, len(buf))
        assert got == b"".join(shown)
        assert b"E" in got, "records verdicted after the change carry it"
    finally:
        await aclose_all([a, b])
