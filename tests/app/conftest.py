"""Fixtures of the application's tests."""

from __future__ import annotations

import logging

import pytest

from skmsg import _accept, _echo, _health, _proxy, _session, _tls
from skmsg_core.runtime import RateLimitedLog
from skmsg_core.runtime import _runtime as runtime_module


@pytest.fixture(autouse=True)
def _fresh_rate_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rate-limited log line starts afresh in each test: a backend that
    went down in one test does not hold back the next test's ``backend_down``
    (the limiters are per process, one line per key every few seconds)."""
    for module in (_accept, _echo, _health, _proxy, _session, _tls):
        monkeypatch.setattr(module, "limited_log", RateLimitedLog(logging.getLogger("skmsg")))
    monkeypatch.setattr(runtime_module, "_rate_limited", RateLimitedLog(runtime_module.log))
