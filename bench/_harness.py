"""What a benchmark reports (:class:`Figure`) and how it times (:func:`time_side_by_side`).

Rules
-----
- A figure is always a comparison: a candidate's value next to a baseline's,
  both measured in the same process in the same run, reduced to one ratio.
  Absolute times on a shared, noisy VM mean little; ratios of interleaved
  measurements mean a lot more.
- Every figure says which way is good. Its ratio is either ``value/baseline``
  (a cost ratio, lower is better) or ``baseline/value`` (a speedup, higher is
  better); :attr:`Figure.better` names the direction and the printed line says
  it, so no reader has to guess.
- A target is a threshold on the ratio. Missing it is a finding, not a
  failure: the runner reports MISS and still exits 0. A figure without a
  target only reports.

Theory of operation (timing)
----------------------------
:func:`time_side_by_side` takes several :class:`Case` objects and, round after
round, runs a batch of each, rotating their order every round so that none
always runs first (or right after the garbage of another). A batch builds its
inputs first, untimed (so an operation that mutates its input, as the sk_msg
helpers do, gets a fresh equal input every iteration without timing the
rebuild), then, with the garbage collector disabled, times the loop
``for x in inputs: op(x)`` with :func:`time.perf_counter_ns`. A warm-up batch
of each case is run and discarded first. Each case's per-operation time is the
best batch (the least disturbed by the rest of the machine) and the median
batch is kept as a cross-check.

Allocator
---------
glibc's malloc adapts its mmap and trim thresholds as a process runs, and a
loop that allocates and frees buffers of a few hundred KiB can end up
returning the heap's top to the kernel and faulting it back in on every
iteration: measured here, ``data[:1] + b"\0" * 8 + data[1:]`` on 256 KiB took
~300 us in one state of the heap and ~19 us in another. :func:`pin_malloc`
fixes both thresholds (where glibc's ``mallopt`` is available) so figures do
not depend on the heap's history; that is the baselines' best case, which
keeps speedups over them conservative.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar

import attrs

__all__ = ["Case", "Figure", "Timing", "format_figure", "pin_malloc", "time_side_by_side"]

T = TypeVar("T")

Better = Literal["higher", "lower"]
RatioOf = Literal["value/baseline", "baseline/value"]


@attrs.frozen
class Figure:
    """One measured figure: a candidate's value against a baseline's, and a target.

    ``ratio`` is ``value / baseline_value`` or ``baseline_value / value`` as
    ``ratio_of`` says, and ``better`` says whether a higher or a lower ratio is
    the good direction. ``target`` is the threshold the ratio should reach in
    that direction, or ``None`` for a figure that only reports.

    ``paired``: the ratio measured round by round instead (the median, over
    interleaved rounds, of each round's own ratio), which overrides the ratio
    of the two values; ``value`` and ``baseline_value`` are then the sides'
    medians. On a machine whose speed swings, a round of each side run back
    to back sees the same moment, so each round's ratio is steadier than a
    ratio of two separately picked best rounds.

    Use the named constructors :meth:`cost_ratio`, :meth:`speedup` and :meth:`rate`.
    """

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio_of: RatioOf
    better: Better
    target: float | None = None
    paired: float | None = None

    @classmethod
    def cost_ratio(
        cls,
        name: str,
        *,
        value: float,
        unit: str,
        baseline: str,
        baseline_value: float,
        target: float | None = None,
        paired: float | None = None,
    ) -> Figure:
        """A cost compared with a baseline's: ratio ``value/baseline``, lower is
        better; ``paired`` as the class says."""
        return cls(
            name, value, unit, baseline, baseline_value, "value/baseline", "lower", target, paired
        )

    @classmethod
    def speedup(
        cls,
        name: str,
        *,
        value: float,
        unit: str,
        baseline: str,
        baseline_value: float,
        target: float | None = None,
        paired: float | None = None,
    ) -> Figure:
        """A cost against a slower baseline's: ratio ``baseline/value`` (how many
        times faster the candidate is), higher is better; ``paired`` as the
        class says."""
        return cls(
            name, value, unit, baseline, baseline_value, "baseline/value", "higher", target, paired
        )

    @classmethod
    def rate(
        cls,
        name: str,
        *,
        value: float,
        unit: str,
        baseline: str,
        baseline_value: float,
        target: float | None = None,
        paired: float | None = None,
    ) -> Figure:
        """A rate (messages per second, say) compared with a baseline's: ratio
        ``value/baseline``, higher is better; ``paired`` as the class says."""
        return cls(
            name, value, unit, baseline, baseline_value, "value/baseline", "higher", target, paired
        )

    @property
    def ratio(self) -> float:
        """The figure's ratio, oriented as ``ratio_of`` says (``inf`` on a zero
        divisor), or the ``paired`` one."""
        if self.paired is not None:
            return self.paired
        num, den = (
            (self.value, self.baseline_value)
            if self.ratio_of == "value/baseline"
            else (self.baseline_value, self.value)
        )
        return num / den if den else float("inf")

    @property
    def verdict(self) -> Literal["PASS", "MISS", "report"]:
        """PASS when the ratio reaches the target in the good direction, MISS when it
        does not, ``report`` when there is no target."""
        if self.target is None:
            return "report"
        if self.better == "higher":
            return "PASS" if self.ratio >= self.target else "MISS"
        return "PASS" if self.ratio <= self.target else "MISS"


def format_figure(fig: Figure) -> str:
    """The figure as one line: name, value, baseline, ratio, direction, target, verdict."""
    if fig.target is None:
        target = "target  -"
    else:
        target = f"target {'>=' if fig.better == 'higher' else '<='}{fig.target:g}x"
    return (
        f"{fig.name:<28} {fig.value:>9.2f} {fig.unit:<5} "
        f"| vs {fig.baseline:<20} {fig.baseline_value:>9.2f} {fig.unit:<5} "
        f"| ratio {fig.ratio:>7.2f}x ({'paired ' if fig.paired is not None else ''}"
        f"{fig.ratio_of}, {fig.better} is better) "
        f"| {target:<13} {fig.verdict}"
    )


@attrs.frozen
class Case(Generic[T]):
    """One side of a side-by-side timing: ``op`` applied to each of ``inputs(n)``.

    ``inputs(n)`` must return ``n`` inputs, each fit for one call of ``op``
    (fresh ones if ``op`` mutates its input); it runs untimed.
    """

    op: Callable[[T], object]
    inputs: Callable[[int], Sequence[T]]


@attrs.frozen
class Timing:
    """A case's per-operation time in nanoseconds: ``best`` batch and ``median`` batch."""

    best: float
    median: float
    rounds: int
    number: int


