"""Recorded kernel results: written by ``python -m tests.conformance.record`` on a
machine whose kernel runs the BPF programs, read where it cannot.

``recorded/kernel-<uname -r>.json``: ``{"kernel": <uname -r>, "machine": ...,
"scenarios": {name: {"scenario_hash": ..., "result": <kernel results>}}}``.
A scenario's hash covers its whole (merged) definition, so a scenario edited
after recording is reported stale, never compared against old data.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from ._scenario import Scenario

__all__ = ["RECORDED_DIR", "load_recorded", "recorded_path", "scenario_hash", "write_recorded"]

RECORDED_DIR = Path(__file__).parent / "recorded"


def scenario_hash(sc: Scenario) -> str:
    """A digest of everything that defines ``sc``."""
    text = json.dumps(sc.raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_path(release: str | None = None) -> Path:
    return RECORDED_DIR / f"kernel-{release or platform.release()}.json"


def load_recorded() -> dict[str, Any] | None:
    """The recording for this kernel if there is one, else the newest recording."""
    here = recorded_path()
    if here.exists():
        return dict(json.loads(here.read_text()))
    files = sorted(RECORDED_DIR.glob("kernel-*.json"), key=lambda p: p.stat().st_mtime)
    return dict(json.loads(files[-1].read_text())) if files else None


def write_recorded(results: dict[str, tuple[Scenario, dict[str, Any]]]) -> Path:
    """Write the kernel's results for ``results`` (name -> (scenario, result))."""
    path = recorded_path()
    data = {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "note": "kernel results of tests/conformance/scenarios; re-record with "
        "`sudo .venv/bin/python -m tests.conformance.record`",
        "scenarios": {
            name: {"scenario_hash": scenario_hash(sc), "result": res}
            for name, (sc, res) in sorted(results.items())
        },
    }
    RECORDED_DIR.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path
