"""The examples run and do what they say."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_policy_demo() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "policy_demo.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "send_all(b'hello world') -> 11 bytes" in out
    assert "send_all(b'SECRET plans') -> EACCES" in out
    assert "on the wire: b'hello world'" in out
    assert "passed=1, dropped=1" in out
    # one action per backend for the batch: apple and kiwi together, zebra alone
    assert "redirect 2 msg(s) -> ('127.0.0.1', 9001): b'\\x00\\x00\\x00\\x05apple" in out
    assert "redirect 1 msg(s) -> ('127.0.0.1', 9002): b'\\x00\\x00\\x00\\x05zebra'" in out
