"""Generic helpers for tests that use the runtime: any protocol, no sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import trio

from skmsg_core.runtime import Runtime, current_runtime, open_runtime

__all__ = ["aclose_all", "ensure_runtime"]


@contextlib.asynccontextmanager
async def ensure_runtime() -> AsyncIterator[Runtime]:
    """The current runtime, or a new one open for the length of the block.

    Unlike a bare ``open_runtime`` block, an exception raised by the body comes
    out as itself, not wrapped in an exception group by the runtime's nursery;
    a failure of a runtime task still comes out as the nursery's group.
    """
    rt = current_runtime()
    if rt is not None:
        yield rt
        return
    body_error: BaseException | None = None
    async with open_runtime() as rt:
        try:
            yield rt
        except BaseException as exc:
            body_error = exc
    if body_error is not None:
        raise body_error


async def aclose_all(resources: Iterable[trio.abc.AsyncResource]) -> None:
    """Close every one of ``resources`` now, even in a cancelled scope (each with
    ``trio.aclose_forcefully``, shielded so one cancellation cannot skip the rest)."""
    with trio.CancelScope(shield=True):
        for each in resources:
            await trio.aclose_forcefully(each)
