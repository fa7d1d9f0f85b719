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


def test_dns_route_example_loads_and_reads_only_well_formed_queries() -> None:
    """examples/dns_route.py (``skmsg proxy --udp --policy``; end to end in
    tests/udp/test_udp_proxy.py): a verified policy, and its QNAME reader
    refuses what is not a well-formed query."""
    import runpy

    from skmsg import Policy

    path = ROOT / "examples" / "dns_route.py"
    assert Policy.from_file(path).parse is None
    qname = runpy.run_path(str(path))["qname"]
    header = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    question = b"\x02db\x04Corp\x07example\x00\x00\x01\x00\x01"
    assert qname(memoryview(header + question)) == ("db", "corp", "example")
    assert qname(memoryview(header[:2] + b"\x81\x80" + header[4:] + question)) is None  # a response
    assert qname(memoryview(header[:4] + b"\x00\x00" + header[6:] + question)) is None  # QDCOUNT 0
    assert qname(memoryview(header + question[:-3])) is None  # truncated
    assert qname(memoryview(header + b"\xc0\x0c" + question[-4:])) is None  # a pointer
    assert qname(memoryview(header[:5])) is None
