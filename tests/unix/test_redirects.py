"""Redirects between Unix sockets and TCP/UDP, both ways, egress and ingress, on real sockets.

The kernel (Linux 6.18, checked live by tests/conformance) lets an SK_SKB
verdict redirect between any two of TCP, UDP, Unix stream and Unix datagram
sockets, out of the target (egress: its peer receives) or into its receive
queue (``BPF_F_INGRESS``). A datagram target sends or queues one datagram per
message: per datagram from a datagram source, per verdict unit from a stream.
"""

from __future__ import annotations

import itertools

import pytest
import trio

import skmsg_core as sk
from skmsg_core.runtime import Runtime

from ._support import KINDS, aclose_all, is_stream, pair, receive_exactly, receive_n, send

#: Every ordered pair of kinds with a Unix socket on at least one side.
PAIRS = [(s, d) for s, d in itertools.product(KINDS, KINDS) if "unix" in s + d]
IDS = [f"{s}->{d}" for s, d in PAIRS]
FLAGS = [0, sk.BPF_F_INGRESS]
FLAG_IDS = ["egress", "ingress"]


def _skb_attach(sock: object) -> sk.BpfAttachType:
    return sk.SK_SKB_STREAM_VERDICT if is_stream(sock) else sk.SK_SKB_VERDICT


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=IDS)
async def test_skb_verdict_redirects_between_unix_and_tcp_udp(
    rt: Runtime, src: str, dst: str, flags: int
) -> None:
    """``a`` sends to ``b``; ``b``'s verdict sends each message on to ``t``:
    out of it (``t``'s peer ``u`` receives) or into it (``t`` receives)."""
    a, b = await pair(src)
    t, u = await pair(dst)
    sources, targets = sk.SockMap(1), sk.SockMap(1)
    prog = sources.attach(lambda skb: sk.sk_redirect_map(skb, targets, 0, flags), _skb_attach(b))
    targets.update(0, t)
    sources.update(0, b)
    msgs = [b"hello", b"world!"]
    for m in msgs:
        await send(a, m)
        if is_stream(a):  # one verdict per send: let the pump take each on its own
            with trio.fail_after(10):
                while prog.run_cnt < msgs.index(m) + 1:
                    await trio.sleep(0.001)
    receiver = t if flags else u
    if is_stream(receiver):
        assert await receive_exactly(receiver, 11) == b"helloworld!"
    else:  # a datagram per message, boundaries kept
        assert await receive_n(receiver, 2) == msgs
    st = prog.statistics()
    assert (st.run_cnt, st.redirected, st.dropped) == (2, 2, 0)
    if not is_stream(receiver) and flags:
        with trio.fail_after(10):  # a redirected datagram has no source address
            await send(a, b"again")
            assert await receiver.recvfrom() == (b"again", None)
    sources.close()
    targets.close()
    await aclose_all(a, b, t, u)


#: SK_MSG sources: TCP (the kernel's), and Unix and UDP (skmsg's, beyond the kernel).
MSG_PAIRS = [
    (s, d)
    for s, d in itertools.product(("tcp", "unix_stream", "unix_dgram"), KINDS)
    if "unix" in s + d
]


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize(("src", "dst"), MSG_PAIRS, ids=[f"{s}->{d}" for s, d in MSG_PAIRS])
async def test_sk_msg_redirects_between_unix_and_tcp_udp(
    rt: Runtime, src: str, dst: str, flags: int
) -> None:
    """``a``'s SK_MSG program sends each message to ``t`` instead of ``a``'s
    peer. The kernel runs SK_MSG on TCP only, and its helper refuses an egress
    redirect to a socket that is not TCP; skmsg runs it on Unix sockets too and
    takes any target (docs/kernel-differences.md)."""
    a, b = await pair(src)
    t, u = await pair(dst)
    m = sk.SockMap(2)
    prog = m.attach(lambda msg: sk.msg_redirect_map(msg, m, 1, flags), sk.SK_MSG_VERDICT)
    m.update(0, a)
    m.update(1, t)
    await send(a, b"one")
    await send(a, b"two!")
    receiver = t if flags else u
    if is_stream(receiver):
        assert await receive_exactly(receiver, 7) == b"onetwo!"
    else:  # one datagram per message (a stream's send: one SK_MSG message)
        assert await receive_n(receiver, 2) == [b"one", b"two!"]
    assert prog.statistics().run_cnt == 2
    m.close()
    await aclose_all(a, b, t, u)


async def test_a_stream_verdict_over_many_sends_to_a_datagram_target_keeps_the_bytes(
    rt: Runtime,
) -> None:
    """A Unix stream's sends arrive at its reader as a byte stream: a verdict
    unit may hold several sends (user space reads no skb boundaries). Each
    unit is one datagram at a datagram target; no byte is lost or reordered."""
    a, b = await pair("unix_stream")
    t, u = await pair("unix_dgram")
    sources, targets = sk.SockMap(1), sk.SockMap(1)
    sources.attach(lambda skb: sk.sk_redirect_map(skb, targets, 0, 0), sk.SK_SKB_STREAM_VERDICT)
    targets.update(0, t)
    sources.update(0, b)
    chunks = [bytes([65 + i]) * (100 + i) for i in range(50)]
    for c in chunks:
        await a.send_all(c)
    want = b"".join(chunks)
    assert await receive_exactly(u, len(want)) == want
    sources.close()
    targets.close()
    await aclose_all(a, b, t, u)


async def test_redirect_to_an_unconnected_unix_datagram_socket_is_a_drop(rt: Runtime) -> None:
    """Only a connected datagram socket may be a target (``sock_map_redirect_allowed``):
    the helper returns SK_DROP for a bound, unconnected one, egress or ingress."""
    import skmsg_unix

    a, b = await pair("unix_dgram")
    lone = await skmsg_unix.open_unix_datagram_socket(skmsg_unix.abstract(f"skmsg-lone-{id(a)}"))
    m = sk.SockMap(2)
    rets: list[int] = []

    def verdict(skb: sk.SkBuff) -> int:
        ret = sk.sk_redirect_map(skb, m, 1, sk.BPF_F_INGRESS if skb.data[:1] == b"i" else 0)
        rets.append(int(ret))
        return ret

    prog = m.attach(verdict, sk.SK_SKB_VERDICT)
    m.update(0, b)
    m.update(1, lone)  # any datagram socket may enter a map
    await a.send(b"egress")
    await a.send(b"ingress")
    with trio.fail_after(10):
        while prog.run_cnt < 2:
            await trio.sleep(0.001)
    assert rets == [sk.SK_DROP, sk.SK_DROP]
    assert lone.statistics().queued == 0
    m.close()
    await aclose_all(a, b, lone)
