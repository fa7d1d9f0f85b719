"""TLS facts in programs: ``sk.tls`` (a :class:`skmsg_tls.TlsInfo`) read from
inside SK_MSG and SK_SKB programs, on both ends, TLS 1.2 and 1.3, with and
without ALPN and client certificates, against a real OpenSSL peer (Python's
``ssl`` through ``trio.SSLStream``)."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trio
import trustme
from cryptography import x509

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_core.runtime import open_runtime
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair

from ._ulp_helpers import make_keys, read_exactly

TIMEOUT = 20
SERVER_CN = "alpha server"
CLIENT_CN = "billing client"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _subject(pem: bytes) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.subject.rfc4514_string(), cert.issuer.rfc4514_string()


def contexts(
    ca: trustme.CA, version: str, *, alpn: bool, client_cert: bool
) -> tuple[ssl.SSLContext, ssl.SSLContext, trustme.LeafCert, trustme.LeafCert]:
    server_leaf = ca.issue_cert("alpha.example", "beta.example", "127.0.0.1",
                                common_name=SERVER_CN)
    client_leaf = ca.issue_cert("client@example", common_name=CLIENT_CN,
                                organization_name="Example Billing")
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_leaf.configure_cert(sctx)
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    if client_cert:
        sctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(sctx)
        client_leaf.configure_cert(cctx)
    if alpn:
        sctx.set_alpn_protocols(["h2", "http/1.1"])
        cctx.set_alpn_protocols(["x-unknown", "h2"])
    for ctx in (sctx, cctx):
        if version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        else:
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return sctx, cctx, server_leaf, client_leaf


class Seen:
    """Programs on our end's map that record what ``sk.tls`` was at each run."""

    def __init__(self) -> None:
        self.smap = sk.SockMap(max_entries=1)
        self.msg: list[Any] = []
        self.skb: list[Any] = []
        self.smap.attach(self.on_msg, sk.SK_MSG_VERDICT)
        self.smap.attach(self.on_skb, sk.SK_SKB_STREAM_VERDICT)

    def on_msg(self, msg: sk.SkMsg) -> int:
        assert msg.sk is not None
        self.msg.append(msg.sk.tls)  # type: ignore[attr-defined]
        return sk.SK_PASS

    def on_skb(self, skb: sk.SkBuff) -> int:
        assert skb.sk is not None
        self.skb.append(skb.sk.tls)  # type: ignore[attr-defined]
        return sk.SK_PASS


async def handshake(
    ours: str, mine: SkStream, theirs: SkStream, sctx: ssl.SSLContext, cctx: ssl.SSLContext,
    *, hostname: str | None,
) -> tuple[tls.TlsSocket, trio.SSLStream[SkStream]]:
    peer = trio.SSLStream(
        theirs, cctx if ours == "server" else sctx, server_side=ours == "client",
        server_hostname=hostname if ours == "server" else None,
    )
    got: list[tls.TlsSocket] = []

    async def our_side() -> None:
        if ours == "client":
            got.append(await tls.start_tls(mine, cctx, server_hostname=hostname))
        else:
            got.append(await tls.start_tls(mine, sctx, server_side=True))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(our_side)
            nursery.start_soon(peer.do_handshake)
    return got[0], peer


