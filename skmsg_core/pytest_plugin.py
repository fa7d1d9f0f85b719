"""skmsg's pytest plugin (``pytest11`` entry point): fixtures for tests of
skmsg programs and protocol plugins. Cheap to import: nothing heavy loads
until a fixture is used (trio, the runtime and the TCP plugin are imported
inside the fixtures).

The async fixtures run under pytest-trio (``trio_mode = true``, or tests marked
``@pytest.mark.trio``); all of them are function-scoped:

- ``skmsg_runtime``: an open :class:`skmsg_core.runtime.Runtime`, current for
  the test, so receive programs work; its pumps stop after the test.
- ``tcp_stream_pair``: ``(client, server)``, two connected
  :class:`skmsg_tcp.SkStream` on loopback, in no map, made under
  ``skmsg_runtime``; both closed after the test.
- ``sockmap`` / ``sockhash``: an empty ``SockMap`` / ``SockHash``
  (``max_entries`` 64, or ``request.param`` with indirect parametrization),
  closed after the test.
- ``skmsg_test_server_factory``: an async function taking the arguments of
  :func:`skmsg_core.testing.open_test_server` and returning a running
  :class:`skmsg_core.testing.TestServer`; every server stops after the test.
- ``test_server``: one running test server (echo, no programs; indirect
  parametrization passes a dict of ``open_test_server`` arguments).

A server task's failure (a handler that raised) fails the test that used it.

Example::

    async def test_drop_is_eacces(tcp_stream_pair, sockmap):
        client, server = tcp_stream_pair
        sockmap.attach(lambda msg: sk.SK_DROP, sk.SK_MSG_VERDICT)
        sockmap.update(0, client)
        with pytest.raises(PermissionError):
            await client.send_all(b"x")
"""

# Lazy imports inside the fixtures are the point: importing this module must stay cheap.
# ruff: noqa: PLC0415

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest

from skmsg_core import SockHash, SockMap

if TYPE_CHECKING:
    import trio

    from skmsg_core.runtime import Runtime
    from skmsg_core.testing import TestServer
    from skmsg_tcp import SkStream

__all__ = ["DEFAULT_MAX_ENTRIES", "ServerFactory", "skmsg_runtime", "skmsg_test_server_factory"]

#: ``skmsg_test_server_factory``'s type: ``open_test_server``'s arguments in, a running server out.
ServerFactory: TypeAlias = Callable[..., Awaitable["TestServer"]]

DEFAULT_MAX_ENTRIES = 64


@pytest.fixture
async def skmsg_runtime() -> AsyncIterator[Runtime]:
    """An open skmsg runtime, current for the test (receive programs need one)."""
    from skmsg_core.runtime import open_runtime

    async with open_runtime() as rt:
        yield rt


@pytest.fixture(name="tcp_stream_pair")
async def _tcp_stream_pair(skmsg_runtime: Runtime) -> AsyncIterator[tuple[SkStream, SkStream]]:
    """``(client, server)``: connected SkStreams on 127.0.0.1, closed after the test."""
    from skmsg_core.testing import aclose_all, tcp_stream_pair

    client, server = await tcp_stream_pair()
    try:
        yield client, server
    finally:
        await aclose_all((client, server))


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


@pytest.fixture
async def skmsg_test_server_factory(skmsg_runtime: Runtime) -> AsyncIterator[ServerFactory]:
    """``await skmsg_test_server_factory(handler, msg_verdict=..., ...)``: a running
    test server (:func:`skmsg_core.testing.open_test_server`'s arguments). The
    servers run in this fixture's nursery and stop after the test."""
    import trio

    from skmsg_core.testing import open_test_server

    async def serve(
        kwargs: dict[str, Any], *, task_status: trio.TaskStatus[TestServer]
    ) -> None:
        async with open_test_server(**kwargs) as server:
            task_status.started(server)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:

        async def factory(*args: Any, **kwargs: Any) -> TestServer:
            if args:
                kwargs["handler"], *rest = args
                if rest:
                    raise TypeError("open_test_server takes one positional argument, the handler")
            server: TestServer = await nursery.start(serve, kwargs)
            return server

        try:
            yield factory
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture(name="test_server")
async def _test_server(
    skmsg_test_server_factory: ServerFactory, request: pytest.FixtureRequest
) -> TestServer:
    """A running test server: echo, no programs, unless an indirect param (a dict
    of ``open_test_server`` arguments) says otherwise."""
    kwargs: dict[str, Any] = getattr(request, "param", {})
    return await skmsg_test_server_factory(**kwargs)