def _batch(case: Case[Any], number: int) -> int:
    """Nanoseconds for ``number`` calls of ``case.op``, inputs built untimed, gc off."""
    op = case.op
    inputs = case.inputs(number)
    if len(inputs) != number:
        raise ValueError(f"inputs({number}) returned {len(inputs)} inputs")
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        for x in inputs:
            op(x)
        t1 = time.perf_counter_ns()
    finally:
        if was_enabled:
            gc.enable()
    return t1 - t0


def time_side_by_side(
    cases: Mapping[str, Case[Any]], *, number: int, rounds: int
) -> dict[str, Timing]:
    """Time every case in this process, interleaved, ``rounds`` batches of ``number`` calls.

    Returns each case's :class:`Timing` (nanoseconds per call) under its key.
    One discarded warm-up batch per case comes first; each round then runs one
    batch of every case, in an order rotated by one every round, after a
    ``gc.collect()``.

    Raises:
        ValueError: ``number`` or ``rounds`` below 1, or no cases.
    """
    if number < 1 or rounds < 1:
        raise ValueError(f"number and rounds must be at least 1, not {number} and {rounds}")
    names = list(cases)
    if not names:
        raise ValueError("nothing to time")
    for name in names:
        _batch(cases[name], number)
    samples: dict[str, list[int]] = {name: [] for name in names}
    for r in range(rounds):
        gc.collect()
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(_batch(cases[name], number))
    return {
        name: Timing(
            best=min(ns) / number,
            median=statistics.median(ns) / number,
            rounds=rounds,
            number=number,
        )
        for name, ns in samples.items()
    }


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def pin_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see "Allocator" above).

    Returns whether both took: ``False`` where there is no ``mallopt`` (another
    libc or OS; nothing changed) or glibc refused a value.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
