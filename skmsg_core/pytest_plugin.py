"""skmsg's pytest plugin (``pytest11`` entry point): fixtures for tests of
skmsg programs and protocol plugins. Cheap to import: nothing heavy loads
until a fixture is used (trio and the runtime are imported inside the
fixtures). Protocol plugins add their own (the TCP plugin's
``tcp_stream_pair`` and test servers: ``skmsg_tcp.pytest_plugin``).

The fixtures are function-scoped; the async one runs under pytest-trio
(``trio_mode = true``, or tests marked ``@pytest.mark.trio``):

- ``skmsg_runtime``: an open :class:`skmsg_core.runtime.Runtime`, current for
  the test, so receive programs work; its pumps stop after the test.
- ``sockmap`` / ``sockhash``: an empty ``SockMap`` / ``SockHash``
  (``max_entries`` 64, or ``request.param`` with indirect parametrization),
  closed after the test.

Example::

    def test_route_attaches(sockmap):
        prog = sockmap.attach(route, sk.SK_SKB_STREAM_VERDICT)
        assert sockmap.statistics().progs["stream_verdict"] == prog.id
"""

# Lazy imports inside the fixtures are the point: importing this module must stay cheap.
# ruff: noqa: PLC0415

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from skmsg_core import SockHash, SockMap

if TYPE_CHECKING:
    from skmsg_core.runtime import Runtime

__all__ = ["DEFAULT_MAX_ENTRIES", "skmsg_runtime"]

DEFAULT_MAX_ENTRIES = 64


@pytest.fixture
async def skmsg_runtime() -> AsyncIterator[Runtime]:
    """An open skmsg runtime, current for the test (receive programs need one)."""
    from skmsg_core.runtime import open_runtime

    async with open_runtime() as rt:
        yield rt


def _max_entries(request: pytest.FixtureRequest) -> int:
    value: int = getattr(request, "param", DEFAULT_MAX_ENTRIES)
    return value


@pytest.fixture(name="sockmap")
def _sockmap(request: pytest.FixtureRequest) -> Iterator[SockMap]:
    """An empty ``SockMap`` (``max_entries`` 64, or the indirect param), closed after."""
    smap = SockMap(max_entries=_max_entries(request))
    yield smap
    smap.close()


@pytest.fixture(name="sockhash")
def _sockhash(request: pytest.FixtureRequest) -> Iterator[SockHash]:
    """An empty ``SockHash`` (``max_entries`` 64, or the indirect param), closed after."""
    smap = SockHash(max_entries=_max_entries(request))
    yield smap
    smap.close()
