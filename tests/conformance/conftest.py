"""The conformance report: which kernel results were used, and the table."""

from __future__ import annotations

import pytest

from ._compare import Outcome, format_table

#: outcomes of the scenarios run in this session, in order
OUTCOMES: list[Outcome] = []
#: where the kernel's results came from: the one line the report starts with
SOURCE: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES and not SOURCE:
        return
    terminalreporter.write_sep("=", "skmsg vs the Linux kernel: conformance")
    for line in dict.fromkeys(SOURCE):
        terminalreporter.write_line(line)
    if OUTCOMES:
        label = "live" if any("live kernel" in s for s in SOURCE) else "recorded"
        terminalreporter.write_line(format_table(OUTCOMES, label))
