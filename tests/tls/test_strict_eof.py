"""Truncation is an error: a TCP EOF without close_notify fails receiving
(``trio.BrokenResourceError``, as ``trio.SSLStream``), unless the context sets
``ssl.OP_IGNORE_UNEXPECTED_EOF``; a real close_notify stays a clean EOF. Against
``openssl s_server`` / ``s_client`` killed (the kernel closes their sockets,
no TLS said) or quitting properly, and a Python ssl peer whose TCP socket is
closed under it."""

from __future__ import annotations

import errno
import ssl
from functools import partial
from pathlib import Path

import pytest
import trio

import skmsg_tls as tls
from skmsg_core.testing import aclose_all
from skmsg_tcp.testing import tcp_stream_pair

from ._cli import (
    alert_line,
    connect,
    one_connection,
    receive_until,
    s_client,
    s_server,
)
from ._peers import Pki, client_context, make_pki, server_context

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def truncated(exc: BaseException) -> bool:
    cause = exc.__cause__
    return (
        isinstance(cause, tls.TlsTruncationError)
        and cause.errno == errno.EPROTO
        and "without close_notify" in str(cause)
    )


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_a_killed_s_server_is_a_truncation(pki: Pki, version: str) -> None:
    async with s_server(pki, f"-tls{version.replace('.', '_')}", "-msg") as (server, port):
        stream = await connect(port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(
                    stream, client_context(pki, VERSIONS[version]), server_hostname="localhost"
                )
                await stream.send_all(b"before the kill\n")
                await server.wait_for("^before the kill$")
                await server.send(b"from s_server\n")
                assert await receive_until(stream, b"from s_server\n") == b"from s_server\n"
                server.kill()
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some()
            assert truncated(info.value), info.value.__cause__
            # it stays an error, for the control channel too
            with pytest.raises(trio.BrokenResourceError):
                await stream.receive_some()
            with pytest.raises(trio.BrokenResourceError) as ctl:
                while True:  # the session tickets first (TLS 1.3), then the error
                    rec = await t.receive_control()
                    assert (rec.content_type, rec.data[0]) == (22, 4)
            assert truncated(ctl.value)
        finally:
            await aclose_all([stream])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_s_server_quit_command_closes_tcp_first_a_truncation(
    pki: Pki, version: str
) -> None:
    """``Q`` on s_server's input closes the socket before its SSL_shutdown
    (whose close_notify then fails to go out: no ``>>> Alert`` line)."""
    async with s_server(pki, f"-tls{version.replace('.', '_')}", "-msg") as (server, port):
        stream = await connect(port)
        try:
            with trio.fail_after(10):
                await tls.start_tls(
                    stream, client_context(pki, VERSIONS[version]), server_hostname="localhost"
                )
                await stream.send_all(b"ping\n")
                await server.wait_for("^ping$")
                await server.send(b"Q\n")
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some()
                assert truncated(info.value), info.value.__cause__
                await server.wait()
            assert server.count(r"^>>> .*Alert.*close_notify") == 0
        finally:
            await aclose_all([stream])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_s_servers_close_notify_is_a_clean_eof(pki: Pki, version: str) -> None:
    """Our close_notify makes s_server answer with its own and exit: EOF."""
    async with s_server(pki, f"-tls{version.replace('.', '_')}", "-msg") as (server, port):
        stream = await connect(port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(
                    stream, client_context(pki, VERSIONS[version]), server_hostname="localhost"
                )
                await stream.send_all(b"ping\n")
                await server.wait_for("^ping$")
                await stream.send_eof()
                assert await stream.receive_some() == b""
                assert await stream.receive_some() == b""
                with pytest.raises(trio.EndOfChannel):
                    while True:  # tickets first (TLS 1.3), then the close_notify
                        rec = await t.receive_control()
                        assert rec.content_type == 22 or rec.data == b"\x01\x00"
                await server.wait()
            assert server.count(alert_line("<<<", version, "warning", "close_notify")) == 1
            assert server.count(alert_line(">>>", version, "warning", "close_notify")) == 1
        finally:
            await aclose_all([stream])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_with_op_ignore_unexpected_eof_a_bare_eof_is_the_end(
    pki: Pki, version: str
) -> None:
    ctx = client_context(pki, VERSIONS[version])
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    async with s_server(pki, f"-tls{version.replace('.', '_')}") as (server, port):
        stream = await connect(port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(stream, ctx, server_hostname="localhost")
                assert t._ulp.ignore_unexpected_eof
                await server.send(b"last words\n")
                assert await receive_until(stream, b"last words\n") == b"last words\n"
                server.kill()
                assert await stream.receive_some() == b""
                with pytest.raises(trio.EndOfChannel):
                    while True:
                        await t.receive_control()
        finally:
            await aclose_all([stream])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_a_killed_s_client_is_a_truncation_on_our_server(pki: Pki, version: str) -> None:
    sctx = server_context(pki, VERSIONS[version], tickets=True)
    async with (
        one_connection() as (port, accepted),
        s_client(pki, port, f"-tls{version.replace('.', '_')}") as client,
    ):
        with trio.fail_after(10):
            stream = await accepted.receive()
            try:
                await tls.start_tls(stream, sctx, server_side=True)
                await client.send(b"hello from s_client\n")
                await receive_until(stream, b"hello from s_client\n")
                # s_client has read all we sent (else the kill would reset)
                await stream.send_all(b"read this\n")
                await client.wait_for("^read this$")
                client.kill()
                with pytest.raises(trio.BrokenResourceError) as info:
                    await stream.receive_some()
                assert truncated(info.value), info.value.__cause__
            finally:
                await aclose_all([stream])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_s_client_at_end_of_input_sends_close_notify_a_clean_eof(
    pki: Pki, version: str
) -> None:
    sctx = server_context(pki, VERSIONS[version], tickets=True)
    async with (
        one_connection() as (port, accepted),
        s_client(pki, port, f"-tls{version.replace('.', '_')}", "-msg") as client,
    ):
        with trio.fail_after(10):
            stream = await accepted.receive()
            try:
                await tls.start_tls(stream, sctx, server_side=True)
                await client.send(b"bye\n")
                await client.close_stdin()  # s_client: SSL_shutdown at end of input
                assert await receive_until(stream, b"bye\n") == b"bye\n"
                assert await stream.receive_some() == b""
                await client.wait_for(alert_line(">>>", version, "warning", "close_notify"))
            finally:
                await aclose_all([stream])


async def test_python_ssl_peer_closing_tcp_under_tls_is_a_truncation(pki: Pki) -> None:
    """trio.SSLStream as the peer: its TCP stream closed without its
    close_notify; then the same with ours as the peer of trio.SSLStream, which
    says the same (trio.BrokenResourceError)."""
    for ours in ("client", "server"):
        a, b = await tcp_stream_pair()
        mine, theirs = (a, b) if ours == "client" else (b, a)
        sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=False)
        cctx = client_context(pki, ssl.TLSVersion.TLSv1_3)
        peer = trio.SSLStream(
            theirs,
            cctx if ours == "server" else sctx,
            server_side=ours == "client",
            server_hostname="localhost" if ours == "server" else None,
        )
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    if ours == "client":
                        nursery.start_soon(
                            partial(tls.start_tls, mine, cctx, server_hostname="localhost")
                        )
                    else:
                        nursery.start_soon(partial(tls.start_tls, mine, sctx, server_side=True))
                    nursery.start_soon(peer.do_handshake)
                await peer.send_all(b"data")
                assert await mine.receive_some() == b"data"
                await theirs.aclose()  # TCP FIN, no close_notify
                with pytest.raises(trio.BrokenResourceError) as info:
                    await mine.receive_some()
                assert truncated(info.value)
        finally:
            await aclose_all([mine, theirs])
    # and trio.SSLStream judges our bare TCP close the same way
    a, b = await tcp_stream_pair()
    sctx = server_context(pki, ssl.TLSVersion.TLSv1_3, tickets=False)
    peer = trio.SSLStream(b, client_context(pki, ssl.TLSVersion.TLSv1_3),
                          server_hostname="localhost")
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(tls.start_tls, a, sctx, server_side=True))
                nursery.start_soon(peer.do_handshake)
            a.socket.close()  # not aclose: no close_notify
            with pytest.raises(trio.BrokenResourceError):
                await peer.receive_some()
    finally:
        await aclose_all([a, peer])
