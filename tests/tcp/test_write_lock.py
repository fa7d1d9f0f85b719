"""skmsg_tcp.WriteLock: the mutex a stream's socket writes take."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from skmsg_tcp._stream import WriteLock


async def test_acquire_nowait_and_release() -> None:
    lock = WriteLock()
    assert not lock.locked()
    lock.acquire_nowait()
    assert lock.locked()
    with pytest.raises(trio.WouldBlock):
        lock.acquire_nowait()
    lock.release()
    assert not lock.locked()


async def test_waiters_get_the_lock_in_fifo_order() -> None:
    lock = WriteLock()
    order: list[int] = []

    async def writer(i: int) -> None:
        async with lock:
            order.append(i)
            await trio.sleep(0)  # hold it across a checkpoint
            order.append(i)

    lock.acquire_nowait()
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(writer, i)
            await trio.testing.wait_all_tasks_blocked()
        lock.release()
    assert order == [0, 0, 1, 1, 2, 2, 3, 3]  # never interleaved, first come first served
    assert not lock.locked()


async def test_a_cancelled_waiter_neither_takes_nor_loses_the_lock() -> None:
    lock = WriteLock()
    lock.acquire_nowait()
    with trio.move_on_after(0.01) as scope:
        await lock.acquire()
    assert scope.cancelled_caught
    assert lock.locked()  # still the first holder's
    lock.release()
    assert not lock.locked()
    await lock.acquire()  # free again: taken at once
    assert lock.locked()


async def test_acquire_is_a_checkpoint() -> None:
    lock = WriteLock()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await lock.acquire()
    assert not lock.locked()  # a cancelled acquire took nothing
    with trio.testing.assert_checkpoints():
        await lock.acquire()  # free: taken, and still a checkpoint
    lock.release()
