"""Interop of the hand-off at the record level, on real loopback TCP.

Our side runs tls_handoff and then speaks records with RecordSealer /
RecordOpener on the raw trio.SocketStream; the peer is unmodified OpenSSL
(trio.SSLStream in process, or plain ssl in a subprocess when a TLS 1.3 suite
must be forced through OPENSSL_CONF). Every case checks the echo by hash,
ALPN and SNI on both ends, tickets, and (TLS 1.3) a KeyUpdate both ways.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from skmsg_tls import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_CIPHER_AES_GCM_128,
    TLS_CIPHER_AES_GCM_256,
    TLS_CIPHER_CHACHA20_POLY1305,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RECORD_TYPE_DATA,
    RecordOpener,
    RecordSealer,
    tls_handoff,
)

from ._peers import (
    SUITES_12,
    SUITES_13,
    Pki,
    client_context,
    forced_suite_env,
    make_pki,
    records_exchange,
    run_ssl_peer,
    server_context,
    sha256,
    tcp_pair,
    trio_echo_peer,
)

CIPHER = {
    "aes128": TLS_CIPHER_AES_GCM_128,
    "aes256": TLS_CIPHER_AES_GCM_256,
    "chacha": TLS_CIPHER_CHACHA20_POLY1305,
}
PAYLOAD = os.urandom(300_000)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


# --- TLS 1.2, every suite, against trio.SSLStream (in process) -----------------------


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "no-tickets"])
@pytest.mark.parametrize("suite", list(SUITES_12))
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_tls12_against_trio_sslstream(pki: Pki, ours: str, suite: str, tickets: bool) -> None:
    ciphers = SUITES_12[suite]
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_2, tickets=tickets, ciphers=ciphers)
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    await check_against_trio(sctx, cctx, ours=ours, version=TLS_1_2_VERSION, suite=suite,
                             tickets=tickets)


async def test_tls12_rsa_certificate(pki: Pki) -> None:
    ciphers = "ECDHE-RSA-AES128-GCM-SHA256"
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_2, tickets=True, ciphers=ciphers, rsa=True)
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    for ours in ("client", "server"):
        await check_against_trio(sctx, cctx, ours=ours, version=TLS_1_2_VERSION,
                                 suite="aes128", tickets=True)


# --- TLS 1.3 default suite against trio.SSLStream (its delayed tickets) ---------------


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "no-tickets"])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_tls13_against_trio_sslstream(pki: Pki, ours: str, tickets: bool) -> None:
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=tickets)
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
    await check_against_trio(sctx, cctx, ours=ours, version=TLS_1_3_VERSION, suite="aes256",
                             tickets=tickets)


async def check_against_trio(
    sctx: ssl.SSLContext, cctx: ssl.SSLContext, *, ours: str, version: int, suite: str,
    tickets: bool,
) -> None:
    async with tcp_pair() as (client_sock, server_sock):
        await _check_against_trio(
            client_sock, server_sock, sctx, cctx, ours=ours, version=version, suite=suite,
            tickets=tickets,
        )


async def _check_against_trio(
    client_sock: trio.SocketStream, server_sock: trio.SocketStream,
    sctx: ssl.SSLContext, cctx: ssl.SSLContext, *, ours: str, version: int, suite: str,
    tickets: bool,
) -> None:
    seen_sni: list[str | None] = []

    def sni(obj: object, name: str | None, ctx: ssl.SSLContext) -> None:
        seen_sni.append(name)

    sctx.sni_callback = sni
    peer_result: list[int] = []
    async with trio.open_nursery() as nursery:
        if ours == "client":
            peer = trio.SSLStream(server_sock, sctx, server_side=True)
            mine, ctx = client_sock, cctx
        else:
            peer = trio.SSLStream(client_sock, cctx, server_hostname="localhost")
            mine, ctx = server_sock, sctx

        async def run_peer() -> None:
            peer_result.append(await trio_echo_peer(peer))

        nursery.start_soon(run_peer)
        ho = await tls_handoff(
            mine.send_all, mine.receive_some, ctx, server_side=ours == "server",
            server_hostname="localhost" if ours == "client" else None,
        )
        assert (ho.version, ho.cipher_type) == (version, CIPHER[suite])
        assert ho.ssl_object.selected_alpn_protocol() == "http/1.1"
        if ours == "client":
            assert ho.ssl_object.getpeercert()["subjectAltName"] == (("DNS", "localhost"),)
        ex = await records_exchange(mine, ho, PAYLOAD, key_update=True)
        await mine.aclose()
    assert ex.echoed_sha256 == sha256(PAYLOAD)
    assert peer_result == [len(PAYLOAD)]
    assert ex.close_notify
    assert seen_sni == ["localhost"]
    assert peer.selected_alpn_protocol() == "http/1.1"
    if version == TLS_1_3_VERSION:
        assert ho.tx_secret is not None and ho.rx_secret is not None
        assert ex.key_updates_received == 1  # OpenSSL answered update_requested
        expected_tx = 2 if (ours == "server" and tickets) else 0
        assert (ho.tx.seq, ho.rx.seq) == (expected_tx, 0)
        assert ex.tickets == (2 if (ours == "client" and tickets) else 0)
        if ours == "server":
            assert peer.session is not None and peer.session.has_ticket == tickets
    else:
        assert ho.tx_secret is None and ho.rx_secret is None
        assert (ho.tx.seq, ho.rx.seq) == (1, 1)  # each Finished took seq 0
        assert ex.tickets == 0


# --- TLS 1.3, every suite forced, against a plain ssl peer in a subprocess -------------


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "no-tickets"])
@pytest.mark.parametrize("suite", list(SUITES_13))
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_tls13_every_suite_against_ssl_subprocess(
    pki: Pki, tmp_path: Path, ours: str, suite: str, tickets: bool
) -> None:
    env = forced_suite_env(tmp_path, SUITES_13[suite])
    base = {"version": "TLSv1_3", "alpn": ["http/1.1"] if ours == "client" else ["h2", "http/1.1"]}
    outcome: dict[str, object] = {}

    async def our_side(stream: trio.SocketStream, ctx: ssl.SSLContext) -> None:
        ho = await tls_handoff(
            stream.send_all, stream.receive_some, ctx, server_side=ours == "server",
            server_hostname="localhost" if ours == "client" else None,
        )
        outcome["ho"] = ho
        outcome["ex"] = await records_exchange(stream, ho, PAYLOAD, key_update=True)
        await stream.aclose()

    if ours == "client":
        cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)

        async def on_port(port: int) -> None:
            await our_side(await trio.open_tcp_stream("127.0.0.1", port), cctx)

        summary = await run_ssl_peer(
            {**base, "role": "server", "certfile": pki.certfile, "tickets": 2 if tickets else 0},
            env, on_port=on_port,
        )
    else:
        sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=tickets)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                stream = await listeners[0].accept()
                await our_side(stream, sctx)

            nursery.start_soon(serve)
            summary = await run_ssl_peer(
                {**base, "role": "client", "cafile": pki.cafile, "port": port,
                 "server_hostname": "localhost"},
                env,
            )
        await listeners[0].aclose()
    ho, ex = outcome["ho"], outcome["ex"]
    assert summary["cipher"] == SUITES_13[suite]
    assert summary["version"] == "TLSv1.3"
    assert summary["echoed"] == len(PAYLOAD)
    assert summary["alpn"] == "http/1.1"
    assert (ho.version, ho.cipher_type) == (TLS_1_3_VERSION, CIPHER[suite])
    assert ex.echoed_sha256 == sha256(PAYLOAD)
    assert ex.key_updates_received == 1
    assert ex.close_notify
    if ours == "client":
        assert summary["sni"] == "localhost"
        assert ex.tickets == (2 if tickets else 0)
        assert (ho.tx.seq, ho.rx.seq) == (0, 0)
    else:
        assert summary["has_ticket"] == tickets
        assert (ho.tx.seq, ho.rx.seq) == (2 if tickets else 0, 0)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_64_mib_each_way_checked_by_hash(pki: Pki, version: ssl.TLSVersion) -> None:
    """Our client streams 64 MiB to a trio.SSLStream server, which streams
    64 MiB back; each side checks the other's SHA-256 (thousands of records,
    sequence numbers far past the hand-off)."""
    total = 64 * 1024 * 1024
    block = os.urandom(1 << 20)
    expected = hashlib.sha256(block * 64).hexdigest()
    sctx = server_context(pki, version, tickets=True)
    cctx = client_context(pki, version)
    peer_digest: list[str] = []
    async with tcp_pair() as (client_sock, server_sock), trio.open_nursery() as nursery:
        peer = trio.SSLStream(server_sock, sctx, server_side=True)

        async def run_peer() -> None:
            await peer.do_handshake()
            h, n = hashlib.sha256(), 0
            while n < total:
                data = await peer.receive_some(1 << 18)
                assert data
                h.update(data)
                n += len(data)
            peer_digest.append(h.hexdigest())
            for _ in range(64):
                await peer.send_all(block)

        nursery.start_soon(run_peer)
        ho = await tls_handoff(client_sock.send_all, client_sock.receive_some, cctx,
                               server_side=False, server_hostname="localhost")
        sealer, opener = RecordSealer(ho.tx), RecordOpener(ho.rx)
        opener.feed(ho.unconsumed)
        view = memoryview(block)
        for _ in range(64):
            out = bytearray()
            for off in range(0, len(block), TLS_MAX_PAYLOAD_SIZE):
                sealer.seal_into(out, view[off : off + TLS_MAX_PAYLOAD_SIZE])
            await client_sock.send_all(out)
        h, n = hashlib.sha256(), 0
        while n < total:
            rec = opener.next_record()
            if rec is None:
                opener.feed(await client_sock.receive_some(1 << 18))
                continue
            if rec[0] == TLS_RECORD_TYPE_DATA:
                h.update(rec[1])
                n += len(rec[1])
        assert h.hexdigest() == expected
    assert peer_digest == [expected]
    assert sealer.seq == ho.tx.seq + 64 * 64
