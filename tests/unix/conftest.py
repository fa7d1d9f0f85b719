"""Fixtures of the Unix plugin's tests: a running skmsg runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from skmsg_core.runtime import Runtime, open_runtime


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    async with open_runtime() as runtime:
        yield runtime
