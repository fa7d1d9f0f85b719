"""Client-side session resumption, TLS 1.2 and 1.3: ``start_tls(session=)``
resumes the session of an earlier connection (``tls.ssl_object.session``).

TLS 1.2 tickets come inside the handshake; TLS 1.3 tickets come after it, as
records the record layer opens, and are given to the ``ssl_object`` so its
session becomes resumable. Against ``openssl s_server`` (which prints
``Reused session-id`` and counts cache hits) and a Python ssl server
(``trio.SSLStream``).
"""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path

import pytest
import trio

import skmsg_tls as tls
from skmsg_core.testing import aclose_all
from skmsg_tcp.testing import tcp_stream_pair

from . import _openssl
from ._cli import connect, one_connection, receive_until, s_client, s_server
from ._peers import Pki, client_context, make_pki, server_context

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_resuming_with_s_server(pki: Pki, version: str) -> None:
    ctx = client_context(pki, VERSIONS[version])
    reused: list[bool] = []
    tickets: list[int] = []
    async with s_server(pki, f"-tls{version.replace('.', '_')}", naccept=2) as (server, port):
        session: ssl.SSLSession | None = None
        for _ in range(2):
            stream = await connect(port)
            try:
                with trio.fail_after(10):
                    t = await tls.start_tls(
                        stream, ctx, server_hostname="localhost", session=session
                    )
                    assert t.ssl_object is not None
                    reused.append(t.ssl_object.session_reused)
                    await server.send(b"hello\n")  # after the tickets (TLS 1.3)
                    await receive_until(stream, b"hello\n")
                    tickets.append(t.statistics().tickets_received)
                    session = t.ssl_object.session
                    assert session is not None and session.has_ticket
                    await stream.send_eof()
                    assert await stream.receive_some() == b""
            finally:
                await aclose_all([stream])
        await server.wait()
    assert reused == [False, True]
    assert server.count("^Reused session-id$") == 1
    assert server.count(r"^ +1 session cache hits$") == 1
    # TLS 1.3: s_server sends 2 tickets after a full handshake, 1 after a
    # resumed one; all were given to OpenSSL
    assert tickets == ([2, 1] if version == "1.3" else [0, 0])


async def test_a_tls13_session_has_a_ticket_only_once_the_tickets_are_read(pki: Pki) -> None:
    """Right after the hand-off OpenSSL has no ticket (they come later, to the
    record layer); once read, the session has one."""
    sctx = server_context(pki, VERSIONS["1.3"], tickets=True)
    cctx = client_context(pki, VERSIONS["1.3"])
    a, b = await tcp_stream_pair()
    peer = trio.SSLStream(b, sctx, server_side=True)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.do_handshake)
                t = await tls.start_tls(a, cctx, server_hostname="localhost")
            obj = t.ssl_object
            assert obj is not None
            before = obj.session
            assert before is not None and not before.has_ticket
            await peer.send_all(b"x")
            assert await a.receive_some() == b"x"
            assert t.statistics().tickets_received == 2
            after = obj.session
            assert after is not None and after.has_ticket
            # the tickets are still control records for the application too
            recs = [t.receive_control_nowait() for _ in range(2)]
            assert [(r.content_type, r.data[0]) for r in recs] == [(22, 4), (22, 4)]
    finally:
        await aclose_all([a, peer])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_resuming_with_a_python_ssl_server(pki: Pki, version: str) -> None:
    sctx = server_context(pki, VERSIONS[version], tickets=True)
    cctx = client_context(pki, VERSIONS[version])
    session: ssl.SSLSession | None = None
    results: list[tuple[bool, bool]] = []
    for _ in range(3):
        a, b = await tcp_stream_pair()
        peer = trio.SSLStream(b, sctx, server_side=True)
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(peer.do_handshake)
                    t = await tls.start_tls(
                        a, cctx, server_hostname="localhost", session=session
                    )
                await peer.send_all(b"after the tickets")
                await receive_until(a, b"tickets")
                await a.send_all(b"and back")
                assert await peer.receive_some() == b"and back"
                assert t.ssl_object is not None
                results.append((t.ssl_object.session_reused, peer._ssl_object.session_reused))
                session = t.ssl_object.session
                await a.send_eof()
                assert await peer.receive_some() == b""
                await peer.aclose()
                assert await a.receive_some() == b""
        finally:
            await aclose_all([a, peer])
    assert results == [(False, False), (True, True), (True, True)]


async def test_without_a_session_nothing_is_resumed(pki: Pki) -> None:
    sctx = server_context(pki, VERSIONS["1.3"], tickets=True)
    cctx = client_context(pki, VERSIONS["1.3"])
    for _ in range(2):
        a, b = await tcp_stream_pair()
        peer = trio.SSLStream(b, sctx, server_side=True)
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(peer.do_handshake)
                    t = await tls.start_tls(a, cctx, server_hostname="localhost")
                assert t.ssl_object is not None and not t.ssl_object.session_reused
        finally:
            await aclose_all([a, peer])


