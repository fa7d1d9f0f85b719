"""The hand-off's promises about the caller's context and its failures:
the context is left as it was (key log, SNI callback), secrets live in a
private file only during synchronous handshake steps, concurrent hand-offs on
one context work, unconsumed bytes are handed over, and failures are the ssl
errors unchanged or a clear TlsHandoffError."""

from __future__ import annotations

import errno
import os
import ssl
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from skmsg_tls import (
    TLS_1_2_VERSION,
    RecordOpener,
    TlsHandoff,
    TlsHandoffError,
    tls_handoff,
)

from ._peers import (
    PAYLOAD_SMALL,
    Pki,
    client_context,
    make_pki,
    records_exchange,
    server_context,
    sha256,
    tcp_pair,
    trio_echo_peer,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def keylog_dirs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the private directories the hand-off creates (the real mkdtemp
    still creates them)."""
    made: list[str] = []
    real = tempfile.mkdtemp

    def recording(*args: object, **kwargs: object) -> str:
        path = real(*args, **kwargs)  # type: ignore[call-overload]
        if os.path.basename(path).startswith("skmsg-tls-"):
            made.append(path)
        return str(path)

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    return made


async def handoff_vs_trio(
    ours: str, sctx: ssl.SSLContext, cctx: ssl.SSLContext, *, watch: ssl.SSLContext | None = None,
    check_between: list[str] | None = None,
) -> tuple[TlsHandoff, str]:
    """One hand-off against trio.SSLStream with an echo of PAYLOAD_SMALL.
    ``check_between`` (the key log dirs): at every await of the hand-off, the
    context ``watch`` has its own key log setting back and no key file exists."""
    async with tcp_pair() as (client_sock, server_sock):
        original = watch.keylog_filename if watch is not None else None
        mine, ctx = (client_sock, cctx) if ours == "client" else (server_sock, sctx)

        def check() -> None:
            if watch is not None:
                assert watch.keylog_filename == original
            for d in check_between or ():
                assert os.listdir(d) == []

        async def send_all(data: bytes) -> None:
            check()
            await mine.send_all(data)

        async def receive_some() -> bytes:
            check()
            return await mine.receive_some()

        async with trio.open_nursery() as nursery:
            if ours == "client":
                peer = trio.SSLStream(server_sock, sctx, server_side=True)
            else:
                peer = trio.SSLStream(client_sock, cctx, server_hostname="localhost")
            nursery.start_soon(trio_echo_peer, peer)
            ho = await tls_handoff(
                send_all, receive_some, ctx, server_side=ours == "server",
                server_hostname="localhost" if ours == "client" else None,
            )
            ex = await records_exchange(mine, ho, PAYLOAD_SMALL, key_update=False)
            await mine.aclose()
        return ho, ex.echoed_sha256


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_key_log_is_private_short_lived_and_context_restored(
    pki: Pki, keylog_dirs: list[str], ours: str, version: ssl.TLSVersion
) -> None:
    sctx = server_context(pki, version, tickets=True)
    cctx = client_context(pki, version)
    watch = cctx if ours == "client" else sctx
    ho, digest = await handoff_vs_trio(ours, sctx, cctx, watch=watch, check_between=keylog_dirs)
    assert digest == sha256(PAYLOAD_SMALL)
    assert ho.ssl_object.version() == version.name.replace("_", ".")
    assert len(keylog_dirs) == 1
    assert not os.path.exists(keylog_dirs[0])  # removed at the end
    assert watch.keylog_filename is None
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        assert keylog_dirs[0].startswith("/dev/shm/")


async def test_private_dir_mode(keylog_dirs: list[str], pki: Pki) -> None:
    """The directory is 0700 while it exists: checked from inside the handshake
    (the server's SNI callback runs in the middle of it)."""
    modes: list[int] = []
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=False)

    def sni(obj: object, name: str | None, ctx: ssl.SSLContext) -> None:
        modes.extend(stat.S_IMODE(os.stat(d).st_mode) for d in keylog_dirs)

    sctx.sni_callback = sni
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
    await handoff_vs_trio("server", sctx, cctx)
    assert modes == [0o700]
    assert sctx.sni_callback is sni


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_a_configured_key_log_keeps_working(
    pki: Pki, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """SSLKEYLOGFILE-style logging survives: the context points at the user's
    file again afterwards and that file got this connection's secrets."""
    user_log = tmp_path / "user-keylog.txt"
    sctx = server_context(pki, version, tickets=False)
    cctx = client_context(pki, version)
    cctx.keylog_filename = str(user_log)
    ho, _ = await handoff_vs_trio("client", sctx, cctx, watch=cctx)
    assert cctx.keylog_filename == str(user_log)
    text = user_log.read_text()
    if version == ssl.TLSVersion.TLSv1_3:
        assert ho.tx_secret is not None
        assert "CLIENT_TRAFFIC_SECRET_0 " in text
        assert ho.tx_secret.hex() in text.lower()
    else:
        assert "CLIENT_RANDOM " in text
    # and the context still logs by itself after the hand-off
    before = text.count("\n")
    await handoff_vs_trio("server", sctx, cctx)  # the trio client uses cctx directly
    assert user_log.read_text().count("\n") > before


async def test_concurrent_handoffs_on_one_context(pki: Pki) -> None:
    """Eight client and eight server hand-offs at once, all on two contexts."""
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=True)
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
    results: list[tuple[TlsHandoff, str]] = []

    async def one(ours: str) -> None:
        results.append(await handoff_vs_trio(ours, sctx, cctx))

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(one, "client" if i % 2 else "server")
    assert [d for _, d in results] == [sha256(PAYLOAD_SMALL)] * 16
    secrets = {ho.tx_secret for ho, _ in results}
    assert len(secrets) == 16  # every connection got its own keys
    assert sctx.keylog_filename is None and cctx.keylog_filename is None


async def test_sni_callback_switching_context(pki: Pki, tmp_path: Path) -> None:
    """A server context whose SNI callback moves the connection to another
    context (the usual multi-certificate server): the keys are found, both
    contexts are left as they were."""
    wrong = pki.ca.issue_cert("other.example")
    front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    wrong.configure_cert(front)
    back = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=True)
    back_log = tmp_path / "back.log"
    back.keylog_filename = str(back_log)
    switched: list[str | None] = []

    def pick(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        switched.append(name)
        obj.context = back

    front.sni_callback = pick
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
    ho, digest = await handoff_vs_trio("server", front, cctx)
    assert switched == ["localhost"]
    assert digest == sha256(PAYLOAD_SMALL)
    assert ho.tx.seq == 2  # the tickets were sealed under back's settings
    assert front.sni_callback is pick and front.keylog_filename is None
    assert back.keylog_filename == str(back_log)
    assert ho.rx_secret is not None and ho.rx_secret.hex() in back_log.read_text().lower()


async def test_unconsumed_bytes_are_handed_over(pki: Pki) -> None:
    """The client's Finished and its first application record in one segment:
    OpenSSL reads only the Finished, the record is handed over and opens at
    rx seq 0."""
    async with tcp_pair() as (client_sock, server_sock):
        cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
        sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=False)
        handoffs: list[TlsHandoff] = []

        async def manual_client() -> None:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = cctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await client_sock.send_all(outgoing.read())
                    incoming.write(await client_sock.receive_some())
            obj.write(b"right behind the Finished")
            await client_sock.send_all(outgoing.read())  # Finished + data, one write

        async with trio.open_nursery() as nursery:
            nursery.start_soon(manual_client)
            handoffs.append(
                await tls_handoff(server_sock.send_all, server_sock.receive_some, sctx,
                                  server_side=True)
            )
        ho = handoffs[0]
        assert ho.unconsumed[:3] == b"\x17\x03\x03"
        opener = RecordOpener(ho.rx)
        opener.feed(ho.unconsumed)
        assert opener.next_record() == (23, b"right behind the Finished")
        assert opener.buffered == 0


