"""Fixtures of the fail-closed tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from ._support import RUNTIME_LOGGER, TOUCHED


@pytest.fixture(autouse=True)
def _runtime_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """The runtime's warnings reach ``caplog`` whatever the logging set-up."""
    caplog.set_level(logging.WARNING, RUNTIME_LOGGER)


@pytest.fixture
def untouched() -> Iterator[None]:
    """The test's spy values are asked nothing (checked after the test)."""
    TOUCHED.clear()
    yield
    assert TOUCHED == [], f"the runner ran the value's code: {TOUCHED}"