@pytest.mark.parametrize("client_cert", [True, False], ids=["client-cert", "no-client-cert"])
@pytest.mark.parametrize("alpn", [True, False], ids=["alpn", "no-alpn"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_programs_read_the_handshakes_facts_from_sk_tls(
    ca: trustme.CA, ours: str, version: str, alpn: bool, client_cert: bool
) -> None:
    sctx, cctx, server_leaf, client_leaf = contexts(
        ca, version, alpn=alpn, client_cert=client_cert
    )
    seen = Seen()
    async with open_runtime():
        client, server = await tcp_stream_pair()
        mine, theirs = (client, server) if ours == "client" else (server, client)
        seen.smap.update(0, mine)  # the kernel's order: the map, then TLS
        # the client asks in mixed case: DNS names compare case-blind
        t, peer = await handshake(ours, mine, theirs, sctx, cctx, hostname="Alpha.EXAMPLE")
        with trio.fail_after(TIMEOUT):
            await mine.send_all(b"ping")  # SK_MSG runs on our plaintext
            assert await read_exactly(peer, 4) == b"ping"  # type: ignore[arg-type]
            await peer.send_all(b"pong")  # SK_SKB runs on the opened record
            assert await read_exactly(mine, 4) == b"pong"
        info = t.info
        assert seen.msg == [info] and seen.skb == [info]
        assert seen.msg[0] is info and mine.sk.tls is info  # type: ignore[attr-defined]

        # the OpenSSL peer's own view (trio.SSLStream forwards these to its SSLObject)
        assert info.version == f"TLSv{version}" == peer.version() == t.version
        assert info.cipher == peer.cipher()[0] == t.cipher
        assert info.version_number == (
            tls.TLS_1_3_VERSION if version == "1.3" else tls.TLS_1_2_VERSION
        )
        assert info.cipher_type == tls.cipher_for_suite(info.cipher, info.version_number)
        assert info.server_side is (ours == "server")
        assert info.server_name == "alpha.example"  # what the client sent, both ends
        assert info.alpn_protocol == ("h2" if alpn else None)
        assert info.alpn_protocol == peer.selected_alpn_protocol()

        peer_leaf = server_leaf if ours == "client" else client_leaf
        has_peer_cert = ours == "client" or client_cert
        if has_peer_cert:
            subject, issuer = _subject(peer_leaf.cert_chain_pems[0].bytes())
            assert (info.peer_subject, info.peer_issuer) == (subject, issuer)
            assert issuer == _subject(ca.cert_pem.bytes())[0]
            assert info.peer_common_name == (SERVER_CN if ours == "client" else CLIENT_CN)
            assert info.peer_verified
        else:  # the server did not ask the client for a certificate
            assert info.peer_subject is info.peer_issuer is info.peer_common_name is None
            assert not info.peer_verified
        with pytest.raises(AttributeError):
            info.server_name = "other.example"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            mine.sk.tls = None  # type: ignore[attr-defined]
        await mine.aclose()
        await theirs.aclose()
        assert mine.sk.tls is info  # type: ignore[attr-defined]  # facts outlive the stream


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_programs_see_none_until_the_handshake_is_done(
    ca: trustme.CA, ours: str
) -> None:
    """STARTTLS: the stream is in its map before TLS (the kernel's order), so
    its programs run on the plaintext exchange first, and see ``sk.tls`` None."""
    sctx, cctx, _, _ = contexts(ca, "1.3", alpn=False, client_cert=False)
    seen = Seen()
    async with open_runtime():
        client, server = await tcp_stream_pair()
        mine, theirs = (client, server) if ours == "client" else (server, client)
        seen.smap.update(0, mine)
        assert mine.sk.tls is None  # type: ignore[attr-defined]
        with trio.fail_after(TIMEOUT):
            await mine.send_all(b"STARTTLS\r\n")
            assert await read_exactly(theirs, 10) == b"STARTTLS\r\n"
            await theirs.send_all(b"GO\r\n")
            assert await read_exactly(mine, 4) == b"GO\r\n"
        assert seen.msg == [None] and seen.skb == [None]
        t, peer = await handshake(ours, mine, theirs, sctx, cctx, hostname="beta.example")
        with trio.fail_after(TIMEOUT):
            await mine.send_all(b"secure")
            assert await read_exactly(peer, 6) == b"secure"  # type: ignore[arg-type]
            await peer.send_all(b"secure")
            assert await read_exactly(mine, 6) == b"secure"
        assert seen.msg == [None, t.info] and seen.skb == [None, t.info]
        assert t.info.server_name == "beta.example"
        await mine.aclose()
        await theirs.aclose()


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_no_server_name_when_the_client_sent_none(ca: trustme.CA, ours: str) -> None:
    """An IP address is not sent as SNI (RFC 6066 §3): the facts come from the
    ClientHello on the wire, not from ``server_hostname``."""
    sctx, cctx, _, _ = contexts(ca, "1.3", alpn=False, client_cert=False)
    async with open_runtime():
        client, server = await tcp_stream_pair()
        mine, theirs = (client, server) if ours == "client" else (server, client)
        t, _ = await handshake(ours, mine, theirs, sctx, cctx, hostname="127.0.0.1")
        assert t.info.server_name is None and t.info.peer_verified == (ours == "client")
        await mine.aclose()
        await theirs.aclose()


async def test_a_users_sni_callback_still_runs_and_the_facts_say_what_the_client_sent(
    ca: trustme.CA,
) -> None:
    """The server's own ``sni_callback`` sees the name and may switch
    contexts (the certificate served follows); ``server_name`` is what the
    client sent."""
    sctx, cctx, _, _ = contexts(ca, "1.3", alpn=False, client_cert=False)
    beta = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("beta.example", common_name="beta server").configure_cert(beta)
    asked: list[str | None] = []

    def switch(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        asked.append(name)
        if name == "beta.example":
            obj.context = beta

    sctx.sni_callback = switch  # type: ignore[assignment]
    async with open_runtime():
        client, server = await tcp_stream_pair()
        t, peer = await handshake("server", server, client, sctx, cctx, hostname="beta.example")
        assert asked == ["beta.example"]
        assert t.info.server_name == "beta.example"
        assert peer.getpeercert()["subject"][-1] == (("commonName", "beta server"),)
        await server.aclose()
        await client.aclose()
    assert sctx.sni_callback is switch  # restored after the hand-off


@pytest.mark.parametrize(
    ("version", "cipher", "name"),
    [
        (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_128, "TLS_AES_128_GCM_SHA256"),
        (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_256, "TLS_AES_256_GCM_SHA384"),
        (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_CHACHA20_POLY1305, "TLS_CHACHA20_POLY1305_SHA256"),
        (tls.TLS_1_2_VERSION, tls.TLS_CIPHER_AES_GCM_256, "AES_GCM_256"),
    ],
)
async def test_enable_tls_publishes_version_and_cipher_only(
    version: int, cipher: int, name: str
) -> None:
    async with open_runtime():
        a, b = await tcp_stream_pair()
        seen = Seen()
        seen.smap.update(0, a)
        k = make_keys(version, cipher)
        ta = await tls.enable_tls(a, k.a2b, k.b2a, server_side=False)
        await tls.enable_tls(b, k.b2a, k.a2b)
        await a.send_all(b"x")
        assert await read_exactly(b, 1) == b"x"
        assert seen.msg == [ta.info]
        v = "TLSv1.3" if version == tls.TLS_1_3_VERSION else "TLSv1.2"
        assert ta.info == tls.TlsInfo(v, name, version, cipher, server_side=False)
        assert b.sk.tls == tls.TlsInfo(v, name, version, cipher)  # type: ignore[attr-defined]
        assert ta.ssl_object is None
        await a.aclose()
        await b.aclose()


async def test_a_socket_without_tls_reads_none() -> None:
    a, b = await tcp_stream_pair()
    assert a.sk.tls is None and a.sk.ulp is None  # type: ignore[attr-defined]
    assert sk.Sock(None).tls is None  # type: ignore[attr-defined]
    assert "tls" in sk.plugins().ulp_names() and sk.plugins().ulp("tls").name == "tls"
    await a.aclose()
    await b.aclose()
