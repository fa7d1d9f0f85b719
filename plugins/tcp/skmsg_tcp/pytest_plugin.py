"""The TCP plugin's pytest plugin (``pytest11`` entry point ``skmsg_tcp``):
fixtures for tests on real loopback TCP streams, on top of the core's
(``skmsg_runtime``, ``sockmap``, ``sockhash``). Cheap to import: trio and the
streams load when a fixture is used.

- ``tcp_stream_pair``: ``(client, server)``, two connected
  :class:`skmsg_tcp.SkStream` on loopback, in no map, made under
  ``skmsg_runtime``; both closed after the test.
- ``skmsg_test_server_factory``: an async function taking the arguments of
  :func:`skmsg_tcp.testing.open_test_server` and returning a running
  :class:`skmsg_tcp.testing.TestServer`; every server stops after the test.
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

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest

if TYPE_CHECKING:
    from skmsg_core.runtime import Runtime

    from ._stream import SkStream
    from .testing import TestServer

__all__ = ["ServerFactory", "skmsg_test_server_factory"]

#: ``skmsg_test_server_factory``'s type: ``open_test_server``'s arguments in, a running server out.
ServerFactory: TypeAlias = Callable[..., Awaitable["TestServer"]]


@pytest.fixture(name="tcp_stream_pair")
async def _tcp_stream_pair(skmsg_runtime: Runtime) -> AsyncIterator[tuple[SkStream, SkStream]]:
    """``(client, server)``: connected SkStreams on 127.0.0.1, closed after the test."""
    from skmsg_core.testing import aclose_all

    from .testing import tcp_stream_pair

    client, server = await tcp_stream_pair()
    try:
        yield client, server
    finally:
        await aclose_all((client, server))


@pytest.fixture
async def skmsg_test_server_factory(skmsg_runtime: Runtime) -> AsyncIterator[ServerFactory]:
    """``await skmsg_test_server_factory(handler, msg_verdict=..., ...)``: a running
    test server (:func:`skmsg_tcp.testing.open_test_server`'s arguments). The
    servers run in this fixture's nursery and stop after the test."""
    import trio

    from .testing import open_test_server

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
