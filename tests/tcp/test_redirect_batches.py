"""Regression: batches of many short redirected messages reach the target whole.

A psock merges consecutive messages for one target into one action with one
view per message; 200,000 eight-byte messages used to become sendmsg calls
of thousands of iovecs, which Linux refuses (EMSGSIZE, above IOV_MAX), and the
runtime dropped the whole batch while counting it as redirected.
"""

from __future__ import annotations

import trio

import skmsg_core as sk
from skmsg_core.runtime import current_runtime, open_runtime
from skmsg_tcp.testing import tcp_stream_pair


def parse(skb: sk.SkBuff) -> int:
    return 0 if skb.len < 4 else 4 + int.from_bytes(skb.data[:4], "big")


async def test_many_short_messages_are_all_redirected() -> None:
    async with open_runtime():
        client, proxy_in = await tcp_stream_pair()
        proxy_out, sink = await tcp_stream_pair()
        backends = sk.SockMap(max_entries=1)
        clients = sk.SockMap(max_entries=1)
        backends.update(0, proxy_out)
        clients.attach(parse, sk.SK_SKB_STREAM_PARSER)
        clients.attach(
            lambda skb: sk.sk_redirect_map(skb, backends, 0, 0), sk.SK_SKB_STREAM_VERDICT
        )
        clients.update(0, proxy_in)
        frames = b"".join((4).to_bytes(4, "big") + i.to_bytes(4, "big") for i in range(200_000))
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(frames):
                got.extend(await sink.receive_some(1 << 20))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await client.send_all(frames)
        assert got == frames
        rt = current_runtime()
        assert rt is not None and rt.redirect_errors == 0
        assert proxy_in.sk.psock is not None
        assert proxy_in.sk.psock.statistics().rx_msgs == 200_000
        for s in (client, proxy_in, proxy_out, sink):
            await s.aclose()