async def test_tls12_unconsumed_after_server_finished(pki: Pki) -> None:
    """TLS 1.2: the server's Finished and its first data in one segment reach
    our client; the data record is handed over, at rx seq 1."""
    async with tcp_pair() as (client_sock, server_sock):
        cctx = client_context(pki, ssl.TLSVersion.TLSv1_2)
        sctx = server_context(pki, ssl.TLSVersion.TLSv1_2, tickets=True)
        handoffs: list[TlsHandoff] = []

        async def manual_server() -> None:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = sctx.wrap_bio(incoming, outgoing, server_side=True)
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if outgoing.pending:
                        await server_sock.send_all(outgoing.read())
                    incoming.write(await server_sock.receive_some())
            obj.write(b"server speaks first")
            await server_sock.send_all(outgoing.read())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(manual_server)
            handoffs.append(
                await tls_handoff(client_sock.send_all, client_sock.receive_some, cctx,
                                  server_side=False, server_hostname="localhost")
            )
        ho = handoffs[0]
        assert ho.version == TLS_1_2_VERSION and ho.rx.seq == 1
        opener = RecordOpener(ho.rx)
        opener.feed(ho.unconsumed)
        assert opener.next_record() == (23, b"server speaks first")


# --- failures --------------------------------------------------------------------


