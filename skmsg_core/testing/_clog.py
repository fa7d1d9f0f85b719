"""Clogging a connected pair both ways, for trio's "clogged stream" tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

#: One write from one end of a pair, below any program; the bytes it wrote.
Write = Callable[[], Awaitable[int]]


async def clog_both_ways(left: Write, right: Write) -> None:
    """Clog a connected pair both ways, as trio's "clogged stream" tests want
    (afterwards ``send_all`` on either end blocks until the other receives):
    call ``left`` until it has blocked twice in a row, the second time with
    every task idle, then ``right`` alike, and again until neither way takes
    a byte more. Filling one way can let the other move again (a receive pump
    that reads on, the peer's acknowledgments), so one pass each way is not
    enough.

    Raises:
        BaseException: whatever ``left`` or ``right`` raises.
    """
    while await _fill(left) + await _fill(right):
        pass


async def _fill(write: Write) -> int:
    """``write`` until blocked twice in a row; the bytes written."""
    sent = blocked = 0
    while blocked < 2:
        with trio.move_on_after(0.03) as scope:
            sent += await write()
        blocked = blocked + 1 if scope.cancelled_caught else 0
        if blocked:
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    return sent
