"""``skmsg proxy --tls`` / ``--backend-tls`` end to end: TLS terminated from
clients (a self-signed certificate made at start-up, or --cert), TLS originated
to backends, the policy seeing plaintext either way; unmodified OpenSSL peers
(``trio.SSLStream``) on both outer hops."""

from __future__ import annotations

import pathlib
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import skmsg_core as sk
import skmsg_tcp
from skmsg import Address, Proxy, ProxyConfig, main, run_proxy
from skmsg._parsers import parse_length_prefixed
from skmsg._session import Session
from skmsg._tls import TlsOptions, client_context, server_context, write_self_signed
from skmsg._upstream import BackendConn
from skmsg_tls._ulp import TlsUlp
from tests._freed import alive, collector_off

TIMEOUT = 10
POLICY = """
import skmsg_core as sk

SEEN = []

def verdict(skb, backends):
    data = bytes(skb.data[4:])
    SEEN.append(data)                       # the policy sees the client's plaintext
    if b"secret" in data:
        return sk.SK_DROP
    return sk.sk_redirect_map(skb, backends, 0 if data < b"n" else 1, 0)
"""


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class TlsBackend:
    """An unmodified OpenSSL TLS server (trio.SSLStream) answering each
    length-prefixed message with ``[name] payload``."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        self.name = name
        self.ctx = ctx
        self.received: list[bytes] = []
        self.address = Address("127.0.0.1", 0)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = Address.of(listeners[0].socket.getsockname())
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.ctx, server_side=True)
        parser = sk.StrParser(parse_length_prefixed)
        try:
            async for data in stream:
                for m in parser.feed(data):
                    self.received.append(bytes(m[4:]))
                    await stream.send_all(frame(f"[{self.name}] ".encode() + bytes(m[4:])))
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def running(ca: trustme.CA, tmp_path: pathlib.Path, **kw: Any) -> AsyncIterator[
    tuple[Proxy, tuple[TlsBackend, TlsBackend], str]
]:
    bctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(bctx)
    ca_path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    cert, key = write_self_signed(["127.0.0.1"])
    policy = tmp_path / "policy.py"
    policy.write_text(POLICY)
    tls = TlsOptions(server_context(cert, key), client_context(ca_path), "localhost", cert)
    pair = (TlsBackend("b0", bctx), TlsBackend("b1", bctx))
    async with trio.open_nursery() as nursery:
        for b in pair:
            await nursery.start(b.serve)
        config = ProxyConfig(
            listen=Address("127.0.0.1", 0),
            backends=tuple(b.address for b in pair),
            policy=str(policy),
            tls=tls,
            **kw,
        )
        proxy: Proxy = await nursery.start(run_proxy, config)
        yield proxy, pair, cert
        nursery.cancel_scope.cancel()


async def tls_client(proxy: Proxy, cert: str) -> trio.SSLStream[trio.SocketStream]:
    addr = proxy.listen[0]
    tcp = await trio.open_tcp_stream(addr.host, addr.port)
    stream = trio.SSLStream(tcp, client_context(cert), server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def replies(stream: trio.abc.ReceiveStream, n: int) -> list[bytes]:
    parser = sk.StrParser(parse_length_prefixed)
    got: list[bytes] = []
    with trio.fail_after(TIMEOUT):
        while len(got) < n:
            data = await stream.receive_some()
            assert data, f"EOF after {got}"
            got += [bytes(m[4:]) for m in parser.feed(data)]
    return got


async def test_tls_both_hops_policy_sees_plaintext(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    async with running(ca, tmp_path) as (proxy, (b0, b1), cert):
        client = await tls_client(proxy, cert)
        try:
            # one TLS record carrying three messages, then one message cut over records
            await client.send_all(frame(b"apple") + frame(b"my secret") + frame(b"zebra"))
            msg = frame(b"kiwi")
            await client.send_all(msg[:3])
            await client.send_all(msg[3:])
            got = await replies(client, 3)
            assert got == [b"[b0] apple", b"[b1] zebra", b"[b0] kiwi"]
            assert b0.received == [b"apple", b"kiwi"] and b1.received == [b"zebra"]
            stats = proxy.verdict.statistics()
            assert (stats.redirected, stats.dropped) == (3, 1)  # "my secret" never left
            assert proxy.policy.verdict.__globals__["SEEN"] == [
                b"apple", b"my secret", b"zebra", b"kiwi"
            ]
        finally:
            await trio.aclose_forcefully(client)


async def test_bulk_through_both_tls_hops_is_intact(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    async with running(ca, tmp_path) as (proxy, _, cert):
        client = await tls_client(proxy, cert)
        try:
            payloads = [bytes([65 + i % 13]) * (1000 + 997 * i) for i in range(40)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, b"".join(frame(p) for p in payloads))
                got = await replies(client, len(payloads))
            assert [g.split(b"] ", 1)[1] for g in got] == payloads
        finally:
            await trio.aclose_forcefully(client)


async def test_a_plain_client_on_a_tls_proxy_is_refused(
    ca: trustme.CA, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(ca, tmp_path) as (proxy, _, _cert):
        addr = proxy.listen[0]
        stream = await trio.open_tcp_stream(addr.host, addr.port)
        await stream.send_all(frame(b"plain text is not TLS"))
        with trio.fail_after(TIMEOUT):
            while True:
                try:
                    if not await stream.receive_some():
                        break
                except trio.BrokenResourceError:
                    break
        await stream.aclose()
        assert "event=tls_handshake_failed client=" in caplog.text
        assert proxy.verdict.statistics().run_cnt == 0  # nothing reached the policy


def test_cli_tls_demo_makes_a_certificate_and_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "skmsg", "proxy", "--demo", "--tls"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "skmsg proxy: TLS from clients (certificate /" in done.stdout
    assert "demo: sent b'hello'  ->  reply b'[backend 0] hello'" in done.stdout


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--cert", "x.pem"], "--cert/--key need --tls"),
        (["--tls", "--key", "k.pem"], "--key needs --cert"),
        (["--backend-ca", "ca.pem", "--backend", "127.0.0.1:9"], "need --backend-tls"),
        (["--backend-tls"], "--backend-tls needs --backend"),
        (["--tls", "--cert", "/nonexistent/cert.pem"], "--cert /nonexistent/cert.pem: cannot use"),
    ],
)
def test_bad_tls_options_are_refused(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["proxy", *argv])
    _out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()]
    assert named in err


def test_proxy_help_documents_the_tls_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--tls", "--cert PEM", "--key PEM", "--backend-tls", "--backend-ca PEM",
                   "--backend-hostname NAME", "--backend-insecure"):
        assert option in out


async def test_a_client_closing_tcp_without_close_notify_is_a_close(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    """Many HTTP clients close TCP without close_notify: the proxy counts that
    as the client's close, not as a TLS or parse error, and other clients go on."""
    async with running(ca, tmp_path) as (proxy, _, cert):
        rude = await tls_client(proxy, cert)
        await rude.send_all(frame(b"apple"))
        assert await replies(rude, 1) == [b"[b0] apple"]
        await rude.transport_stream.aclose()  # TCP FIN, no close_notify
        polite = await tls_client(proxy, cert)
        try:
            await polite.send_all(frame(b"zebra"))
            assert await replies(polite, 1) == [b"[b1] zebra"]
        finally:
            await trio.aclose_forcefully(polite)
        with trio.fail_after(TIMEOUT):
            while proxy.counters.clients_open:  # both gone, the rude one too
                await trio.sleep(0.01)
        assert proxy.counters.clients_total == 2
        assert proxy.counters.parse_errors == 0
        assert proxy.counters.client_errors == 0


