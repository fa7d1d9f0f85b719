"""trio's own stream conformance suite on TLS streams: the ULP with matching
keys (TLS 1.3 and 1.2, plain and in maps with programs), a real handshake on
both ends (``start_tls``), and ``start_tls`` against trio's ``SSLStream``.

The suite's "clogged" half needs a pair whose socket buffers are full of
whole records with no send in progress, which the ULP cannot be made to
leave behind (a send cancelled while it waits for room loses its sealed
record, as trio's own ``SSLStream`` is broken by one). Its send-side checks
are made here with a send that blocks instead: closing the stream wakes it,
and a second sender is refused.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tcp
import skmsg_tls as tls
from skmsg_core.runtime import open_runtime
from skmsg_tcp import SkStream
from tests.tcp.test_conformance import PROGRAM_SETS, in_maps, pass_msg, tcp_pair
from tests.tls._peers import client_context, make_pki, server_context
from tests.tls._ulp_helpers import enable_both, make_keys

Pair = tuple[SkStream, SkStream]
Maker = Callable[[], Awaitable[Pair]]

#: More than loopback's socket buffers hold at their largest, so a send of
#: it blocks while the peer does not read.
BLOCKS = 32 * 1024 * 1024


def with_keys(tcp: Maker, version: int, cipher: int) -> Maker:
    """``tcp``'s pair with the TLS ULP on both ends (fresh matching keys)."""

    async def maker() -> Pair:
        a, b = await tcp()
        await enable_both(a, b, make_keys(version, cipher))
        return a, b

    return maker


def drop(msg: sk.SkMsg) -> int:
    return sk.SK_DROP


@pytest.mark.parametrize(
    ("prog", "data"),
    [(pass_msg, b""), (drop, b"x" * 40_000), (drop, b"x")],
    ids=["empty", "drop-records", "drop-short"],
)
async def test_tls_send_all_under_a_program_checkpoints_when_nothing_is_written(
    prog: Callable[[sk.SkMsg], int], data: bytes
) -> None:
    """trio's rule, which its suite checks with an empty send: every
    ``send_all`` is a checkpoint, also when the program leaves nothing to
    write (an empty send, a DROP of the first record of a bulk send)."""
    async with open_runtime():
        a, b = await tcp_pair()
        async with a, b:
            m = sk.SockMap(max_entries=2)
            m.attach(prog, sk.SK_MSG_VERDICT)
            m.update(0, a)
            m.update(1, b)
            await enable_both(a, b)
            with trio.testing.assert_checkpoints():
                try:
                    await a.send_all(data)
                except PermissionError:
                    assert prog is drop
                else:
                    assert prog is pass_msg


def sender_pair(attach: tuple[sk.BpfAttachType, ...]) -> Maker:
    return with_keys(in_maps(*attach), tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_128)


SENDERS = pytest.mark.parametrize(
    "attach", [(), (sk.SK_MSG_VERDICT,)], ids=["no-program", "msg-program"]
)


@SENDERS
async def test_closing_a_tls_stream_wakes_its_blocked_send(
    attach: tuple[sk.BpfAttachType, ...],
) -> None:
    async with open_runtime():
        a, b = await sender_pair(attach)()
        async with b:

            async def close_when_blocked() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await trio.aclose_forcefully(a)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(close_when_blocked)
                with pytest.raises(trio.ClosedResourceError):
                    await a.send_all(b"x" * BLOCKS)


@SENDERS
async def test_a_tls_stream_with_a_blocked_send_refuses_another_sender(
    attach: tuple[sk.BpfAttachType, ...],
) -> None:
    async with open_runtime():
        a, b = await sender_pair(attach)()
        async with a, b, trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, b"x" * BLOCKS)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await a.send_all(b"123")
            with pytest.raises(trio.BusyResourceError):
                await a.wait_send_all_might_not_block()
            nursery.cancel_scope.cancel()


VERSIONS = [
    pytest.param(tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_128, id="tls13-aes128"),
    pytest.param(tls.TLS_1_2_VERSION, tls.TLS_CIPHER_CHACHA20_POLY1305, id="tls12-chacha"),
]


@pytest.mark.parametrize(("version", "cipher"), VERSIONS)
async def test_tls_stream_passes_check_half_closeable_stream(version: int, cipher: int) -> None:
    await trio.testing.check_half_closeable_stream(with_keys(tcp_pair, version, cipher), None)


@pytest.mark.parametrize("attach", list(PROGRAM_SETS.values()), ids=list(PROGRAM_SETS))
async def test_tls_stream_in_a_map_passes_check_half_closeable_stream(
    attach: tuple[sk.BpfAttachType, ...],
) -> None:
    maker = with_keys(in_maps(*attach), tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_128)
    async with open_runtime():
        await trio.testing.check_half_closeable_stream(maker, None)


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    pki = make_pki(Path(tmp_path_factory.mktemp("pki")))
    version = ssl.TLSVersion.TLSv1_3
    return server_context(pki, version, tickets=False), client_context(pki, version)


async def test_start_tls_on_both_ends_passes_check_half_closeable_stream(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    sctx, cctx = contexts

    async def maker() -> Pair:
        client, server = await tcp_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: tls.start_tls(server, sctx, server_side=True))
            await tls.start_tls(client, cctx, server_hostname="localhost")
        return client, server

    await trio.testing.check_half_closeable_stream(maker, None)


async def test_start_tls_against_trio_ssl_stream_passes_check_two_way_stream(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Our client against trio's own TLS stream (OpenSSL) as the server, each
    way round as sender: the suite drives both ends."""
    sctx, cctx = contexts

    async def maker() -> tuple[SkStream, trio.SSLStream[trio.SocketStream]]:
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with listener:
            port = listener.socket.getsockname()[1]
            client = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
            raw = await listener.accept()
        server = trio.SSLStream(raw, sctx, server_side=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            await tls.start_tls(client, cctx, server_hostname="localhost")
        return client, server

    async def flipped() -> tuple[trio.SSLStream[trio.SocketStream], SkStream]:
        client, server = await maker()
        return server, client

    await trio.testing.check_two_way_stream(maker, None)
    await trio.testing.check_two_way_stream(flipped, None)
