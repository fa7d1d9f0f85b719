"""SK_SKB on real loopback sockets: reference §7 cases 35, 36, 52, 54, 56, 61-63,
and test_sockmap's "non-base" data path.

The receive programs run in the runtime's pumps (the kernel's strparser /
``read_skb`` path): the pump reads the socket, frames messages, runs the
verdict and passes, drops or redirects. What a kernel test reads with
``ioctl(FIONREAD)`` is ``psock.ingress_bytes`` here (the bytes queued on the
psock's ``ingress_msg``, which is what the kernel's ``tcp_bpf_ioctl`` reports
once a verdict program is attached), and ``recv(MSG_PEEK)`` is
``psock.recvmsg(n, peek=True)``; an ordinary ``recv`` is ``receive_some``.
"""

from __future__ import annotations

import socket as stdsocket

import pytest
import trio

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import tcp_stream_pair
from tests.core._support import payload

from ._topology import (
    assert_quiet,
    open_listener,
    open_topology,
    read_exact,
    tcp_pair,
    transfer,
    wait_until,
)


def psock_of(stream: skmsg_tcp.SkStream) -> sk.SkPsock:
    psock = stream.sk.psock
    assert psock is not None, f"{stream!r} has no psock"
    return psock


# -- test_sockmap's TS data path ---------------------------------------------------------------


async def test_ts_non_base_path_c1_msg_p1_skb_redirect_c2_p2() -> None:
    """c1 => SK_MSG (pass) => TCP => p1 => SK_SKB verdict redirect egress =>
    c2 => TCP => p2. Every hop is accounted for, and only p2 reads anything."""
    async with open_runtime(), open_topology("pass") as ts:
        data = payload(4096)
        assert await transfer(ts.c1, ts.p2, [data] * 3, 3 * 4096) == data * 3
        await assert_quiet(ts.p2)
        c1, p1, c2 = psock_of(ts.c1), psock_of(ts.p1), psock_of(ts.c2)
        assert ts.txmsg is not None and ts.txmsg.passed == 3
        assert c1.tx_passed_bytes == ts.c1.bytes_sent == 3 * 4096
        assert p1.rx_redirected_bytes == 3 * 4096 and p1.rx_passed_bytes == 0
        assert ts.c2.bytes_sent == 3 * 4096 and c2.rx_msgs == 0
        assert ts.verdict is not None and ts.verdict.redirected == len(ts.verdict_lens)
        assert sum(ts.verdict_lens) == 3 * 4096
        # p1 and c2 are in a map with receive programs: their readers see nothing
        await assert_quiet(ts.p1)
        await assert_quiet(ts.c2)


async def test_ts_skb_redirect_ingress_into_p2() -> None:
    """``sock_skb_opts[0] = BPF_F_INGRESS``: bpf_prog2 redirects p1's messages to
    ``sock_map[3]`` = p2 with BPF_F_INGRESS, into p2's receive queue; nothing
    crosses c2."""
    async with open_runtime(), open_topology("pass", skb_flags=sk.BPF_F_INGRESS) as ts:
        data = payload(1024)
        assert await transfer(ts.c1, ts.p2, [data] * 4, 4096) == data * 4
        await assert_quiet(ts.p2)
        assert ts.c2.bytes_sent == 0
        assert psock_of(ts.p1).rx_redirected_bytes == 4096


# -- cases 35, 36: the stream parser ---------------------------------------------------------


async def test_case_35_ingress_parser_512_two_256_byte_sends() -> None:
    """txmsg_pass, bpf_prog1 returns 512, two sends of 256 B (iov 256x1, rate 2):
    p1's parser makes one 512-B message; p2 receives 512 B."""
    async with open_runtime(), open_topology("pass", parser_len=512) as ts:
        chunk = payload(256)
        assert await transfer(ts.c1, ts.p2, [chunk, chunk], 512) == chunk * 2
        await assert_quiet(ts.p2)
        assert ts.verdict_lens == [512]


async def test_case_36_ingress_parser2_10_one_20_byte_send() -> None:
    """No SK_MSG program, bpf_prog1 returns 10, one 20-B send: two 10-B messages;
    p2 receives exactly 20 B (more would be the failure the selftest checks)."""
    async with open_runtime(), open_topology(None, parser_len=10) as ts:
        data = payload(20)
        assert await transfer(ts.c1, ts.p2, [data], 20) == data
        await assert_quiet(ts.p2, 0.3)
        assert ts.verdict_lens == [10, 10]
        assert ts.c1.sk.psock is None  # no SK_MSG map: c1 is a plain stream


# -- cases 52, 54, 56: sockmap_listen's SK_SKB redirects ------------------------------------


async def test_case_52_skb_redirect_to_connected() -> None:
    """Parser + stream verdict ``bpf_sk_redirect_map(skb, map, 0, 0)``; p0 at key
    0, p1 at key 1; c1 writes "a" ⇒ one successful verdict, and the byte goes out
    of p0: c0 receives 1 B."""
    async with open_runtime():
        c0, p0 = await tcp_stream_pair()
        c1, p1 = await tcp_stream_pair()
        async with c0, p0, c1, p1:
            m = sk.SockMap(max_entries=2)
            m.attach(lambda skb: skb.len, sk.SK_SKB_STREAM_PARSER)
            prog = m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT)
            m.update(0, p0)
            m.update(1, p1)
            await c1.send_all(b"a")
            assert await read_exact(c0, 1) == b"a"
            await assert_quiet(c0)
            assert (prog.redirected, prog.dropped) == (1, 0)
            m.close()


