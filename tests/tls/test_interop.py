"""Interop through the ULP on real loopback, with Python's ``ssl`` (OpenSSL) as the
peer (``trio.SSLStream``): both sides, both directions, TLS 1.2 and 1.3, every
suite of AES-128-GCM / AES-256-GCM / ChaCha20-Poly1305 the installed OpenSSL
offers, session tickets on and off, key updates both ways, 64 MiB by hash."""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trustme

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair

from ._openssl import request_key_update, set_tls13_suites, tls13_suites_offered

TLS13 = {
    "TLS_AES_128_GCM_SHA256": tls.TLS_CIPHER_AES_GCM_128,
    "TLS_AES_256_GCM_SHA384": tls.TLS_CIPHER_AES_GCM_256,
    "TLS_CHACHA20_POLY1305_SHA256": tls.TLS_CIPHER_CHACHA20_POLY1305,
}
TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": tls.TLS_CIPHER_AES_GCM_128,
    "ECDHE-ECDSA-AES256-GCM-SHA384": tls.TLS_CIPHER_AES_GCM_256,
    "ECDHE-ECDSA-CHACHA20-POLY1305": tls.TLS_CIPHER_CHACHA20_POLY1305,
}


def _offered12() -> list[str]:
    ctx = ssl.create_default_context()
    ctx.set_ciphers("ALL")
    names = {c["name"] for c in ctx.get_ciphers()}
    return [s for s in TLS12 if s in names]


SUITES = [("1.3", s) for s in tls13_suites_offered() if s in TLS13] + [
    ("1.2", s) for s in _offered12()
]


