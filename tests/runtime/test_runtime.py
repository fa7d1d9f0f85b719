"""The runtime's own contract: its block, its current-ness, pump failures."""

from __future__ import annotations

import pytest
import trio

from skmsg_core.runtime import current_runtime, open_runtime


async def test_body_errors_come_out_unwrapped() -> None:
    with pytest.raises(KeyError, match="x"):
        async with open_runtime():
            raise KeyError("x")


async def test_current_runtime_is_scoped_to_the_block() -> None:
    assert current_runtime() is None
    async with open_runtime() as rt:
        assert current_runtime() is rt
    assert current_runtime() is None


async def test_runtime_task_failure_surfaces_as_a_group() -> None:
    async def boom() -> None:
        raise RuntimeError("runtime task failed")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="runtime task")):
        async with open_runtime() as rt:
            rt.nursery.start_soon(boom)
            await trio.sleep_forever()


async def test_outer_cancellation_passes_through() -> None:
    with trio.move_on_after(0.01) as scope:
        async with open_runtime():
            await trio.sleep_forever()
    assert scope.cancelled_caught
