"""Strict TLS after the hand-off, record by record, on real loopback with the
test as the raw peer (it seals what it sends and opens our replies): every
fault in the peer's bytes fails receiving with an error naming it and is
answered with its fatal alert, once, under the current keys; sending ends.
A TLS 1.2 renegotiation is answered with the warning ``no_renegotiation``,
and the stream goes on. A TCP EOF without close_notify is a truncation."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from trio.testing import wait_all_tasks_blocked

import skmsg_tls as tls
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair

from ._ulp_helpers import Keys, make_keys, read_exactly, read_records

HANDSHAKE = tls.TLS_RECORD_TYPE_HANDSHAKE
ALERT = tls.TLS_RECORD_TYPE_ALERT
CLIENT_HELLO = b"\x01\x00\x00\x06\x03\x03abcd"  # a (short) ClientHello message
HELLO_REQUEST = b"\x00\x00\x00\x00"
TICKET = b"\x04\x00\x00\x04abcd"  # NewSessionTicket-shaped


class Peer:
    """The raw end of a pair whose other end (``ours``) has the TLS ULP."""

    def __init__(self, raw: SkStream, ours: SkStream, t: tls.TlsSocket, keys: Keys) -> None:
        self.raw, self.ours, self.t, self.keys = raw, ours, t, keys
        self.sealer = tls.RecordSealer(keys.a2b)
        self.opener = tls.RecordOpener(keys.b2a)

    def nothing_written_yet(self) -> bool:
        """No byte from ours waits at the peer."""
        assert self.raw._raw is not None
        try:
            self.raw._raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        return False

    async def send(self, *records: tuple[int, bytes]) -> None:
        await self.raw.send_all(b"".join(self.sealer.seal(d, ct) for ct, d in records))

    async def records(self, n: int) -> list[tuple[int, bytes]]:
        with trio.fail_after(5):
            return await read_records(self.raw, self.opener, n)

    async def nothing_more(self) -> None:
        """The TCP stream from ours ends with no further record."""
        with trio.fail_after(5):
            while True:
                chunk = await self.raw.receive_some()
                if not chunk:
                    break
                self.opener.feed(chunk)
        assert self.opener.next_record() is None and not self.opener.has_partial()


@pytest.fixture(params=["1.3", "1.2"])
def version(request: pytest.FixtureRequest) -> int:
    return tls.TLS_1_3_VERSION if request.param == "1.3" else tls.TLS_1_2_VERSION


async def make_peer(
    pair: tuple[SkStream, SkStream], version: int, **kwargs: Any
) -> Peer:
    a, b = pair
    keys = make_keys(version)
    t = await tls.enable_tls(
        b, keys.b2a, keys.a2b, tx_secret=keys.b2a_secret, rx_secret=keys.a2b_secret, **kwargs
    )
    return Peer(a, b, t, keys)


async def fails_with(peer: Peer, err: int, alert: int, match: str) -> tls.TlsRxError:
    """``receive_some`` fails with ``err`` (the message matching ``match``),
    the peer reads exactly the fatal ``alert`` from us, and we send no more."""
    with pytest.raises(trio.BrokenResourceError, match=match) as info:
        with trio.fail_after(5):
            while await peer.ours.receive_some():
                pass
    cause = info.value.__cause__
    assert isinstance(cause, tls.TlsRxError) and cause.errno == err, cause
    assert cause.alert == alert
    assert await peer.records(1) == [(ALERT, bytes((2, alert)))]
    with pytest.raises(trio.BrokenResourceError, match="can't send after a fatal"):
        await peer.ours.send_all(b"no more")
    with pytest.raises(trio.BrokenResourceError):
        await peer.t.send_control(ALERT, b"\x01\x5a")
    await peer.ours.send_eof()  # no close_notify after a fatal alert
    await peer.ours.aclose()
    await peer.nothing_more()
    return cause


async def test_a_malformed_alert_is_decode_error(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version)
    await peer.send((23, b"ok"), (ALERT, b"\x01\x00\x00"))
    assert await read_exactly(peer.ours, 2) == b"ok"
    await fails_with(peer, errno.EBADMSG, 50, "malformed alert record of 3 bytes")


async def test_an_unknown_alert_level_is_illegal_parameter(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version)
    await peer.send((ALERT, b"\x07\x00"))
    await fails_with(peer, errno.EBADMSG, 47, "alert level 7")


@pytest.mark.parametrize("ctype", [20, 24, 99])
async def test_a_content_type_not_allowed_after_the_handshake_is_unexpected_message(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int, ctype: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version)
    await peer.send((23, b"data first"), (ctype, b"\x01"))
    assert await read_exactly(peer.ours, 10) == b"data first"
    await fails_with(
        peer, errno.EPROTO, 10, f"unexpected message: a record of content type {ctype}"
    )


async def test_tls13_a_record_of_zeros_only_is_unexpected_message(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    """RFC 8446 §5.4: a plaintext with no non-zero byte has no content type."""
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION)
    info = peer.keys.a2b
    header = b"\x17\x03\x03" + (5 + 16).to_bytes(2, "big")
    nonce = int.from_bytes(info.salt + info.iv, "big").to_bytes(12, "big")  # seq 0
    await peer.raw.send_all(header + AESGCM(info.key).encrypt(nonce, bytes(5), header))
    await fails_with(peer, errno.EBADMSG, 10, "all zeros")


async def test_a_data_record_inside_a_handshake_message_is_unexpected_message(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version)
    first = (TICKET if version == tls.TLS_1_3_VERSION else CLIENT_HELLO)[:5]
    await peer.send((HANDSHAKE, first), (23, b"between"))
    await fails_with(peer, errno.EPROTO, 10, "a record of content type 23 inside a")


async def test_a_handshake_message_split_over_records_is_fine(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION)
    await peer.send((HANDSHAKE, TICKET[:3]), (HANDSHAKE, TICKET[3:]), (23, b"after"))
    assert await read_exactly(peer.ours, 5) == b"after"
    assert peer.t._ulp.rx_error is None


async def test_tls13_an_empty_handshake_record_is_unexpected_message(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION)
    await peer.send((HANDSHAKE, b""))
    await fails_with(peer, errno.EPROTO, 10, "empty handshake record")


async def test_tls13_a_new_session_ticket_to_a_server_is_unexpected_message(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION, server_side=True)
    await peer.send((HANDSHAKE, TICKET))
    await fails_with(peer, errno.EPROTO, 10, "NewSessionTicket after the handshake to a server")


@pytest.mark.parametrize("side", [False, None])
async def test_tls13_a_new_session_ticket_to_a_client_is_fine(
    tcp_stream_pair: tuple[SkStream, SkStream], side: bool | None
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION, server_side=side)
    await peer.send((HANDSHAKE, TICKET), (23, b"go on"))
    assert await read_exactly(peer.ours, 5) == b"go on"
    assert peer.t.receive_control_nowait() == tls.ControlRecord(22, TICKET)


@pytest.mark.parametrize(
    ("message", "version_", "err", "alert", "match"),
    [
        (b"\x0d\x00\x00\x00", "1.3", errno.EPROTO, 10, "CertificateRequest after the handshake"),
        (b"\x14\x00\x00\x01\x00", "1.3", errno.EPROTO, 10, "Finished after the handshake"),
        (b"\x18\x00\x00\x01\x02", "1.3", errno.EPROTO, 47, "request_update 2"),
        (b"\x18\x00\x00\x02\x00\x00", "1.3", errno.EPROTO, 50, "malformed KeyUpdate of 2"),
        (b"\x18\x00\x00\x01\x00" + TICKET, "1.3", errno.EPROTO, 10, "must end its record"),
        (b"\x04\x00\x00\x00", "1.2", errno.EPROTO, 10, "NewSessionTicket after the handshake"),
        (HELLO_REQUEST[:3] + b"\x01x", "1.2", errno.EBADMSG, 50, "HelloRequest of 1 bytes"),
        (b"\x02\x00\x00\x00", "1.2", errno.EPROTO, 10, "ServerHello after the handshake"),
        (b"\x63\x00\x00\x00", "1.2", errno.EPROTO, 10, "handshake message 99"),
    ],
    ids=[
        "1.3-certificate-request", "1.3-finished", "1.3-key-update-2", "1.3-key-update-long",
        "1.3-key-update-not-last", "1.2-ticket", "1.2-hello-request-body", "1.2-server-hello",
        "1.2-unknown",
    ],
)
async def test_bad_post_handshake_messages(  # noqa: PLR0917 (the parameters of one case)
    tcp_stream_pair: tuple[SkStream, SkStream],
    message: bytes, version_: str, err: int, alert: int, match: str,
) -> None:
    v = tls.TLS_1_3_VERSION if version_ == "1.3" else tls.TLS_1_2_VERSION
    peer = await make_peer(tcp_stream_pair, v)
    await peer.send((HANDSHAKE, message))
    await fails_with(peer, err, alert, match)


async def test_tls12_renegotiation_to_a_client_is_unexpected_message(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_2_VERSION, server_side=False)
    await peer.send((HANDSHAKE, CLIENT_HELLO))
    await fails_with(peer, errno.EPROTO, 10, "ClientHello after the handshake to a client")


@pytest.mark.parametrize(
    ("side", "message"),
    [(True, CLIENT_HELLO), (None, CLIENT_HELLO), (False, HELLO_REQUEST), (None, HELLO_REQUEST)],
    ids=["server-client-hello", "unknown-client-hello", "client-hello-request",
         "unknown-hello-request"],
)
async def test_tls12_renegotiation_is_refused_and_the_stream_goes_on(
    tcp_stream_pair: tuple[SkStream, SkStream], side: bool | None, message: bytes
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_2_VERSION, server_side=side)
    await peer.send((23, b"before "), (HANDSHAKE, message), (23, b"after"))
    assert await read_exactly(peer.ours, 12) == b"before after"
    assert await peer.records(1) == [(ALERT, b"\x01\x64")]  # warning no_renegotiation
    await peer.ours.send_all(b"still sending")
    assert await peer.records(1) == [(23, b"still sending")]
    assert peer.t._ulp.rx.renegotiations_refused == 1
    assert peer.t.statistics().tx_alerts == 1
    assert peer.t.receive_control_nowait() == tls.ControlRecord(22, message)


async def test_the_warning_waits_for_a_write_in_progress(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    """The reader owes no_renegotiation while another task's write holds the
    stream: it waits (nothing cuts into the write), then sends it."""
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_2_VERSION, server_side=True)
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await peer.ours.receive_some())

    await peer.ours._write_lock.acquire()  # a write in progress
    async with trio.open_nursery() as nursery:
        await peer.send((HANDSHAKE, CLIENT_HELLO), (23, b"data"))
        nursery.start_soon(reader)
        await wait_all_tasks_blocked(0.05)
        assert got == []  # the reader waits to write the warning
        assert peer.nothing_written_yet()
        peer.ours._write_lock.release()
    assert got == [b"data"]
    assert await peer.records(1) == [(ALERT, b"\x01\x64")]


async def test_a_fatal_alert_owed_during_a_write_goes_out_when_the_stream_closes(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION)
    bad = bytearray(peer.sealer.seal(b"tampered"))
    bad[-1] ^= 1
    await peer.ours._write_lock.acquire()  # a write in progress
    await peer.raw.send_all(bytes(bad))
    with pytest.raises(trio.BrokenResourceError, match="authentication failed"):
        with trio.fail_after(5):
            await peer.ours.receive_some()  # the reader does not wait for the write
    assert peer.nothing_written_yet()
    peer.ours._write_lock.release()
    await peer.ours.aclose()
    assert await peer.records(1) == [(ALERT, b"\x02\x14")]  # fatal bad_record_mac
    await peer.nothing_more()
    assert peer.t.statistics().tx_alerts == 1


async def test_the_peers_fatal_alert_ends_sending_without_an_alert_of_ours(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version)
    await peer.send((ALERT, b"\x02\x28"))
    with pytest.raises(trio.BrokenResourceError, match="handshake_failure"):
        await peer.ours.receive_some()
    with pytest.raises(trio.BrokenResourceError, match="the peer's fatal alert"):
        await peer.ours.send_all(b"x")
    await peer.ours.aclose()
    await peer.nothing_more()  # no alert, no close_notify
    assert peer.t.statistics().tx_alerts == 0


async def test_truncation_is_answered_with_decode_error(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version)
    await peer.send((23, b"all of it?"))
    await peer.raw.send_eof()  # TCP FIN, no close_notify
    assert await read_exactly(peer.ours, 10) == b"all of it?"
    cause = await fails_with(peer, errno.EPROTO, 50, "without close_notify")
    assert isinstance(cause, tls.TlsTruncationError)


async def test_ignore_unexpected_eof_makes_a_bare_eof_clean(
    tcp_stream_pair: tuple[SkStream, SkStream], version: int
) -> None:
    peer = await make_peer(tcp_stream_pair, version, ignore_unexpected_eof=True)
    await peer.send((23, b"all of it"))
    await peer.raw.send_eof()
    assert await read_exactly(peer.ours, 9) == b"all of it"
    assert await peer.ours.receive_some() == b""
    with pytest.raises(trio.EndOfChannel):
        await peer.t.receive_control()
    # the stream may still send: the peer only closed its half
    await peer.ours.send_all(b"reply")
    assert await peer.records(1) == [(23, b"reply")]
    await peer.ours.send_eof()
    assert await peer.records(1) == [(ALERT, b"\x01\x00")]


async def test_eof_inside_a_record_is_an_error_even_when_ignoring_unexpected_eof(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    peer = await make_peer(tcp_stream_pair, tls.TLS_1_3_VERSION, ignore_unexpected_eof=True)
    await peer.raw.send_all(peer.sealer.seal(b"cut short")[:-3])
    await peer.raw.send_eof()
    cause = await fails_with(peer, errno.EPROTO, 50, "inside a record")
    assert isinstance(cause, tls.TlsTruncationError)


async def test_a_clean_close_notify_and_eof() -> None:
    """close_notify then TCP EOF: a clean EOF, nothing sent back but our own
    close_notify when we end."""
    a, b = await tcp_stream_pair()
    try:
        peer = await make_peer((a, b), tls.TLS_1_3_VERSION)
        await peer.send((23, b"bye"), (ALERT, b"\x01\x00"))
        await peer.raw.send_eof()
        assert await read_exactly(peer.ours, 3) == b"bye"
        assert await peer.ours.receive_some() == b""
        await peer.ours.send_eof()
        assert await peer.records(1) == [(ALERT, b"\x01\x00")]
        assert peer.t.statistics().tx_alerts == 0
    finally:
        await aclose_all([a, b])
