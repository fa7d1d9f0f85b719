"""Fatal alerts and refused renegotiation, seen by real OpenSSL peers.

A record corrupted on the wire (by a man-in-the-middle relay in the test)
fails receiving and is answered with the fatal alert RFC 8446 §6.2 names for
it, sealed under our current TX keys: ``openssl s_server -msg`` / ``s_client
-msg`` print it as they decrypt it. A TLS 1.2 renegotiation (``s_client``'s
``R``, ``s_server``'s ``r``) is answered with the warning ``no_renegotiation``;
OpenSSL then aborts its own renegotiation with ``handshake_failure``, which
ends our receiving.
"""

from __future__ import annotations

import errno
import ssl
from pathlib import Path

import pytest
import trio

import skmsg_tls as tls
from skmsg_core.testing import aclose_all

from ._cli import (
    Mutation,
    alert_line,
    connect,
    flip_body_byte,
    one_connection,
    receive_until,
    record_relay,
    s_client,
    s_server,
    with_length,
    with_type,
    with_version,
)
from ._peers import Pki, client_context, make_pki, server_context

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def flag(version: str) -> str:
    return f"-tls{version.replace('.', '_')}"


# (what the relay does to the next record from OpenSSL, the TLS version, the
# errno our receive fails with, the alert OpenSSL reads from us)
CORRUPTIONS: list[tuple[str, Mutation, str, int, str]] = [
    ("flipped-bit", flip_body_byte, "1.3", errno.EBADMSG, "bad_record_mac"),
    ("flipped-bit", flip_body_byte, "1.2", errno.EBADMSG, "bad_record_mac"),
    ("too-long", with_length(0x4800), "1.3", errno.EMSGSIZE, "record_overflow"),
    ("too-long", with_length(0x4800), "1.2", errno.EMSGSIZE, "record_overflow"),
    ("outer-type-22", with_type(22), "1.3", errno.EINVAL, "unexpected_message"),
    ("content-type-0", with_type(0), "1.2", errno.EINVAL, "unexpected_message"),
    ("version-0x0302", with_version(0x0302), "1.3", errno.EINVAL, "decode_error"),
    ("version-0x0302", with_version(0x0302), "1.2", errno.EINVAL, "protocol_version"),
]


