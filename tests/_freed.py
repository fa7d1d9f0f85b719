"""For tests that what served a connection is freed by reference counting,
not left in cycles for the garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_off() -> Iterator[None]:
    """No cycle collection in the block (after one full collection first):
    whatever is freed in it is freed by reference counting."""
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def alive(*kinds: type) -> dict[str, int]:
    """How many objects of ``kinds`` exist, by class name, unreachable cycles
    the collector has not freed yet included."""
    counts: dict[str, int] = {}
    for o in gc.get_objects():
        if isinstance(o, kinds):
            counts[type(o).__name__] = counts.get(type(o).__name__, 0) + 1
    return counts
