"""``TlsSocket``, what users hold: its public names, that none of the stream's
ULP hooks is among them, and that the user paths (``start_tls``,
``enable_tls``, control records, key updates, counters, ``ssl_object``,
``tls_stat``) work through it, against a real OpenSSL peer."""

from __future__ import annotations

import inspect
import ssl

import pytest
import trio
import trustme

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_core.runtime import open_runtime
from skmsg_tcp import SkStream, StreamUlp
from skmsg_tcp.testing import tcp_stream_pair
from skmsg_tls._ulp import TlsUlp

from ._ulp_helpers import enable_both, read_exactly

TIMEOUT = 20
PUBLIC = {
    # what the handshake agreed on
    "stream", "info", "version", "cipher", "version_number", "cipher_type",
    "ssl_object", "record_size_limit",
    # what TLS has beyond bytes
    "receive_control", "receive_control_nowait", "send_control", "update_keys",
    "send_close_notify", "aclose", "statistics",
}
#: The stream's hooks into its ULP, and the ULP's own workings.
INTERNAL = {
    n for n in dir(StreamUlp) if not n.startswith("_") and n != "statistics"
} | {
    "rx", "release", "close_notify_nowait", "active", "strparser", "tx_records",
    "tx_bytes", "tx_alerts", "tickets_received", "ignore_unexpected_eof",
}


def test_the_facades_public_names_are_the_users_api() -> None:
    assert {n for n in dir(tls.TlsSocket) if not n.startswith("_")} == PUBLIC


def test_no_ulp_hook_is_a_public_name_of_the_facade() -> None:
    """``statistics`` is both a hook (``stream.statistics().ulp``) and the
    user's; every other hook is the ULP's only."""
    hooks = {n for n in dir(StreamUlp) if not n.startswith("_")} - {"statistics"}
    assert {"sendmsg", "egress_write", "rx_input", "rx_fill", "take_plain",
            "transport_eof", "ulp_close", "ulp_send_eof", "plain_bytes"} <= hooks
    assert not INTERNAL & PUBLIC
    assert not [n for n in INTERNAL if hasattr(tls.TlsSocket, n)]


def test_every_async_method_documents_raises_and_cancellation() -> None:
    for name in sorted(PUBLIC):
        member = getattr(tls.TlsSocket, name)
        doc = inspect.getdoc(member)
        assert doc, name
        if inspect.iscoroutinefunction(member) and name != "aclose":
            assert "Raises:" in doc and "ancel" in doc, name


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def openssl_pair(
    ca: trustme.CA,
) -> tuple[SkStream, trio.SSLStream[SkStream], tls.TlsSocket]:
    """Our client (start_tls) against an OpenSSL server (trio.SSLStream), TLS 1.3."""
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(sctx)
    sctx.set_alpn_protocols(["h2"])
    cctx = ssl.create_default_context()
    ca.configure_trust(cctx)
    cctx.set_alpn_protocols(["h2"])
    cctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ours, theirs = await tcp_stream_pair()
    peer = trio.SSLStream(theirs, sctx, server_side=True)
    got: list[tls.TlsSocket] = []

    async def client() -> None:
        got.append(await tls.start_tls(ours, cctx, server_hostname="localhost"))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            nursery.start_soon(peer.do_handshake)
    return ours, peer, got[0]