@pytest.mark.parametrize(
    ("mutation", "version", "err", "alert"),
    [c[1:] for c in CORRUPTIONS],
    ids=[f"{c[0]}-{c[2]}" for c in CORRUPTIONS],
)
async def test_a_corrupted_record_from_s_server_is_answered_with_its_fatal_alert(
    pki: Pki, mutation: Mutation, version: str, err: int, alert: str
) -> None:
    async with s_server(pki, flag(version), "-msg") as (server, port), record_relay(port) as relay:
        stream = await connect(relay.port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(
                    stream, client_context(pki, VERSIONS[version]), server_hostname="localhost"
                )
                await server.send(b"clean\n")
                await receive_until(stream, b"clean\n")  # tickets (TLS 1.3) came before
                relay.arm("downstream", mutation)
                await server.send(b"corrupted on the way\n")
                with pytest.raises(trio.BrokenResourceError) as info:
                    await receive_until(stream, b"corrupted")
                cause = info.value.__cause__
                assert isinstance(cause, tls.TlsRxError) and cause.errno == err, cause
                await server.wait_for(alert_line("<<<", version, "fatal", alert))
                await server.wait()  # s_server ends the connection and exits
            assert "downstream" in relay.mutated
            # sending has ended; the error names the alert we sent
            with pytest.raises(trio.BrokenResourceError, match=alert) as sent:
                await stream.send_all(b"after the alert")
            assert sent.value.__cause__ is cause
            assert t.statistics().tx_alerts == 1 and t.statistics().tx_control_records == 1
        finally:
            await aclose_all([stream])
    assert server.count(r"^<<< .*Alert") == 1  # one alert, and no close_notify after it


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_a_corrupted_record_from_s_client_is_bad_record_mac(
    pki: Pki, version: str
) -> None:
    sctx = server_context(pki, VERSIONS[version], tickets=True)
    async with (
        one_connection() as (port, accepted),
        record_relay(port) as relay,
        s_client(pki, relay.port, flag(version), "-msg") as client,
    ):
        with trio.fail_after(10):
            stream = await accepted.receive()
            try:
                await tls.start_tls(stream, sctx, server_side=True)
                await client.send(b"clean\n")
                await receive_until(stream, b"clean\n")
                relay.arm("upstream", flip_body_byte)
                await client.send(b"corrupted\n")
                with pytest.raises(trio.BrokenResourceError) as info:
                    await receive_until(stream, b"corrupted")
                cause = info.value.__cause__
                assert isinstance(cause, tls.TlsRxError)
                assert cause.errno == errno.EBADMSG
                await client.wait_for(alert_line("<<<", version, "fatal", "bad_record_mac"))
            finally:
                await aclose_all([stream])


async def test_the_alert_goes_under_the_current_keys_after_a_key_update(pki: Pki) -> None:
    """After our KeyUpdate the alert is sealed with the next key: s_server
    reads it (it could not under the old one)."""
    async with s_server(pki, "-tls1_3", "-msg") as (server, port), record_relay(port) as relay:
        stream = await connect(relay.port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(
                    stream, client_context(pki, VERSIONS["1.3"]), server_hostname="localhost"
                )
                await t.update_keys(request_peer=False)
                await stream.send_all(b"under the next key\n")
                await server.wait_for("^under the next key$")
                relay.arm("downstream", flip_body_byte)
                await server.send(b"x\n")
                with pytest.raises(trio.BrokenResourceError):
                    await receive_until(stream, b"x")
                await server.wait_for(alert_line("<<<", "1.3", "fatal", "bad_record_mac"))
        finally:
            await aclose_all([stream])


async def test_s_client_renegotiation_is_refused_with_no_renegotiation(pki: Pki) -> None:
    sctx = server_context(pki, VERSIONS["1.2"], tickets=True)
    async with (
        one_connection() as (port, accepted),
        s_client(pki, port, "-tls1_2", "-msg") as client,
    ):
        with trio.fail_after(10):
            stream = await accepted.receive()
            try:
                t = await tls.start_tls(stream, sctx, server_side=True)
                await client.send(b"before\n")
                await receive_until(stream, b"before\n")
                await client.send(b"R\n")  # s_client: SSL_renegotiate
                await client.wait_for("^RENEGOTIATING$")
                # s_client gets our warning and aborts with a fatal alert
                with pytest.raises(trio.BrokenResourceError, match="handshake_failure") as info:
                    await receive_until(stream, b"never")
                cause = info.value.__cause__
                assert isinstance(cause, tls.TlsRxError) and cause.errno == errno.ECONNRESET
                await client.wait_for(alert_line("<<<", "1.2", "warning", "no_renegotiation"))
                await client.wait_for(alert_line(">>>", "1.2", "fatal", "handshake_failure"))
                assert t._ulp.rx.renegotiations_refused == 1 and t.statistics().tx_alerts == 1
                hello = t.receive_control_nowait()  # the ClientHello, as received
                assert (hello.content_type, hello.data[0]) == (22, 1)
                assert t.receive_control_nowait().data == b"\x02\x28"
            finally:
                await aclose_all([stream])
    assert client.count(r"^>>> TLS 1.2, Handshake .*ServerHello") == 0  # none from us


async def test_s_server_hello_request_is_refused_with_no_renegotiation(pki: Pki) -> None:
    async with s_server(pki, "-tls1_2", "-msg") as (server, port):
        stream = await connect(port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(
                    stream, client_context(pki, VERSIONS["1.2"]), server_hostname="localhost"
                )
                await server.send(b"r\n")  # s_server: SSL_renegotiate, a HelloRequest
                await server.wait_for(r"^>>> TLS 1.2, Handshake \[length 0004\], HelloRequest$")
                with pytest.raises(trio.BrokenResourceError, match="handshake_failure"):
                    await receive_until(stream, b"never")
                await server.wait_for(alert_line("<<<", "1.2", "warning", "no_renegotiation"))
                await server.wait_for(alert_line(">>>", "1.2", "fatal", "handshake_failure"))
                assert t._ulp.rx.renegotiations_refused == 1
        finally:
            await aclose_all([stream])
    assert server.count(r"^<<< .*ClientHello") == 1  # only the first handshake's