async def test_certificate_failure_is_the_ssl_error_and_the_peer_gets_the_alert(
    pki: Pki, keylog_dirs: list[str]
) -> None:
    async with tcp_pair() as (client_sock, server_sock):
        sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=False)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        trustme.CA().configure_trust(cctx)  # some other CA
        peer_errors: list[BaseException] = []

        async def peer() -> None:
            stream = trio.SSLStream(server_sock, sctx, server_side=True)
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as exc:
                peer_errors.append(exc.__cause__ or exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            with pytest.raises(ssl.SSLCertVerificationError) as exc:
                await tls_handoff(client_sock.send_all, client_sock.receive_some, cctx,
                                  server_side=False, server_hostname="localhost")
            await client_sock.aclose()
        assert exc.value.verify_code == 20  # unable to get local issuer certificate
        assert len(peer_errors) == 1 and "UNKNOWN_CA" in str(peer_errors[0]).upper()
        assert cctx.keylog_filename is None
        assert keylog_dirs and not any(os.path.exists(d) for d in keylog_dirs)


async def test_missing_client_certificate_on_our_server(pki: Pki) -> None:
    async with tcp_pair() as (client_sock, server_sock):
        sctx = server_context(pki, ssl.TLSVersion.TLSv1_2, tickets=False)
        sctx.verify_mode = ssl.CERT_REQUIRED
        pki.ca.configure_trust(sctx)
        cctx = client_context(pki, ssl.TLSVersion.TLSv1_2)
        async with trio.open_nursery() as nursery:
            peer = trio.SSLStream(client_sock, cctx, server_hostname="localhost")

            async def run_peer() -> None:
                with pytest.raises(trio.BrokenResourceError):
                    await peer.do_handshake()

            nursery.start_soon(run_peer)
            with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
                await tls_handoff(server_sock.send_all, server_sock.receive_some, sctx,
                                  server_side=True)
            await server_sock.aclose()


async def test_eof_during_handshake_is_ssl_eof_error(pki: Pki, keylog_dirs: list[str]) -> None:
    async with tcp_pair() as (client_sock, server_sock):
        cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)

        async def hang_up() -> None:
            await server_sock.receive_some()  # the ClientHello
            await server_sock.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_up)
            with pytest.raises(ssl.SSLEOFError):
                await tls_handoff(client_sock.send_all, client_sock.receive_some, cctx,
                                  server_side=False, server_hostname="localhost")
        assert not any(os.path.exists(d) for d in keylog_dirs)


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_unsupported_suite_is_refused_by_name(pki: Pki, ours: str) -> None:
    suite = "ECDHE-ECDSA-AES128-SHA256"  # CBC + HMAC: no kTLS-style record layer
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_2, tickets=False, ciphers=suite)
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_2, ciphers=suite)
    async with tcp_pair() as (client_sock, server_sock):
        mine, ctx = (client_sock, cctx) if ours == "client" else (server_sock, sctx)
        peer_saw: list[bytes] = []
        async with trio.open_nursery() as nursery:
            if ours == "client":
                peer = trio.SSLStream(server_sock, sctx, server_side=True)
            else:
                peer = trio.SSLStream(client_sock, cctx, server_hostname="localhost")

            async def run_peer() -> None:
                await peer.do_handshake()
                peer_saw.append(await peer.receive_some())  # our close_notify: EOF

            nursery.start_soon(run_peer)
            with pytest.raises(TlsHandoffError, match=suite) as exc:
                await tls_handoff(mine.send_all, mine.receive_some, ctx,
                                  server_side=ours == "server",
                                  server_hostname="localhost" if ours == "client" else None)
            assert exc.value.errno == errno.EPROTONOSUPPORT
        await mine.aclose()
        assert peer_saw == [b""]


