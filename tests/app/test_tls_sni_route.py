"""``skmsg proxy --tls`` routing on what each client's handshake agreed on
(``examples/tls_sni_route.py``): unmodified OpenSSL clients
(``trio.SSLStream``) asking for different server names reach different
backends; clients that sent no known name go by ALPN; the rest are dropped."""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme

import skmsg_core as sk
from skmsg import Address, Proxy, ProxyConfig, main, run_proxy
from skmsg._parsers import parse_length_prefixed
from skmsg._tls import TlsOptions, server_context

from ._backends import Backend, frame

TIMEOUT = 20
ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tls_sni_route.py"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def proxy_with_example(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[Proxy, tuple[Backend, Backend]]]:
    leaf = ca.issue_cert("alpha.example", "beta.example", "127.0.0.1")
    pem = tmp_path / "both-names.pem"  # chain and key in one file
    leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
    tls = TlsOptions(server_context(str(pem), alpn=("h2", "http/1.1")))
    pair = (Backend("b0"), Backend("b1"))
    async with trio.open_nursery() as nursery:
        for b in pair:
            await b.start(nursery)
        config = ProxyConfig(
            listen=Address("127.0.0.1", 0),
            backends=tuple(b.address for b in pair),
            policy=str(EXAMPLE),
            tls=tls,
        )
        proxy: Proxy = await nursery.start(run_proxy, config)
        yield proxy, pair
        nursery.cancel_scope.cancel()


async def client(
    proxy: Proxy, ca: trustme.CA, server_hostname: str, *, alpn: list[str] | None = None,
    tls12: bool = False,
) -> trio.SSLStream[trio.SocketStream]:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    addr = proxy.listen[0]
    tcp = await trio.open_tcp_stream(addr.host, addr.port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
    with trio.fail_after(TIMEOUT):
        await stream.do_handshake()
    return stream


async def ask(stream: trio.SSLStream[trio.SocketStream], payload: bytes) -> bytes:
    """Send one message, return the one reply."""
    parser = sk.StrParser(parse_length_prefixed)
    await stream.send_all(frame(payload))
    with trio.fail_after(TIMEOUT):
        while True:
            data = await stream.receive_some()
            assert data, "EOF before the reply"
            got = parser.feed(data)
            if got:
                assert len(got) == 1
                return bytes(got[0][4:])


async def test_two_clients_asking_for_different_names_reach_different_backends(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    async with proxy_with_example(ca, tmp_path) as (proxy, (b0, b1)):
        alpha = await client(proxy, ca, "alpha.example")
        beta = await client(proxy, ca, "beta.example", tls12=True)
        try:
            assert alpha.selected_alpn_protocol() is None  # routed on the name alone
            assert await ask(alpha, b"to alpha") == b"[b0] to alpha"
            assert await ask(beta, b"to beta") == b"[b1] to beta"
            assert await ask(alpha, b"again") == b"[b0] again"  # per message, every message
            assert b0.received == [b"to alpha", b"again"] and b1.received == [b"to beta"]
            stats = proxy.verdict.statistics()
            assert (stats.redirected, stats.dropped, stats.errors) == (3, 0, 0)
        finally:
            await trio.aclose_forcefully(alpha)
            await trio.aclose_forcefully(beta)


async def test_names_compare_case_blind(ca: trustme.CA, tmp_path: pathlib.Path) -> None:
    async with proxy_with_example(ca, tmp_path) as (proxy, _):
        shouting = await client(proxy, ca, "BETA.Example")
        try:
            assert await ask(shouting, b"hi") == b"[b1] hi"
        finally:
            await trio.aclose_forcefully(shouting)


@pytest.mark.parametrize(("alpn", "backend"), [(["h2"], b"b0"), (["http/1.1"], b"b1"),
                                               (["x-other", "http/1.1"], b"b1")])
async def test_a_client_without_a_known_name_goes_by_alpn(
    ca: trustme.CA, tmp_path: pathlib.Path, alpn: list[str], backend: bytes
) -> None:
    async with proxy_with_example(ca, tmp_path) as (proxy, _):
        by_ip = await client(proxy, ca, "127.0.0.1", alpn=alpn)  # an IP: no SNI sent
        try:
            assert by_ip.selected_alpn_protocol() in ("h2", "http/1.1")
            assert await ask(by_ip, b"x") == b"[" + backend + b"] x"
        finally:
            await trio.aclose_forcefully(by_ip)


async def test_a_client_matching_no_rule_is_dropped_and_others_go_on(
    ca: trustme.CA, tmp_path: pathlib.Path
) -> None:
    async with proxy_with_example(ca, tmp_path) as (proxy, (b0, b1)):
        nobody = await client(proxy, ca, "127.0.0.1")  # no SNI, no ALPN
        alpha = await client(proxy, ca, "alpha.example")
        try:
            await nobody.send_all(frame(b"let me in"))
            with trio.fail_after(TIMEOUT):
                while proxy.verdict.statistics().dropped < 1:
                    await trio.sleep(0.01)
            assert await ask(alpha, b"fine") == b"[b0] fine"
            assert b"let me in" not in b0.received + b1.received
            assert proxy.verdict.statistics().errors == 0
        finally:
            await trio.aclose_forcefully(nobody)
            await trio.aclose_forcefully(alpha)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--alpn", "h2"], "--alpn needs --tls"),
        (["--tls", "--alpn", "h2,,http/1.1"], "--alpn 'h2,,http/1.1': '' is not a protocol"),
        (["--tls", "--alpn", "caf\u00e9"], "is not a protocol name"),
        (["--tls", "--alpn", "x" * 256], "is not a protocol name"),
    ],
)
def test_bad_alpn_options_are_refused(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["proxy", *argv])
    _out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert named in err


def test_proxy_help_documents_alpn(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--help"]) == 0
    assert "--alpn PROTO[,PROTO...]" in capsys.readouterr().out


def test_server_context_refuses_a_bad_alpn_name(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="ALPN protocol '' must be 1 to 255 ASCII"):
        server_context(str(tmp_path / "unused.pem"), alpn=("h2", ""))