async def test_case_54_skb_redirect_to_listening_drops() -> None:
    """Listener s at key 0, p at key 1; c writes "a" ⇒ the helper refuses the
    listener, the verdict is a drop (count 1) and the byte is consumed: p reads
    nothing."""
    async with open_runtime():
        s = await open_listener()
        async with s:
            c, p = await tcp_pair(s)
            async with c, p:
                m = sk.SockMap(max_entries=2)
                m.attach(lambda skb: skb.len, sk.SK_SKB_STREAM_PARSER)
                prog = m.attach(
                    lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT
                )
                m.update(0, s)
                m.update(1, p)
                await c.send_all(b"a")
                await wait_until(lambda: prog.run_cnt == 1)
                assert (prog.dropped, prog.redirected) == (1, 0)
                await assert_quiet(p)
                assert psock_of(p).rx_dropped_bytes == 1 and psock_of(p).ingress_bytes == 0
                m.close()


async def test_case_56_redir_partial_parser_3() -> None:
    """Parser returns 3; c1 sends b"abc\\0" (4 B) ⇒ c0 receives exactly "abc";
    the 4th byte waits in p1's parser for more data."""
    async with open_runtime():
        c0, p0 = await tcp_stream_pair()
        c1, p1 = await tcp_stream_pair()
        async with c0, p0, c1, p1:
            m = sk.SockMap(max_entries=2)
            m.attach(lambda skb: 3, sk.SK_SKB_STREAM_PARSER)
            m.attach(lambda skb: sk.sk_redirect_map(skb, m, 0, 0), sk.SK_SKB_STREAM_VERDICT)
            m.update(0, p0)
            m.update(1, p1)
            await c1.send_all(b"abc\0")
            assert await read_exact(c0, 3) == b"abc"
            await assert_quiet(c0, 0.3)
            strp = psock_of(p1).strp
            assert strp is not None and strp.pending == 1
            m.close()


# -- cases 61-63: sockmap_basic's skb_verdict receive API -----------------------------------


async def test_case_61_skb_verdict_peer_shutdown_reads_eof() -> None:
    """Pass program as STREAM_VERDICT, c1 in the map; the peer does
    ``shutdown(SHUT_WR)`` ⇒ c1 is readable and its read returns 0 (b"")."""
    async with open_runtime():
        c1, p1 = await tcp_stream_pair()
        async with c1, p1:
            m = sk.SockMap(max_entries=1)
            m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
            m.update(0, c1)
            assert psock_of(c1).rx_mode == "verdict"
            p1.socket.shutdown(stdsocket.SHUT_WR)
            with trio.fail_after(2):
                assert await c1.receive_some(10) == b""
                assert await c1.receive_some(10) == b""  # and it stays at EOF
            m.close()


@pytest.mark.parametrize(
    "attach", [sk.SK_SKB_VERDICT, sk.SK_SKB_STREAM_VERDICT], ids=["skb_verdict", "stream_verdict"]
)
@pytest.mark.parametrize("verdict", [sk.SK_PASS, sk.SK_DROP], ids=["pass", "drop"])
async def test_case_62_fionread(attach: sk.BpfAttachType, verdict: int) -> None:
    """The peer sends 256 B. Pass program: FIONREAD (``ingress_bytes``) is 256
    and a read returns those 256 B. Drop program: FIONREAD stays 0 and there is
    nothing to read."""
    async with open_runtime():
        c1, p1 = await tcp_stream_pair()
        async with c1, p1:
            m = sk.SockMap(max_entries=1)
            m.attach(lambda skb: verdict, attach)
            m.update(0, c1)
            psock = psock_of(c1)
            data = payload(256)
            await p1.send_all(data)
            await wait_until(lambda: psock.rx_passed_bytes + psock.rx_dropped_bytes == 256)
            if verdict == sk.SK_PASS:
                assert psock.ingress_bytes == 256
                assert await c1.receive_some(1000) == data
                assert psock.ingress_bytes == 0
            else:
                assert psock.ingress_bytes == 0
                await assert_quiet(c1)
            m.close()


async def test_case_63_msg_peek() -> None:
    """The peer sends 256 B: ``recv(MSG_PEEK)`` (``psock.recvmsg(peek=True)``)
    gives 256, FIONREAD still 256; ``recv`` gives 256, FIONREAD 0."""
    async with open_runtime():
        c1, p1 = await tcp_stream_pair()
        async with c1, p1:
            m = sk.SockMap(max_entries=1)
            m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
            m.update(0, c1)
            psock = psock_of(c1)
            data = payload(256)
            await p1.send_all(data)
            await wait_until(lambda: psock.ingress_bytes == 256)
            assert psock.recvmsg(1000, peek=True) == data
            assert psock.ingress_bytes == 256
            assert await c1.receive_some(1000) == data
            assert psock.ingress_bytes == 0
            await assert_quiet(c1)
            m.close()


async def test_skb_drop_then_more_data_is_still_dropped_not_an_error() -> None:
    """An SK_SKB drop is silent (the kernel ACKs and discards): the sender never
    sees an error and the connection keeps working in the other direction."""
    async with open_runtime():
        c1, p1 = await tcp_stream_pair()
        async with c1, p1:
            m = sk.SockMap(max_entries=1)
            m.attach(lambda skb: sk.SK_DROP, sk.SK_SKB_STREAM_VERDICT)
            m.update(0, c1)
            for _ in range(3):
                await p1.send_all(payload(100))
            await wait_until(lambda: psock_of(c1).rx_dropped_bytes == 300)
            await assert_quiet(c1)
            await c1.send_all(b"reply")
            assert await read_exact(p1, 5) == b"reply"
            m.close()
