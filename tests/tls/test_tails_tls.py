"""A message tail redirected to a TLS egress is read, sealed and sent: never
spliced, as its bytes must go through the record layer."""

from __future__ import annotations

import os
import struct

import trio

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import tcp_stream_pair

from ._ulp_helpers import enable_both, make_keys, read_exactly


def framed(n: int) -> bytes:
    return struct.pack(">I", n - 4) + os.urandom(n - 4)


async def test_a_tail_to_a_tls_egress_takes_the_copy_path() -> None:
    async with open_runtime() as rt:
        client, proxy_in = await tcp_stream_pair()
        proxy_out, sink = await tcp_stream_pair()
        try:
            backends, clients = sk.SockMap(1), sk.SockMap(1)
            backends.update(0, proxy_out)  # into the map first, then TLS
            await enable_both(proxy_out, sink)
            clients.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
            clients.attach(
                lambda skb: sk.sk_redirect_map(skb, backends, 0, 0),
                sk.SK_SKB_STREAM_VERDICT,
                reads=4,
            )
            clients.update(0, proxy_in)
            psock = proxy_in.sk.psock
            assert psock is not None and psock.strp is not None
            psock.strp.max_msg_size = 1 << 20
            wire = framed(20) + framed(700_000) + framed(sk.RX_TAIL_MIN_BYTES) + framed(9)
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_all, wire)
                    assert await read_exactly(sink, len(wire)) == wire  # opened by TLS
            st = psock.statistics()
            assert st.rx_spliced_bytes == 0 and st.rx_redirected_bytes == len(wire)
            assert rt.redirect_errors == 0
        finally:
            for s in (client, proxy_in, proxy_out, sink):
                await trio.aclose_forcefully(s)


async def test_a_tls_source_with_declared_reads_verdicts_whole_messages() -> None:
    """A TLS stream's messages come out of records, not the socket: one whose
    verdict declared its reads is still verdicted once whole (its first bytes
    shown), and every byte reaches the target in order."""
    async with open_runtime() as rt:
        client, proxy_in = await tcp_stream_pair()
        proxy_out, sink = await tcp_stream_pair()
        try:
            backends, clients = sk.SockMap(1), sk.SockMap(1)
            backends.update(0, proxy_out)
            clients.attach(sk.LengthPrefixParser(4), sk.SK_SKB_STREAM_PARSER)
            seen: list[tuple[int, int]] = []

            def verdict(skb: sk.SkBuff) -> int:
                seen.append((len(skb.data), skb.len))
                return sk.sk_redirect_map(skb, backends, 0, 0)

            clients.attach(verdict, sk.SK_SKB_STREAM_VERDICT, reads=4)
            clients.update(0, proxy_in)  # into the map first, then TLS
            k = make_keys()
            await tls.enable_tls(client, k.a2b, k.b2a, tx_secret=k.a2b_secret,
                                 rx_secret=k.b2a_secret)
            await tls.enable_tls(proxy_in, k.b2a, k.a2b, tx_secret=k.b2a_secret,
                                 rx_secret=k.a2b_secret, strparser=True)
            psock = proxy_in.sk.psock
            assert psock is not None and psock.strp is not None
            psock.strp.max_msg_size = 1 << 20
            sizes = [20, 700_000, sk.RX_TAIL_MIN_BYTES, 9, 300_001]
            wire = b"".join(framed(n) for n in sizes)

            async def reader() -> None:  # a TLS stream's verdicts run in its reader
                while await proxy_in.receive_some():
                    pass

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(reader)
                    nursery.start_soon(client.send_all, wire)
                    assert await read_exactly(sink, len(wire)) == wire  # plain on this side
                    nursery.cancel_scope.cancel()
            assert seen == [(4, n) for n in sizes]
            st = psock.statistics()
            assert st.rx_spliced_bytes == 0 and st.rx_redirected_bytes == len(wire)
            assert rt.redirect_errors == 0
        finally:
            for s in (client, proxy_in, proxy_out, sink):
                await trio.aclose_forcefully(s)