async def test_start_tls_returns_the_facade_with_names_and_numbers(ca: trustme.CA) -> None:
    async with open_runtime():
        stream, peer, t = await openssl_pair(ca)
        assert type(t) is tls.TlsSocket and t.stream is stream
        assert isinstance(stream._ulp, TlsUlp) and stream._ulp is not t  # the hooks' owner
        assert all(hasattr(stream._ulp, n) for n in INTERNAL)
        assert not [n for n in INTERNAL if hasattr(t, n)]
        assert (t.version, t.version_number) == ("TLSv1.3", tls.TLS_1_3_VERSION)
        assert t.cipher == peer.cipher()[0] and t.cipher.startswith("TLS_")
        assert t.cipher_type == tls.cipher_for_suite(t.cipher, tls.TLS_1_3_VERSION)
        assert t.info is stream.sk.tls and t.info.alpn_protocol == "h2"  # type: ignore[attr-defined]
        assert t.ssl_object is not None and t.ssl_object.version() == "TLSv1.3"
        assert t.record_size_limit == tls.TLS_MAX_PAYLOAD_SIZE
        assert repr(t).startswith(f"<TlsSocket TLSv1.3 {t.cipher} on <SkStream ")
        with pytest.raises(AttributeError):
            t.version = "TLSv1.2"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            t.anything_else = 1  # type: ignore[attr-defined]

        with trio.fail_after(TIMEOUT):
            await stream.send_all(b"hello")
            assert await read_exactly(peer, 5) == b"hello"  # type: ignore[arg-type]
            await peer.send_all(b"back")  # OpenSSL's session tickets go first
            assert await read_exactly(stream, 4) == b"back"
            # ... and come as handshake control records (NewSessionTicket, 4)
            rec = await t.receive_control()
            assert (rec.content_type, rec.data[0]) == (tls.TLS_RECORD_TYPE_HANDSHAKE, 4)
            second = t.receive_control_nowait()  # the server's second ticket
            assert (second.content_type, second.data[0]) == (tls.TLS_RECORD_TYPE_HANDSHAKE, 4)
            with pytest.raises(trio.WouldBlock):
                t.receive_control_nowait()
            await t.update_keys()  # KeyUpdate, asking OpenSSL to update too
            await stream.send_all(b"after")
            assert await read_exactly(peer, 5) == b"after"  # type: ignore[arg-type]
            await peer.send_all(b"again")  # under OpenSSL's new key
            assert await read_exactly(stream, 5) == b"again"
        s = t.statistics()
        assert s == stream.statistics().ulp and isinstance(s, tls.TlsStats)
        assert (s.tx_rekeys, s.rx_rekeys, s.tx_bytes, s.rx_bytes) == (1, 1, 10, 9)
        assert s.tickets_received == 2
        assert t.ssl_object.session is not None and t.ssl_object.session.has_ticket

        with trio.fail_after(TIMEOUT):
            await t.send_close_notify()
            assert await peer.receive_some() == b""  # OpenSSL saw a clean close_notify
            with pytest.raises(trio.ClosedResourceError):
                await stream.send_all(b"more")
            await peer.aclose()  # its close_notify: our end of data
            assert await stream.receive_some() == b""
        await t.aclose()
        after = t.statistics()  # readable after close: close_notify each way counted
        assert stream._closed and after.tx_control_records == s.tx_control_records + 1
        assert after.rx_control_records == s.rx_control_records + 1
        await t.aclose()  # idempotent


async def test_enable_tls_control_records_and_the_nowait_form() -> None:
    async with open_runtime():
        a, b = await tcp_stream_pair()
        ta, tb = await enable_both(a, b)
        assert type(ta) is tls.TlsSocket and ta.ssl_object is None
        with pytest.raises(trio.WouldBlock):
            tb.receive_control_nowait()
        with trio.fail_after(TIMEOUT):
            await ta.send_control(tls.TLS_RECORD_TYPE_ALERT, b"\x01\x5a")  # user_canceled
            assert await tb.receive_control() == tls.ControlRecord(21, b"\x01\x5a")
            with pytest.raises(ValueError, match="not a control record type"):
                await ta.send_control(tls.TLS_RECORD_TYPE_DATA, b"x")
            await ta.send_close_notify()  # the alert itself, then the end
            assert await tb.receive_control() == tls.ControlRecord(21, b"\x01\x00")
            with pytest.raises(trio.EndOfChannel):
                await tb.receive_control()
        await ta.aclose()
        await tb.aclose()


async def test_update_keys_on_tls12_is_einval_through_the_facade() -> None:
    from ._ulp_helpers import make_keys

    async with open_runtime():
        a, b = await tcp_stream_pair()
        ta, _ = await enable_both(a, b, make_keys(tls.TLS_1_2_VERSION))
        assert ta.version == "TLSv1.2" and ta.version_number == tls.TLS_1_2_VERSION
        with pytest.raises(OSError, check=lambda e: e.errno == 22):  # EINVAL
            await ta.update_keys()
        await a.aclose()
        await b.aclose()


async def test_tls_stat_counts_the_facades_connections() -> None:
    before = tls.tls_stat()
    async with open_runtime():
        a, b = await tcp_stream_pair()
        await enable_both(a, b)
        now = tls.tls_stat()
        assert now["TlsCurrTxSw"] == before["TlsCurrTxSw"] + 2
        assert now["TlsTxSw"] == before["TlsTxSw"] + 2
        await a.aclose()
        await b.aclose()
    assert tls.tls_stat()["TlsCurrTxSw"] == before["TlsCurrTxSw"]


async def test_the_facade_works_in_a_map_with_programs() -> None:
    """The kernel's order (the map, then TLS): the stream's programs and the
    facade's control records work side by side."""
    smap = sk.SockMap(max_entries=1)
    seen: list[bytes] = []

    def verdict(msg: sk.SkMsg) -> int:
        seen.append(bytes(msg.data))
        return sk.SK_PASS

    smap.attach(verdict, sk.SK_MSG_VERDICT)
    async with open_runtime():
        a, b = await tcp_stream_pair()
        smap.update(0, a)
        ta, tb = await enable_both(a, b)
        with trio.fail_after(TIMEOUT):
            await a.send_all(b"plain")
            await ta.update_keys(request_peer=False)
            await a.send_all(b"after")
            assert await read_exactly(b, 10) == b"plainafter"
        assert seen == [b"plain", b"after"]
        assert tb.statistics().rx_rekeys == 1
        await a.aclose()
        await b.aclose()
