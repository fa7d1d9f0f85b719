"""Run skmsg's benchmarks and print one line per figure.

Usage, from the repository root::

    python bench/run.py [NAME...] [--quick]

Benchmarks live in ``bench/bench_*.py``; each module exposes ``BENCHMARKS``,
a dict from benchmark name to a function taking ``quick`` and returning its
:class:`~bench._harness.Figure` list. A NAME is a benchmark name (``ring.push``)
or a module's short name (``ring`` for ``bench_ring.py``: all of its
benchmarks); no NAME runs them all, in module then definition order.

Promises:

- one line per figure, as :func:`~bench._harness.format_figure` writes it
  (name, value, baseline, ratio with its direction, target and PASS/MISS or
  ``report``), then one summary line;
- exit 0 when every benchmark ran, targets missed or not (figures are
  reports); exit 1 when a benchmark raised (its traceback goes to stderr and
  the others still run); exit 2 for a usage error, an unknown NAME included,
  with a message naming it and listing the known ones;
- ``--quick`` runs each benchmark with tiny batches, for smoke tests: seconds
  for the whole run, figures too noisy to read.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._harness import Figure, format_figure, pin_malloc  # noqa: E402

Benchmark = Callable[[bool], list[Figure]]


def discover() -> dict[str, dict[str, Benchmark]]:
    """Every ``bench/bench_*.py`` module's ``BENCHMARKS``, keyed by the module's
    short name (``ring`` for ``bench_ring.py``), in file-name order.

    Raises:
        TypeError: a module has no ``BENCHMARKS`` dict.
        ValueError: two modules define the same benchmark name.
    """
    found: dict[str, dict[str, Benchmark]] = {}
    seen: dict[str, str] = {}
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        module = importlib.import_module(f"bench.{path.stem}")
        benchmarks = getattr(module, "BENCHMARKS", None)
        if not isinstance(benchmarks, dict):
            raise TypeError(f"{path.name} has no BENCHMARKS dict")
        for name in benchmarks:
            if name in seen:
                raise ValueError(f"benchmark {name!r} defined by {seen[name]} and {path.name}")
            seen[name] = path.name
        found[path.stem.removeprefix("bench_")] = benchmarks
    return found


def select(
    found: dict[str, dict[str, Benchmark]], names: Sequence[str]
) -> dict[str, Benchmark] | str:
    """The benchmarks ``names`` ask for (all for none), or the unknown name."""
    every = {name: fn for group in found.values() for name, fn in group.items()}
    if not names:
        return every
    chosen: dict[str, Benchmark] = {}
    for name in names:
        if name in every:
            chosen[name] = every[name]
        elif name in found:
            chosen.update(found[name])
        else:
            return name
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks ``argv`` names; return the exit status (see the module)."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Run skmsg benchmarks, side by side with baselines."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmark or module name")
    parser.add_argument("--quick", action="store_true", help="tiny batches, for smoke tests")
    args = parser.parse_args(argv)

    found = discover()
    chosen = select(found, args.names)
    if isinstance(chosen, str):
        known = ", ".join([*found, *(n for group in found.values() for n in group)])
        parser.error(f"unknown benchmark {chosen!r}; known: {known}")

    pinned = pin_malloc()
    print(
        f"# skmsg bench: python {platform.python_version()} on {platform.machine()}, "
        f"malloc thresholds {'pinned' if pinned else 'NOT pinned'}"
        f"{', quick (numbers are noise)' if args.quick else ''}"
    )
    figures: list[Figure] = []
    failed: list[str] = []
    t0 = time.perf_counter()
    for name, bench in chosen.items():
        try:
            results = bench(args.quick)
        except Exception:
            traceback.print_exc()
            print(f"{name:<28} ERROR (traceback on stderr)")
            failed.append(name)
            continue
        for fig in results:
            print(format_figure(fig), flush=True)
        figures.extend(results)
    verdicts = [fig.verdict for fig in figures]
    print(
        f"# {len(figures)} figures from {len(chosen) - len(failed)} benchmarks "
        f"in {time.perf_counter() - t0:.1f} s: {verdicts.count('PASS')} PASS, "
        f"{verdicts.count('MISS')} MISS, {verdicts.count('report')} report"
        + (f"; {len(failed)} FAILED: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
