"""Shared pieces of the hand-off tests: certificates, contexts, OpenSSL peers
(trio.SSLStream in process, plain ssl in a subprocess for forced TLS 1.3
suites), and our side: tls_handoff, then records on the raw stream."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio
import trustme

from skmsg_tls import (
    TLS_1_3_VERSION,
    TLS_HANDSHAKE_KEY_UPDATE,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RECORD_TYPE_ALERT,
    TLS_RECORD_TYPE_DATA,
    TLS_RECORD_TYPE_HANDSHAKE,
    RecordOpener,
    RecordSealer,
    TlsHandoff,
    key_update_message,
    tls13_crypto_info,
    tls13_next_secret,
)

PEER_SCRIPT = Path(__file__).with_name("_ssl_peer.py")
ALPN_CLIENT = ["h2", "http/1.1"]
ALPN_SERVER = ["http/1.1"]
CLOSE_NOTIFY = b"\x01\x00"

SUITES_13 = {
    "aes128": "TLS_AES_128_GCM_SHA256",
    "aes256": "TLS_AES_256_GCM_SHA384",
    "chacha": "TLS_CHACHA20_POLY1305_SHA256",
}
SUITES_12 = {
    "aes128": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "aes256": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "chacha": "ECDHE-ECDSA-CHACHA20-POLY1305",
}


@attrs.frozen
class Pki:
    ca: trustme.CA
    cert: trustme.LeafCert
    rsa_cert: trustme.LeafCert
    dir: Path

    @property
    def cafile(self) -> str:
        return str(self.dir / "ca.pem")

    @property
    def certfile(self) -> str:
        return str(self.dir / "cert.pem")


def make_pki(tmp: Path) -> Pki:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    rsa_cert = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "cert.pem"))
    return Pki(ca, cert, rsa_cert, tmp)


def server_context(
    pki: Pki, version: ssl.TLSVersion, *, tickets: bool, ciphers: str | None = None,
    rsa: bool = False,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    (pki.rsa_cert if rsa else pki.cert).configure_cert(ctx)
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.set_alpn_protocols(ALPN_SERVER)
    ctx.num_tickets = 2 if tickets else 0
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def client_context(
    pki: Pki, version: ssl.TLSVersion, *, ciphers: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki.ca.configure_trust(ctx)
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    ctx.set_alpn_protocols(ALPN_CLIENT)
    return ctx


@attrs.define
class Exchange:
    """What our side saw after the hand-off."""

    echoed_sha256: str = ""
    tickets: int = 0
    key_updates_received: int = 0
    records_sent: int = 0
    close_notify: bool = False


def handshake_messages(data: bytes) -> list[int]:
    types = []
    pos = 0
    while pos + 4 <= len(data):
        types.append(data[pos])
        pos += 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
    return types


async def records_exchange(
    stream: trio.abc.Stream, ho: TlsHandoff, payload: bytes, *, key_update: bool
) -> Exchange:
    """Our side after the hand-off: send ``payload`` sealed in full records (a
    KeyUpdate with update_requested in the middle, TLS 1.3), read the echo,
    follow tickets and the peer's KeyUpdate, then close_notify both ways."""
    result = Exchange()
    sealer = RecordSealer(ho.tx)
    opener = RecordOpener(ho.rx)
    opener.feed(ho.unconsumed)
    tx_secret, rx_secret = ho.tx_secret, ho.rx_secret
    echoed = hashlib.sha256()
    n_echoed = 0

    async def send() -> None:
        nonlocal tx_secret
        half = len(payload) // 2
        for i, part in enumerate((payload[:half], payload[half:])):
            out = bytearray()
            for off in range(0, len(part), TLS_MAX_PAYLOAD_SIZE):
                sealer.seal_into(out, memoryview(part)[off : off + TLS_MAX_PAYLOAD_SIZE])
                result.records_sent += 1
            await stream.send_all(out)
            if i == 0 and key_update and ho.version == TLS_1_3_VERSION:
                assert tx_secret is not None
                await stream.send_all(
                    sealer.seal(key_update_message(True), TLS_RECORD_TYPE_HANDSHAKE)
                )
                tx_secret = tls13_next_secret(tx_secret, ho.cipher_type)
                sealer.rekey(tls13_crypto_info(tx_secret, ho.cipher_type))

    async def next_record() -> tuple[int, bytes] | None:
        while (rec := opener.next_record()) is None:
            data = await stream.receive_some()
            if not data:
                opener.eof()
                return None
            opener.feed(data)
        return rec

    async def receive(until_close: bool) -> None:
        nonlocal rx_secret, n_echoed
        while until_close or n_echoed < len(payload):
            rec = await next_record()
            if rec is None:
                assert until_close, "EOF before the whole echo"
                return
            ctype, data = rec
            if ctype == TLS_RECORD_TYPE_DATA:
                echoed.update(data)
                n_echoed += len(data)
            elif ctype == TLS_RECORD_TYPE_HANDSHAKE:
                for msg in handshake_messages(data):
                    if msg == 4:  # NewSessionTicket
                        result.tickets += 1
                    elif msg == TLS_HANDSHAKE_KEY_UPDATE:
                        result.key_updates_received += 1
                if opener.key_expired:
                    assert rx_secret is not None
                    rx_secret = tls13_next_secret(rx_secret, ho.cipher_type)
                    opener.rekey(tls13_crypto_info(rx_secret, ho.cipher_type))
            elif ctype == TLS_RECORD_TYPE_ALERT:
                assert data == CLOSE_NOTIFY, data
                assert until_close
                result.close_notify = True
            else:
                raise AssertionError(f"unexpected record type {ctype}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await receive(until_close=False)
    result.echoed_sha256 = echoed.hexdigest()
    await stream.send_all(sealer.seal(CLOSE_NOTIFY, TLS_RECORD_TYPE_ALERT))
    await receive(until_close=True)
    assert not opener.has_partial()
    return result


async def trio_echo_peer(ssl_stream: trio.SSLStream[trio.abc.Stream]) -> int:
    """trio.SSLStream peer: handshake, echo until close_notify, close. Returns
    the bytes echoed."""
    await ssl_stream.do_handshake()
    total = 0
    while data := await ssl_stream.receive_some(65536):
        await ssl_stream.send_all(data)
        total += len(data)
    await ssl_stream.aclose()
    return total


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forced_suite_env(tmp: Path, suite: str) -> dict[str, str]:
    cnf = tmp / f"{suite}.cnf"
    cnf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
        "[ssl_sect]\nsystem_default = system_default_sect\n"
        f"[system_default_sect]\nCiphersuites = {suite}\n"
    )
    return {**os.environ, "OPENSSL_CONF": str(cnf)}


async def run_ssl_peer(
    cfg: dict[str, object],
    env: dict[str, str],
    *,
    on_port: Callable[[int], Awaitable[None]] | None = None,
) -> dict[str, object]:
    """Run _ssl_peer.py; a server reports its port to ``on_port`` (which runs
    our client). Returns the peer's JSON summary."""
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(PEER_SCRIPT), json.dumps(cfg)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        buf = bytearray()
        lines: list[str] = []
        try:
            with trio.fail_after(30):
                while True:
                    chunk = await proc.stdout.receive_some()
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        line, _, rest = bytes(buf).partition(b"\n")
                        buf[:] = rest
                        lines.append(line.decode())
                        if line.startswith(b"port ") and on_port is not None:
                            nursery.start_soon(on_port, int(line.split()[1]))
                rc = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert rc == 0, f"ssl peer exited with {rc}"
    summary: dict[str, object] = json.loads(lines[-1])
    return summary


PAYLOAD_SMALL = bytes(range(256)) * 200


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A connected loopback TCP pair (client, server), both closed on exit."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    try:
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()
