"""``skmsg proxy``'s per-client boundary, in process: whatever is raised while
serving one client (an exception of any kind, cancellation and Ctrl-C aside),
TCP, TLS or UDP, closes that client's connections (its UDP session), is
counted in ``client_errors`` and logged once, with no traceback; the proxy
and its other clients carry on, and the next client is served."""

from __future__ import annotations

import errno
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from skmsg import Address, Proxy, ProxyConfig, run_proxy
from skmsg import _proxy as proxy_module
from skmsg._tls import TlsOptions, client_context, server_context, write_self_signed
from skmsg._udp_proxy import UdpProxy, UdpProxyConfig, run_udp_proxy
from skmsg_core.runtime import RateLimitedLog

from ._support import TIMEOUT, frame

CLI_LOGGER = "skmsg"


class Injected(BaseException):
    """A ``BaseException`` of our own."""


EXCEPTIONS = [
    pytest.param(lambda: ValueError("injected"), id="ValueError"),
    pytest.param(lambda: OSError(errno.EIO, "injected"), id="OSError"),
    pytest.param(lambda: SystemExit("injected"), id="SystemExit"),
    pytest.param(lambda: GeneratorExit("injected"), id="GeneratorExit"),
    pytest.param(lambda: Injected("injected"), id="BaseException"),
    pytest.param(
        lambda: BaseExceptionGroup("injected", [Injected("inner"), ValueError("inner")]),
        id="BaseExceptionGroup",
    ),
]
Make = Callable[[], BaseException]


def once(original: Callable[..., Awaitable[Any]] | Callable[..., Any], make: Make,
         *, is_async: bool = True) -> Callable[..., Any]:
    """``original``, but its first call after this raises ``make()``."""
    calls = 0

    def fail_first() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise make()

    if is_async:

        async def patched_async(*args: Any, **kwargs: Any) -> Any:
            fail_first()
            return await original(*args, **kwargs)

        return patched_async

    def patched(*args: Any, **kwargs: Any) -> Any:
        fail_first()
        return original(*args, **kwargs)

    return patched


class Client:
    """A client of the TCP or TLS proxy, length-prefixed messages."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def round_trip(self, payload: bytes) -> bytes:
        await self.stream.send_all(frame(payload))
        with trio.fail_after(TIMEOUT):
            while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "big"):
                chunk = await self.stream.receive_some()
                assert chunk, "the proxy closed the connection"
                self.buf += chunk
        n = 4 + int.from_bytes(self.buf[:4], "big")
        msg, self.buf = self.buf[4:n], self.buf[n:]
        return msg

    async def closed_by_the_proxy(self) -> None:
        """The proxy closes this client's connection (EOF or a reset)."""
        with trio.fail_after(TIMEOUT):
            try:
                while await self.stream.receive_some():
                    pass
            except (trio.BrokenResourceError, ssl.SSLError):
                pass


@asynccontextmanager
async def proxy_running(config: ProxyConfig) -> AsyncIterator[Proxy]:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(run_proxy, config)
        yield proxy
        nursery.cancel_scope.cancel()


def check_contained(proxy: Proxy | UdpProxy, exc_type: type[BaseException],
                    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    assert proxy.statistics().client_errors == 1
    lines = [r.getMessage() for r in caplog.records
             if r.name == CLI_LOGGER and r.getMessage().startswith("event=client_error ")]
    assert len(lines) == 1, lines
    assert f"error={exc_type.__name__}" in lines[0] or f'error="{exc_type.__name__}' in lines[0]
    assert not any(r.exc_info for r in caplog.records)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err


@pytest.fixture(autouse=True)
def _fresh_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy's rate-limited log starts afresh for each test."""
    monkeypatch.setattr(proxy_module, "limited_log", RateLimitedLog(proxy_module.log),
                        raising=False)


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_client_whose_serving_raises_is_closed_and_the_others_carry_on(
    tls: bool, make: Make, *, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("WARNING", CLI_LOGGER)
    options = ctx = None
    if tls:
        cert, key = write_self_signed(["127.0.0.1"])
        options = TlsOptions(server=server_context(cert, key), cert_path=cert)
        ctx = client_context(cert)

    async def connect(proxy: Proxy) -> Client:
        addr = proxy.listen[0]
        if ctx is not None:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                addr.host, addr.port, ssl_context=ctx)
        else:
            stream = await trio.open_tcp_stream(addr.host, addr.port)
        return Client(stream)

    async with proxy_running(ProxyConfig(listen=Address("127.0.0.1", 0), tls=options)) as proxy:
        good = await connect(proxy)
        assert await good.round_trip(b"hello") == b"[backend 0] hello"
        raised = make()
        if tls:  # the TLS hop: the handshake's own task step
            monkeypatch.setattr(proxy_module, "terminate",
                                once(proxy_module.terminate, lambda: raised))
        else:
            monkeypatch.setattr(Proxy, "_session", once(Proxy._session, lambda: raised))
        addr = proxy.listen[0]
        bad = await trio.open_tcp_stream(addr.host, addr.port)  # its serving raises
        await Client(bad).closed_by_the_proxy()
        await bad.aclose()
        for payload in (b"still", b"served"):  # round-robin: both backends
            assert (await good.round_trip(payload)).endswith(payload)
        late = await connect(proxy)  # the next client is served
        assert (await late.round_trip(b"late")).endswith(b"late")
        for c in (good, late):
            await c.stream.aclose()
        check_contained(proxy, type(raised), caplog, capfd)


@asynccontextmanager
async def udp_proxy_running() -> AsyncIterator[UdpProxy]:
    async with trio.open_nursery() as nursery:
        config = UdpProxyConfig(listen=Address("127.0.0.1", 0))
        proxy: UdpProxy = await nursery.start(run_udp_proxy, config)
        yield proxy
        nursery.cancel_scope.cancel()


async def udp_client(proxy: UdpProxy) -> trio.socket.SocketType:
    addr = proxy.listen[0]
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.connect((addr.host, addr.port))
    return sock


async def udp_round_trip(sock: trio.socket.SocketType, payload: bytes) -> bytes:
    await sock.send(payload)
    with trio.fail_after(TIMEOUT):
        data: bytes = await sock.recv(65536)
    return data


@pytest.mark.parametrize("make", EXCEPTIONS)
@pytest.mark.parametrize("step", ["_open_session", "_carry"])
async def test_udp_a_session_whose_serving_raises_is_closed_and_the_others_carry_on(
    step: str, make: Make, *, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
) -> None:
    caplog.set_level("WARNING", CLI_LOGGER)
    async with udp_proxy_running() as proxy:
        good = await udp_client(proxy)
        assert await udp_round_trip(good, b"hello") == b"[backend 0] hello"
        raised = make()
        monkeypatch.setattr(UdpProxy, step, once(getattr(UdpProxy, step), lambda: raised,
                                                 is_async=False))
        bad = await udp_client(proxy)
        await bad.send(b"first")  # its session fails: no reply, the session is closed
        for payload in (b"still", b"served"):
            assert (await udp_round_trip(good, payload)).endswith(payload)
        assert proxy.statistics().client_errors == 1
        assert len(proxy.sessions) == 1  # the bad session is gone, nothing half-made left
        # the same peer is a new session now, and served
        assert (await udp_round_trip(bad, b"again")).endswith(b"again")
        good.close()
        bad.close()
        check_contained(proxy, type(raised), caplog, capfd)
