"""The SK_MSG helpers never raise and never allocate what they are asked for
beyond bounds: a push past ``MSG_SIZE_MAX`` (``2**62``, ``2**32`` bytes ...)
is ``-ENOMEM`` with no allocation (tracemalloc's peak stays small), an
argument of the wrong type (or out of range) is ``-EINVAL``, and the message
is left as it was; inside a program on a real socket of each protocol the
send then goes through, or is dropped, as the program decides."""

from __future__ import annotations

import errno
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import skmsg_core as sk
import skmsg_udp
from skmsg_core import msg_apply_bytes, msg_cork_bytes, msg_pop_data, msg_pull_data, msg_push_data
from skmsg_core.testing import aclose_all
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import enable_both

from ._support import EqAlways, read_exactly, receive_datagrams

pytestmark = pytest.mark.usefixtures("untouched")

ENOMEM, EINVAL = -errno.ENOMEM, -errno.EINVAL
#: Bytes a refused helper call may allocate at most (its own bookkeeping).
SMALL = 64 * 1024

#: (what, the call, what it returns)
CALLS: list[tuple[str, Callable[[sk.SkMsg], object], int]] = [
    ("push 2**62", lambda m: msg_push_data(m, 0, 2**62), ENOMEM),
    ("push 2**32", lambda m: msg_push_data(m, 0, 2**32), ENOMEM),
    ("push 2**32 - 1", lambda m: msg_push_data(m, 0, 2**32 - 1), ENOMEM),
    ("push MSG_SIZE_MAX", lambda m: msg_push_data(m, 0, sk.MSG_SIZE_MAX), ENOMEM),
    ("push start str", lambda m: msg_push_data(m, "0", 1), EINVAL),  # type: ignore[arg-type]
    ("push length float", lambda m: msg_push_data(m, 0, 1.0), EINVAL),  # type: ignore[arg-type]
    ("push length True", lambda m: msg_push_data(m, 0, True), EINVAL),
    ("push length -1", lambda m: msg_push_data(m, 0, -1), EINVAL),
    ("push flags float", lambda m: msg_push_data(m, 0, 1, 0.0), EINVAL),  # type: ignore[arg-type]
    ("push start 2**40", lambda m: msg_push_data(m, 2**40, 1), EINVAL),
    ("pull start None", lambda m: msg_pull_data(m, None, 1), EINVAL),  # type: ignore[arg-type]
    ("pull end Fraction", lambda m: msg_pull_data(m, 0, Fraction(1)), EINVAL),  # type: ignore[arg-type]
    ("pull end 2**64", lambda m: msg_pull_data(m, 0, 2**64), EINVAL),
    ("pop length Decimal", lambda m: msg_pop_data(m, 0, Decimal(1)), EINVAL),  # type: ignore[arg-type]
    ("pop length 2**64", lambda m: msg_pop_data(m, 0, 2**64), EINVAL),
    ("apply float", lambda m: msg_apply_bytes(m, 1.5), EINVAL),  # type: ignore[arg-type]
    ("apply object", lambda m: msg_apply_bytes(m, EqAlways()), EINVAL),  # type: ignore[arg-type]
    ("cork str", lambda m: msg_cork_bytes(m, "1"), EINVAL),  # type: ignore[arg-type]
]
EXPECTED = {what: ret for what, _, ret in CALLS}


def call_all(msg: sk.SkMsg) -> tuple[dict[str, object], int]:
    """Every call of :data:`CALLS` on ``msg``: what each returned, and the most
    memory the calls had allocated at once beyond what was allocated before."""
    if not tracemalloc.is_tracing():
        raise AssertionError("tracemalloc is not tracing")
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    got: dict[str, object] = {}
    for what, call, _ in CALLS:
        try:
            got[what] = call(msg)
        except BaseException as exc:
            got[what] = exc
    return got, tracemalloc.get_traced_memory()[1] - before


@pytest.fixture
def tracing() -> Any:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@pytest.mark.usefixtures("tracing")
def test_refused_calls_allocate_nothing_and_leave_the_message_alone() -> None:
    msg = sk.SkMsg.from_bytes(b"abcdef")
    assert msg_pull_data(msg, 2, 4, 0) == 0
    got, peak = call_all(msg)
    assert got == EXPECTED
    assert peak < SMALL
    assert msg.tobytes() == b"abcdef"
    assert (bytes(msg.data), msg.data_off, msg.data_end) == (b"cd", 2, 4)
    assert (msg.apply_bytes, msg.cork_bytes) == (0, 0)


Send = Callable[[bytes], Awaitable[object]]
Receive = Callable[[int], Awaitable[bytes]]


@asynccontextmanager
async def sender(
    proto: str, program: Callable[[sk.SkMsg], int]
) -> AsyncIterator[tuple[Send, Receive]]:
    """A socket of ``proto`` with ``program`` as its SK_MSG verdict: ``send``
    data through it, ``receive(n)`` what its peer got."""
    smap = sk.SockMap(1)
    smap.attach(program, sk.SK_MSG_VERDICT)
    try:
        if proto == "udp":
            a, b = await skmsg_udp.udp_socket_pair()
            async with a, b:
                smap.update(0, a)

                async def receive_datagram(n: int) -> bytes:
                    (data,) = await receive_datagrams(b, 1)
                    return data

                yield a.send, receive_datagram
            return
        client, server = await tcp_stream_pair()
        try:
            smap.update(0, client)  # the kernel's order: into the map, then TLS
            if proto == "tls":
                await enable_both(client, server)
            yield client.send_all, lambda n: read_exactly(server, n)
        finally:
            await aclose_all((client, server))
    finally:
        smap.close()


PROTOCOLS = ["tcp", "tls", "udp"]


@pytest.mark.usefixtures("tracing")
@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_in_a_program_the_send_goes_through_unchanged(proto: str) -> None:
    seen: list[tuple[dict[str, object], int]] = []

    def program(msg: sk.SkMsg) -> int:
        seen.append(call_all(msg))
        return sk.SK_PASS

    async with sender(proto, program) as (send, receive):
        await send(b"the message, unchanged")
        assert await receive(22) == b"the message, unchanged"
    ((got, peak),) = seen
    assert got == EXPECTED
    assert peak < SMALL


@pytest.mark.usefixtures("tracing")
@pytest.mark.parametrize("proto", PROTOCOLS)
async def test_in_a_program_that_drops_on_enomem_the_send_is_eacces(proto: str) -> None:
    def program(msg: sk.SkMsg) -> int:
        if msg_push_data(msg, 0, 2**62) == ENOMEM:
            return sk.SK_DROP
        return sk.SK_PASS

    async with sender(proto, program) as (send, _):
        with pytest.raises(PermissionError) as info:
            await send(b"never sent")
        assert info.value.errno == errno.EACCES