def test_the_installed_openssl_offers_every_suite_we_seal() -> None:
    assert {s for v, s in SUITES if v == "1.3"} == set(TLS13)
    assert {s for v, s in SUITES if v == "1.2"} == set(TLS12)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(
    ca: trustme.CA, version: str, suite: str, *, tickets: bool
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(sctx)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    for ctx in (sctx, cctx):
        if version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(suite)
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            set_tls13_suites(ctx, suite)
    sctx.num_tickets = 2 if tickets else 0
    if not tickets:
        sctx.options |= ssl.OP_NO_TICKET
    return sctx, cctx


Side = tuple[trio.abc.Stream, trio.abc.Stream, "tls.TlsSocket"]


async def connect(
    ours: str, sctx: ssl.SSLContext, cctx: ssl.SSLContext, smap: sk.SockMap | None = None
) -> tuple[SkStream, trio.SSLStream[SkStream], tls.TlsSocket]:
    """Our SkStream on one side (``ours`` = "client" or "server"), trio.SSLStream
    (over a plain SkStream, no map) on the other; the handshake is concurrent."""
    client, server = await tcp_stream_pair()
    mine, theirs = (client, server) if ours == "client" else (server, client)
    if smap is not None:
        smap.update(0, mine)  # the kernel's order: map first, then TLS
    peer = trio.SSLStream(
        theirs,
        cctx if ours == "server" else sctx,
        server_side=ours == "client",
        server_hostname="localhost" if ours == "server" else None,
    )
    result: list[tls.TlsSocket] = []

    async def ours_side() -> None:
        if ours == "client":
            result.append(await tls.start_tls(mine, cctx, server_hostname="localhost"))
        else:
            result.append(await tls.start_tls(mine, sctx, server_side=True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ours_side)
        nursery.start_soon(peer.do_handshake)
    return mine, peer, result[0]


async def drain(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(got)} of {n}"
        got += chunk
    return bytes(got)


async def both_ways(mine: SkStream, peer: trio.SSLStream[SkStream], size: int) -> None:
    up, down = os.urandom(size), os.urandom(size + 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mine.send_all, up)
        nursery.start_soon(peer.send_all, down)
        assert await drain(peer, len(up)) == up
        assert await drain(mine, len(down)) == down


@pytest.fixture
async def runtime() -> AsyncIterator[object]:
    from skmsg_core.runtime import open_runtime

    async with open_runtime() as rt:
        yield rt


@pytest.mark.parametrize("tickets", [True, False], ids=["tickets", "no-tickets"])
@pytest.mark.parametrize("vs", SUITES, ids=[s for _, s in SUITES])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_interop(
    runtime: object, ca: trustme.CA, ours: str, vs: tuple[str, str], tickets: bool
) -> None:
    version, suite = vs
    sctx, cctx = contexts(ca, version, suite, tickets=tickets)
    mine, peer, t = await connect(ours, sctx, cctx)
    try:
        assert t.cipher_type == (TLS13 if version == "1.3" else TLS12)[suite]
        assert t.version_number == (
            tls.TLS_1_3_VERSION if version == "1.3" else tls.TLS_1_2_VERSION
        )
        assert t.version == f"TLSv{version}" and t.cipher == suite
        assert t.ssl_object is not None and t.ssl_object.cipher()[0] == suite  # type: ignore[index]
        await both_ways(mine, peer, 200_000)
        if ours == "client" and version == "1.3":
            # the server's NewSessionTickets arrive as handshake control records
            tickets_seen = []
            while True:
                try:
                    rec = t.receive_control_nowait()
                except trio.WouldBlock:
                    break
                tickets_seen.append(rec)
            assert len(tickets_seen) == (2 if tickets else 0)
            assert all(r.content_type == 22 and r.data[0] == 4 for r in tickets_seen)
        # close_notify both ways: each side sees EOF
        await mine.send_eof()
        assert await peer.receive_some() == b""
        await peer.aclose()
        assert await mine.receive_some() == b""
    finally:
        await aclose_all((mine, peer))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_interop_with_policy_in_the_path(
    runtime: object, ca: trustme.CA, sockmap: sk.SockMap, ours: str, version: str
) -> None:
    suite = "TLS_AES_256_GCM_SHA384" if version == "1.3" else "ECDHE-ECDSA-AES128-GCM-SHA256"
    sctx, cctx = contexts(ca, version, suite, tickets=True)
    tx: list[int] = []
    rx: list[int] = []

    def msg_prog(msg: sk.SkMsg) -> int:
        tx.append(msg.size)
        return sk.SK_PASS

    def skb_prog(skb: sk.SkBuff) -> int:
        rx.append(skb.len)
        return sk.SK_PASS

    sockmap.attach(msg_prog, sk.SK_MSG_VERDICT)
    sockmap.attach(skb_prog, sk.SK_SKB_STREAM_VERDICT)
    mine, peer, _ = await connect(ours, sctx, cctx, sockmap)
    try:
        await both_ways(mine, peer, 50_000)
        assert sum(tx) == 50_000 and max(tx) <= 16384  # plaintext, one verdict per record
        assert sum(rx) == 50_001 and max(rx) <= 16384
    finally:
        await aclose_all((mine, peer))


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_our_key_update_is_followed_by_the_peers(
    runtime: object, ca: trustme.CA, ours: str
) -> None:
    sctx, cctx = contexts(ca, "1.3", "TLS_AES_128_GCM_SHA256", tickets=False)
    mine, peer, t = await connect(ours, sctx, cctx)
    try:
        await t.update_keys(request_peer=True)
        await both_ways(mine, peer, 30_000)
        await both_ways(mine, peer, 30_000)
        s = t.statistics()
        assert (s.tx_rekeys, s.rx_rekeys, s.rx_key_updates_received) == (1, 1, 1)
    finally:
        await aclose_all((mine, peer))


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_the_peers_key_update_is_answered(
    runtime: object, ca: trustme.CA, ours: str
) -> None:
    sctx, cctx = contexts(ca, "1.3", "TLS_CHACHA20_POLY1305_SHA256", tickets=False)
    mine, peer, t = await connect(ours, sctx, cctx)
    try:
        for _ in range(2):
            request_key_update(peer._ssl_object, requested=True)  # OpenSSL initiates
            await peer.send_all(b"ping")
            assert await drain(mine, 4) == b"ping"
            await mine.send_all(b"pong")  # preceded by our own KeyUpdate
            assert await drain(peer, 4) == b"pong"
        s = t.statistics()
        assert (s.rx_key_updates_received, s.rx_rekeys, s.tx_rekeys) == (2, 2, 2)
    finally:
        await aclose_all((mine, peer))


def _hash_sender(size: int) -> tuple[Callable[[trio.abc.SendStream], object], str]:
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    for _ in range(size >> 20):
        digest.update(block)

    async def send(stream: trio.abc.SendStream) -> None:
        for _ in range(size >> 20):
            await stream.send_all(block)

    return send, digest.hexdigest()


async def _hash_received(stream: trio.abc.ReceiveStream, size: int) -> str:
    digest = hashlib.sha256()
    got = 0
    while got < size:
        chunk = await stream.receive_some(262144)
        assert chunk, f"EOF after {got} of {size}"
        digest.update(chunk)
        got += len(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_64_mib_by_hash(runtime: object, ca: trustme.CA, ours: str) -> None:
    """64 MiB each way: ours sealing to OpenSSL, and OpenSSL sealing to ours."""
    size = 64 << 20
    sctx, cctx = contexts(ca, "1.3", "TLS_AES_256_GCM_SHA384", tickets=True)
    mine, peer, t = await connect(ours, sctx, cctx)
    try:
        send_up, up = _hash_sender(size)
        send_down, down = _hash_sender(size)
        results: dict[str, str] = {}

        async def recv(name: str, stream: trio.abc.ReceiveStream) -> None:
            results[name] = await _hash_received(stream, size)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_up, mine)
                nursery.start_soon(send_down, peer)
                nursery.start_soon(recv, "up", peer)
                nursery.start_soon(recv, "down", mine)
        assert results == {"up": up, "down": down}
        assert t.statistics().tx_bytes == size and t.statistics().rx_bytes == size
    finally:
        await aclose_all((mine, peer))
