"""A message tail redirected to a TLS egress is read, sealed and sent: never
spliced, as its bytes must go through the record layer."""

from __future__ import annotations

import os
import struct

import trio

import skmsg_core as sk
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import tcp_stream_pair

from ._ulp_helpers import enable_both, read_exactly


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