async def test_a_backend_that_never_answers_the_tls_handshake_is_down_and_routed_around(
    ca: trustme.CA, tmp_path: pathlib.Path,
) -> None:
    """--backend-tls to a backend that takes the TCP connection and never says a
    word: the handshake is cut at --handshake-timeout, the backend is marked
    down, and the message is judged again and answered by the other one."""
    ca_path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    bctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(bctx)
    good = TlsBackend("good", bctx)
    silent = trio.socket.socket()
    await silent.bind(("127.0.0.1", 0))
    silent.listen()
    mute = Address.of(silent.getsockname())
    tls = TlsOptions(client=client_context(ca_path), backend_hostname="localhost")
    async with trio.open_nursery() as nursery:
        await nursery.start(good.serve)
        config = ProxyConfig(listen=Address("127.0.0.1", 0), backends=(mute, good.address),
                             tls=tls, handshake_timeout=0.5, backoff_min=30.0,
                             health_interval=0.2)
        proxy: Proxy = await nursery.start(run_proxy, config)
        addr = proxy.listen[0]
        client = await trio.open_tcp_stream(addr.host, addr.port)
        await client.send_all(frame(b"hello"))  # round-robin: the silent one first
        got = b""
        with trio.fail_after(TIMEOUT):
            while len(got) < 4 or len(got) < 4 + int.from_bytes(got[:4], "big"):
                got += await client.receive_some()
        assert got[4:] == b"[good] hello"
        s = proxy.statistics()
        b = s.backends[0]
        assert b.timeouts["handshake"] >= 1 and not b.up and b.connect_errors >= 1
        assert (s.rerouted, s.no_backend, s.backends[1].backend_lost) == (1, 0, 0)
        with trio.fail_after(TIMEOUT):  # the active checks shake hands with each
            await proxy.counters.wait_for(
                lambda: proxy.counters.backends[1].checks >= 2
                and proxy.counters.backends[0].check_failures >= 1)
        s = proxy.statistics()
        assert s.backends[1].check_failures == 0 and s.backends[1].up
        await client.aclose()
        nursery.cancel_scope.cancel()
    silent.close()


