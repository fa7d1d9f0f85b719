"""skmsg against the real kernel: every scenario in ``scenarios/`` played on both.

Where this process can load BPF programs (root, clang, libbpf; the kernel
accepting sockmap programs), each scenario runs on the live kernel first and
then on skmsg, and the two are compared; the recorded kernel results, when
they were recorded on this same kernel release, must equal the live ones
(so the recording stays current). Elsewhere, or with
``SKMSG_CONFORMANCE=recorded``, skmsg is compared with the recorded results,
and the report says so in one line.

A test fails on any difference the scenario does not declare (see
``_compare``); declared differences are listed in the report and documented
in docs/kernel-differences.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from . import conftest
from ._bpf import availability
from ._compare import compare, ignored_ranges
from ._kernel import run_on_kernel
from ._recorded import load_recorded, scenario_hash
from ._results import decode_bytes
from ._scenario import Scenario, load_scenarios
from ._skmsg import run_on_skmsg

SCENARIOS = {sc.name: sc for sc in load_scenarios()}
RECORDED = load_recorded()
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "kernel-differences.md"


def _source_line() -> str:
    why = availability()
    if why is None:
        return f"kernel results: live kernel {platform.release()} (BPF sockmap programs loaded)"
    rec = RECORDED["kernel"] if RECORDED else "none"
    return (
        f"kernel results: RECORDED from Linux {rec}, not live: kernel BPF unavailable here "
        f"({why}); skmsg is checked against the recording"
    )


def _recorded_result(sc: Scenario) -> dict[str, Any]:
    assert RECORDED is not None, "no recorded kernel results in tests/conformance/recorded/"
    entry = RECORDED["scenarios"].get(sc.name)
    assert entry is not None, (
        f"scenario {sc.name!r} has no recorded kernel result: re-record with "
        "`sudo .venv/bin/python -m tests.conformance.record`"
    )
    assert entry["scenario_hash"] == scenario_hash(sc), (
        f"scenario {sc.name!r} changed since it was recorded: re-record with "
        "`sudo .venv/bin/python -m tests.conformance.record`"
    )
    return dict(entry["result"])


def _kernel_vs_recording(sc: Scenario, live: dict[str, Any], rec: dict[str, Any]) -> list[str]:
    """Where the live kernel and the recording of the same release differ
    (bytes the kernel leaves unspecified, declared with ``ignore``, aside)."""
    problems = []
    ignores = {d["field"]: d["ignore"] for d in sc.declared if "ignore" in d}
    for key in ("steps", "ends", "msg_runs", "msg_log", "skb_runs", "skb_log"):
        if key in ("msg_runs", "msg_log") and not sc.compare_msg_log:
            continue
        if key == "skb_runs" and not sc.compare_skb_runs:
            continue
        if key == "skb_log" and not sc.compare_skb_log:
            continue
        if live[key] != rec[key]:
            problems.append(f"{key}: live {live[key]!r:.200} != recorded {rec[key]!r:.200}")
    for peer in set(live["received"]) | set(rec["received"]):
        a = bytearray(
            decode_bytes(live["received"].get(peer, "")) if peer in live["received"] else b""
        )
        b = bytearray(
            decode_bytes(rec["received"].get(peer, "")) if peer in rec["received"] else b""
        )
        if len(a) == len(b):
            for off, length in ignored_ranges(ignores.get(f"received.{peer}", [])):
                a[off : off + length] = b[off : off + length] = bytes(length)
        if a != b:
            problems.append(
                f"received.{peer}: live {len(a)} B != recorded {len(b)} B (or bytes differ)"
            )
    return problems


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(name: str) -> None:
    sc = SCENARIOS[name]
    conftest.SOURCE.append(_source_line())
    if availability() is None:
        kernel = run_on_kernel(sc)
        if RECORDED is not None and RECORDED["kernel"] == platform.release():
            stale = _kernel_vs_recording(sc, kernel, _recorded_result(sc))
            assert not stale, (
                f"the recorded kernel results for {name!r} differ from the live kernel "
                f"{platform.release()}: re-record (sudo .venv/bin/python -m "
                "tests.conformance.record)\n" + "\n".join(stale)
            )
    else:
        kernel = _recorded_result(sc)
    skmsg = await run_on_skmsg(sc, kernel)
    outcome = compare(sc, kernel, skmsg)
    conftest.OUTCOMES.append(outcome)
    assert outcome.status != "mismatch", f"{name}: skmsg differs from the kernel:\n" + "\n".join(
        outcome.problems
    )


def test_declared_differences_are_documented() -> None:
    """Every declared difference names a phrase of docs/kernel-differences.md."""
    text = DOCS.read_text()
    missing = [
        f"{sc.name}: {d['id']} ({d['doc']!r})"
        for sc in SCENARIOS.values()
        for d in sc.declared
        if d["doc"] not in text
    ]
    assert not missing, "declared but not documented:\n" + "\n".join(missing)


def test_every_scenario_is_recorded() -> None:
    """The checked-in recording covers every scenario as it is now defined."""
    assert RECORDED is not None
    for sc in SCENARIOS.values():
        _recorded_result(sc)


RECORDED_PICK = [
    "case20-pop-1-2-send-many",
    "sticky-drop",
    "case52-skb-redirect-to-connected",
    "case49-update-flags",
    "push-at-end",
]


@pytest.mark.parametrize(
    ("how", "picked", "reason"),
    [
        ("env", RECORDED_PICK, "SKMSG_CONFORMANCE=recorded"),
        ("no-clang", RECORDED_PICK[:2], "clang is not installed"),
    ],
)
def test_recorded_path_runs_without_bpf(how: str, picked: list[str], reason: str) -> None:
    """Where BPF cannot run (forced with ``SKMSG_CONFORMANCE=recorded``, or no
    clang on ``PATH``) the suite says so in one line and checks skmsg against
    the recording alone."""
    env = dict(os.environ)
    env.pop("SKMSG_CONFORMANCE", None)
    if how == "env":
        env["SKMSG_CONFORMANCE"] = "recorded"
    else:
        env["PATH"] = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            *(f"{Path(__file__)}::test_scenario[{n}]" for n in picked),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"{len(picked)} passed" in out, out[-3000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("kernel results:")]
    assert len(lines) == 1, out[-3000:]
    assert lines[0].startswith("kernel results: RECORDED") and reason in lines[0], lines[0]
    assert f"{len(picked)} scenarios: " in out and "0 mismatch(es)" in out, out[-3000:]
