"""Fixtures of the fail-closed tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from skmsg_core.runtime import RateLimitedLog
from skmsg_core.runtime import _runtime as runtime_module

from ._support import RUNTIME_LOGGER, TOUCHED


@pytest.fixture(autouse=True)
def _runtime_warnings(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's warnings reach ``caplog`` whatever the logging set-up, and
    its rate limit starts afresh: what one test logged does not hold back the
    next test's line."""
    caplog.set_level(logging.WARNING, RUNTIME_LOGGER)
    monkeypatch.setattr(runtime_module, "_rate_limited", RateLimitedLog(runtime_module.log))


@pytest.fixture
def untouched() -> Iterator[None]:
    """The test's spy values are asked nothing (checked after the test)."""
    TOUCHED.clear()
    yield
    assert TOUCHED == [], f"the runner ran the value's code: {TOUCHED}"