async def test_a_session_of_another_context_is_refused_and_the_stream_stays_usable(
    pki: Pki,
) -> None:
    sctx = server_context(pki, VERSIONS["1.3"], tickets=True)
    cctx = client_context(pki, VERSIONS["1.3"])
    a, b = await tcp_stream_pair()
    peer = trio.SSLStream(b, sctx, server_side=True)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.do_handshake)
                t = await tls.start_tls(a, cctx, server_hostname="localhost")
            await peer.send_all(b"x")
            await a.receive_some()
            assert t.ssl_object is not None
            session = t.ssl_object.session
            c, d = await tcp_stream_pair()
            try:
                with pytest.raises(ValueError, match="different SSLContext"):
                    await tls.start_tls(
                        d, client_context(pki, VERSIONS["1.3"]), server_hostname="localhost",
                        session=session,
                    )
                await c.send_all(b"plain TCP still")
                assert await d.receive_some() == b"plain TCP still"
            finally:
                await aclose_all([c, d])
    finally:
        await aclose_all([a, peer])


_new_session_ticket = _openssl._lib.SSL_new_session_ticket
_new_session_ticket.argtypes = [ctypes.c_void_p]
_new_session_ticket.restype = ctypes.c_int


def issue_ticket(obj: ssl.SSLObject) -> None:
    """``SSL_new_session_ticket``: the server's next write sends one more ticket."""
    sslsock = obj._sslobj  # type: ignore[attr-defined]
    address = id(sslsock) + _openssl._HEAD + ctypes.sizeof(ctypes.c_void_p)
    assert _new_session_ticket(ctypes.c_void_p.from_address(address).value) == 1


async def test_a_ticket_after_a_key_update_is_taken_under_openssls_own_key(pki: Pki) -> None:
    """The server moves its key on (KeyUpdate), then sends a third ticket under
    the new key: it is given to OpenSSL under the key and sequence number its
    read side stopped at, and the session it makes resumes."""
    sctx = server_context(pki, VERSIONS["1.3"], tickets=True)
    cctx = client_context(pki, VERSIONS["1.3"])
    a, b = await tcp_stream_pair()
    peer = trio.SSLStream(b, sctx, server_side=True)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.do_handshake)
                t = await tls.start_tls(a, cctx, server_hostname="localhost")
            await peer.send_all(b"1")
            await receive_until(a, b"1")
            assert t.statistics().tickets_received == 2
            assert t.ssl_object is not None
            first = t.ssl_object.session
            assert first is not None
            _openssl.request_key_update(peer._ssl_object, requested=False)
            await peer.send_all(b"2")  # under the next key
            await receive_until(a, b"2")
            issue_ticket(peer._ssl_object)
            await peer.send_all(b"3")  # the ticket, then this
            await receive_until(a, b"3")
            assert t.statistics().rx_rekeys == 1
            assert t.statistics().tickets_received == 3 and t._ulp.rx_error is None
            assert t.ssl_object is not None
            third = t.ssl_object.session
            assert third is not None and third.has_ticket and third.id != first.id
    finally:
        await aclose_all([a, peer])
    c, d = await tcp_stream_pair()
    peer = trio.SSLStream(d, sctx, server_side=True)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.do_handshake)
                t = await tls.start_tls(c, cctx, server_hostname="localhost", session=third)
            assert t.ssl_object is not None and t.ssl_object.session_reused
    finally:
        await aclose_all([c, peer])


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_s_client_resumes_with_our_server(pki: Pki, tmp_path: Path, version: str) -> None:
    """The server side keeps working too: OpenSSL issues the tickets during
    the hand-off, and a resumed handshake hands off like a full one."""
    sctx = server_context(pki, VERSIONS[version], tickets=True)
    sess = tmp_path / "session.pem"
    reused: list[bool] = []
    async with one_connection() as (port, accepted):
        for option in ("-sess_out", "-sess_in"):
            async with s_client(
                pki, port, f"-tls{version.replace('.', '_')}", option, str(sess)
            ) as client:
                with trio.fail_after(10):
                    stream = await accepted.receive()
                    try:
                        t = await tls.start_tls(stream, sctx, server_side=True)
                        assert t.ssl_object is not None
                        reused.append(t.ssl_object.session_reused)
                        await client.send(b"ping\n")
                        await receive_until(stream, b"ping\n")
                        await stream.send_all(b"pong\n")
                        await client.wait_for("^pong$")  # the tickets were read before
                        await client.close_stdin()
                        assert await stream.receive_some() == b""
                        await client.wait()
                    finally:
                        await aclose_all([stream])
            assert sess.exists()
    assert reused == [False, True]
    assert client.count(rf"^Reused, TLSv{version}, ") == 1
