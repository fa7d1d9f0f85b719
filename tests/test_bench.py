"""Smoke test of the benchmark runner ``bench/run.py`` (no timing thresholds).

Promised: ``--quick`` runs every benchmark in a subprocess, exits 0 whatever
the figures say, and prints each expected figure on its own line with its
ratio column; an unknown benchmark name exits 2 with an error naming it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"

RING_FIGURES = [
    f"ring.{op}.{versus}"
    for op in ("pull.nocopy", "pull.span2", "push", "pop", "push.split", "pop.split")
    for versus in ("vs_4k", "vs_naive")
]
#: ``skmsg proxy`` as a process between many clients and a backend, against no proxy.
PROXY_FIGURES = [
    "proxy.burst.p99", "proxy.burst.max", "proxy.burst.max.workers2", "proxy.burst.max.floor",
    "proxy.steady",
    "proxy.churn.rss",
]
#: The TLS-terminating proxy against a trio.SSLStream relay, and the floor of the stack.
TLS_FIGURES = [
    f"proxy.{name}{suffix}" for name in ("bulk_tls", "reqresp_tls") for suffix in ("", ".floor")
] + ["proxy.reqresp_tls.programs"]

#: A figure line: its name first, then somewhere its ratio with direction and verdict.
FIGURE_LINE = re.compile(
    r"^(?P<name>\S+)\s.*\| ratio\s+\d+\.\d+x "
    r"\((paired )?(value/baseline, (lower|higher)|baseline/value, higher) is better\) \|"
    r".*\b(PASS|MISS|report)$"
)


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``python bench/run.py ARGS`` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run() -> subprocess.CompletedProcess[str]:
    return run_bench("--quick")


def test_quick_run_exits_0(quick_run: subprocess.CompletedProcess[str]) -> None:
    assert quick_run.returncode == 0, quick_run.stderr


def test_quick_run_prints_every_figure_with_a_ratio(
    quick_run: subprocess.CompletedProcess[str],
) -> None:
    lines = quick_run.stdout.splitlines()
    figures = {m["name"]: line for line in lines if (m := FIGURE_LINE.match(line))}
    for name in RING_FIGURES + PROXY_FIGURES + TLS_FIGURES:
        assert name in figures, f"{name} missing or without a ratio column in:\n{quick_run.stdout}"
    assert lines[-1].startswith("# ") and f"{len(figures)} figures" in lines[-1]


def test_named_benchmark_runs_only_its_figures() -> None:
    result = run_bench("--quick", "ring.push")
    assert result.returncode == 0, result.stderr
    names = {m["name"] for line in result.stdout.splitlines() if (m := FIGURE_LINE.match(line))}
    assert names == {
        "ring.push.vs_4k", "ring.push.vs_naive", "ring.push.split.vs_4k", "ring.push.split.vs_naive"
    }


def test_unknown_benchmark_exits_2_naming_it() -> None:
    result = run_bench("--quick", "no-such-bench")
    assert result.returncode == 2
    assert "'no-such-bench'" in result.stderr
    assert "ring.push" in result.stderr  # the known ones are listed
    assert result.stdout == ""
