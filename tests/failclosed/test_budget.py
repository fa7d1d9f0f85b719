"""A program that blocks (``time.sleep(5)``) or spins (a pure-Python loop for
5 s) is interrupted once over its budget: that run is a DROP counted in
``errors`` and ``timeouts`` and logged, its connection carries on, and, what
matters most, every other connection, which shares the one trio thread with
it, is stalled for about the budget only, not 5 s. Measured on real loopback
sockets: a second connection does round trips through the runtime the whole
time, and none of them takes longer than the budget and a generous margin.
Each protocol and direction where a program runs: TCP receive (in the
runtime's pump) and send, TLS receive (in the reader) and send, UDP receive
(in the pump) and send."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime, format_event
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import enable_both

from ._support import TIMEOUT, frame, read_exactly, receive_datagrams, runtime_records

#: The programs' budget (seconds) and how long they would run without one.
BUDGET = 0.2
WOULD_RUN = 5.0
#: The most another connection's round trip may take meanwhile: the budget, a
#: watchdog period and a generous margin for a loaded machine, far below 5 s.
MAX_STALL = 1.0


def sleeper(ctx: Any) -> int:
    """Blocks the thread for 5 s on a message holding ``SLEEP``."""
    if b"SLEEP" in bytes(ctx.data):
        time.sleep(WOULD_RUN)
    return sk.SK_PASS


def spinner(ctx: Any) -> int:
    """Spins in Python for 5 s on a message holding ``SLEEP``."""
    if b"SLEEP" in bytes(ctx.data):
        deadline = time.monotonic() + WOULD_RUN
        n = 0
        while time.monotonic() < deadline:
            n += 1
    return sk.SK_PASS


Trigger = Callable[[], Awaitable[None]]


async def _eacces(send: Callable[[bytes], Awaitable[object]]) -> None:
    with pytest.raises(PermissionError):
        await send(b"SLEEP")


@asynccontextmanager
async def slow_socket(
    where: str, program: Callable[[Any], int]
) -> AsyncIterator[tuple[sk.Program, Trigger]]:
    """A connection with ``program`` (budget :data:`BUDGET`) at ``where``: the
    loaded program, and a trigger that makes it run long on one message and
    returns once that message was dropped (and, where the connection carries
    on after it, a later message went through)."""
    smap = sk.SockMap(1)
    async with AsyncExitStack() as stack:
        stack.callback(smap.close)
        if where.startswith("udp"):
            a, b = await skmsg_udp.udp_socket_pair()
            await stack.enter_async_context(a)
            await stack.enter_async_context(b)
            if where == "udp-send":
                prog = smap.attach(program, sk.SK_MSG_VERDICT, budget=BUDGET)
                smap.update(0, a)

                async def trigger() -> None:
                    await _eacces(a.send)
                    await a.send(b"after")
                    assert await receive_datagrams(b, 1) == [b"after"]

            else:
                prog = smap.attach(program, sk.SK_SKB_VERDICT, budget=BUDGET)
                smap.update(0, b)

                async def trigger() -> None:
                    await a.send(b"SLEEP")
                    await a.send(b"after")
                    assert await receive_datagrams(b, 1) == [b"after"]

            yield prog, trigger
            return
        client, server = await tcp_stream_pair()
        stack.push_async_callback(aclose_all, (client, server))
        if where.endswith("send"):
            prog = smap.attach(program, sk.SK_MSG_VERDICT, budget=BUDGET)
            smap.update(0, client)
        else:
            if where == "tcp-receive":
                smap.attach(sk.LengthPrefixParser(), sk.SK_SKB_STREAM_PARSER)
            prog = smap.attach(program, sk.SK_SKB_STREAM_VERDICT, budget=BUDGET)
            smap.update(0, server)
        if where.startswith("tls"):
            await enable_both(client, server)
        if where.endswith("send"):

            async def trigger() -> None:
                await _eacces(client.send_all)  # a DROP sticks on a stream (the kernel's)

        elif where == "tcp-receive":

            async def trigger() -> None:
                await client.send_all(frame(b"SLEEP") + frame(b"after"))
                assert await read_exactly(server, 9) == frame(b"after")

        else:

            async def trigger() -> None:
                await client.send_all(b"SLEEP")  # one record each
                await client.send_all(b"after")
                assert await read_exactly(server, 5) == b"after"

        yield prog, trigger


@asynccontextmanager
async def echo_connection() -> AsyncIterator[SkStream]:
    """A client whose server side is served by the runtime's pump (a parser and a
    pass verdict) and echoes what it receives."""
    client, server = await tcp_stream_pair()
    smap = sk.SockMap(1)
    try:
        smap.attach(sk.LengthPrefixParser(), sk.SK_SKB_STREAM_PARSER)
        smap.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
        smap.update(0, server)

        async def echo() -> None:
            while data := await server.receive_some():
                await server.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            yield client
            nursery.cancel_scope.cancel()
    finally:
        smap.close()
        await aclose_all((client, server))


class RoundTrips:
    """Round trips on an echoing connection, timed, until cancelled."""

    def __init__(self, stream: SkStream) -> None:
        self.stream = stream
        self.latencies: list[float] = []
        self._lot = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        while True:
            t0 = time.monotonic()
            await self.stream.send_all(frame(b"ping"))
            assert await read_exactly(self.stream, 8) == frame(b"ping")
            self.latencies.append(time.monotonic() - t0)
            self._lot.unpark_all()

    async def wait_for(self, n: int) -> None:
        """Until ``n`` round trips were done in all."""
        while len(self.latencies) < n:
            await self._lot.park()


WHERE = ["tcp-receive", "tcp-send", "tls-receive", "tls-send", "udp-receive", "udp-send"]


@pytest.mark.parametrize("program", [sleeper, spinner], ids=["sleep", "spin"])
@pytest.mark.parametrize("where", WHERE)
async def test_a_long_run_stalls_other_connections_for_about_the_budget(
    where: str, program: Callable[[Any], int], skmsg_runtime: Runtime,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(TIMEOUT):
        async with echo_connection() as other, slow_socket(where, program) as (prog, trigger):
            trips = RoundTrips(other)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trips.run)
                await trips.wait_for(3)
                t0 = time.monotonic()
                await trigger()
                took = time.monotonic() - t0
                await trips.wait_for(len(trips.latencies) + 3)  # and they go on after it
                nursery.cancel_scope.cancel()
    latencies = trips.latencies
    stats = prog.statistics()
    assert (stats.timeouts, stats.errors, stats.dropped) == (1, 1, 1), stats
    assert isinstance(prog.last_error, sk.ProgramTimeout)
    # the run did go on for its budget, with a round trip of the other connection
    # in flight: the stall measured is the program's
    assert took >= BUDGET * 0.9
    assert max(latencies) >= BUDGET * 0.9
    assert max(latencies) < MAX_STALL, sorted(latencies)[-3:]
    assert took < MAX_STALL
    lines = [r.getMessage() for r in runtime_records(caplog)]
    assert [line for line in lines if "ran longer than its budget of 200 ms" in line] == [
        format_event("program_error", {
            "program": prog.name, "prog_type": prog.prog_type.name,
            "error": f"ProgramTimeout: program {prog.name} ran longer than its budget of 200 ms",
            "verdict": "SK_DROP"})
    ], lines