async def test_old_version_is_refused_by_name(pki: Pki) -> None:
    """TLS 1.1 (possible at OpenSSL security level 0): refused after the
    handshake, naming the version and the suite."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.cert.configure_cert(sctx)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki.ca.configure_trust(cctx)
    for ctx in (sctx, cctx):
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.warns(DeprecationWarning):
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    async with tcp_pair() as (client_sock, server_sock), trio.open_nursery() as nursery:
        peer = trio.SSLStream(server_sock, sctx, server_side=True)
        nursery.start_soon(peer.do_handshake)
        with pytest.raises(TlsHandoffError, match=r"TLSv1\.1 \(ECDHE-ECDSA-AES256-SHA\)") as exc:
            await tls_handoff(client_sock.send_all, client_sock.receive_some, cctx,
                              server_side=False, server_hostname="localhost")
        assert exc.value.errno == errno.EPROTONOSUPPORT


@pytest.mark.parametrize("ours", ["client", "server"])
async def test_hello_retry_request(pki: Pki, ours: str) -> None:
    """A server that accepts only secp384r1 makes OpenSSL's client (which sends
    an x25519 key share) retry: two ClientHellos, the same client random, the
    keys still found and the records still flow."""
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=True)
    sctx.set_ecdh_curve("secp384r1")
    cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
    client_flights: list[bytes] = []
    async with tcp_pair() as (client_sock, server_sock), trio.open_nursery() as nursery:
        if ours == "client":
            peer = trio.SSLStream(server_sock, sctx, server_side=True)
            mine, ctx = client_sock, cctx

            async def send_all(data: bytes) -> None:
                client_flights.append(data)
                await mine.send_all(data)

            async def receive_some() -> bytes:
                return await mine.receive_some()

        else:
            peer = trio.SSLStream(client_sock, cctx, server_hostname="localhost")
            mine, ctx = server_sock, sctx

            async def send_all(data: bytes) -> None:
                await mine.send_all(data)

            async def receive_some() -> bytes:
                data = await mine.receive_some()
                client_flights.append(data)
                return data

        nursery.start_soon(trio_echo_peer, peer)
        ho = await tls_handoff(send_all, receive_some, ctx, server_side=ours == "server",
                               server_hostname="localhost" if ours == "client" else None)
        ex = await records_exchange(mine, ho, PAYLOAD_SMALL, key_update=True)
        await mine.aclose()
    stream = b"".join(client_flights)
    hellos = []
    pos = 0
    while pos + 5 <= len(stream):
        end = pos + 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
        if stream[pos] == 22 and stream[pos + 5] == 1:  # plaintext ClientHello
            hellos.append(stream[pos + 11 : pos + 43])  # its random
        pos = end
    assert len(hellos) == 2 and hellos[0] == hellos[1]
    assert ex.echoed_sha256 == sha256(PAYLOAD_SMALL)
    assert ex.key_updates_received == 1


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("ours", ["client", "server"])
async def test_client_certificates(pki: Pki, ours: str, version: ssl.TLSVersion) -> None:
    """Mutual TLS: the client's Certificate/CertificateVerify flight under the
    handshake key; our server sees the peer certificate on ssl_object."""
    sctx = server_context(pki, version, tickets=True)
    sctx.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(sctx)
    cctx = client_context(pki, version)
    pki.ca.issue_cert("client.example").configure_cert(cctx)
    ho, digest = await handoff_vs_trio(ours, sctx, cctx)
    assert digest == sha256(PAYLOAD_SMALL)
    if ours == "server":
        assert ho.ssl_object.getpeercert()["subjectAltName"] == (("DNS", "client.example"),)