async def test_a_closed_tls_clients_objects_are_freed_without_the_garbage_collector(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    """TLS on both hops: what served a client (its session, its streams and
    their record layers) is freed by reference counting when it closes."""
    async with running(ca, tmp_path) as (proxy, _, cert):
        with collector_off():
            for i in range(5):
                await one_client(proxy, cert, i)
            await trio.testing.wait_all_tasks_blocked()
            assert alive(Session, BackendConn, skmsg_tcp.SkStream, TlsUlp) == {}


async def one_client(proxy: Proxy, cert: str, i: int) -> None:
    """A TLS client whose two messages go one to each backend and are answered;
    then it closes, and the proxy has no client left."""
    client = await tls_client(proxy, cert)
    await client.send_all(frame(b"apple %d" % i) + frame(b"zebra %d" % i))
    assert await replies(client, 2) == [b"[b0] apple %d" % i, b"[b1] zebra %d" % i]
    await client.aclose()
    with trio.fail_after(TIMEOUT):
        await proxy.counters.wait_for(lambda: proxy.counters.clients_open == 0)


async def test_a_tls_backend_closing_without_close_notify_after_the_proxys_is_a_close(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    """The test backends answer the proxy's close_notify by closing TCP
    without one of their own (as many servers do): owing no reply, that is a
    close, not a failure held against the backend. The next client is served
    at once by the same backends."""
    async with running(ca, tmp_path) as (proxy, _, cert):
        for i in range(3):
            await one_client(proxy, cert, i)
            with trio.fail_after(TIMEOUT):
                await proxy.counters.wait_for(
                    lambda: sum(b.conns_open for b in proxy.counters.backends) == 0)
        s = proxy.statistics()
        assert s.client_closed["done"] == 3
        for b in s.backends:
            assert b.downs == 0 and b.closed["reset"] == 0 and b.connects == 3
        assert all(h.up() for h in proxy.health)
