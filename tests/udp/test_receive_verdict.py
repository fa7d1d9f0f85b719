"""The receive path: the SK_SKB verdict once per datagram, on real loopback sockets."""

from __future__ import annotations

import errno
import socket as stdsocket

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime
from skmsg_tcp.testing import tcp_stream_pair

from ._support import TIMEOUT, nothing_arrives, receive_n, udp_pair

Pair = tuple[skmsg_udp.UdpSocket, skmsg_udp.UdpSocket]


def by_first_byte(targets: sk.SockMap) -> sk.Program:
    """p: pass, d: drop, e: redirect egress to key 1, i: redirect ingress to key 1."""

    def verdict(skb: sk.SkBuff) -> int:
        first = bytes(skb.data[:1])
        if first == b"d":
            return sk.SK_DROP
        if first == b"e":
            return sk.sk_redirect_map(skb, targets, 1, 0)
        if first == b"i":
            return sk.sk_redirect_map(skb, targets, 1, sk.BPF_F_INGRESS)
        return sk.SK_PASS

    return sk.Program.load(verdict, sk.BpfProgType.SK_SKB)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("attach", [sk.SK_SKB_VERDICT, sk.SK_SKB_STREAM_VERDICT])
async def test_verdict_per_datagram_pass_drop_redirect_ingress_and_egress(
    rt: Runtime, host: str, attach: sk.BpfAttachType
) -> None:
    """Case 58 and more: one verdict run per datagram; PASS keeps each boundary,
    DROP loses only that datagram, a redirect moves it whole, to the target's
    peer (egress) or the target's own receive (ingress, no source address)."""
    a, b = await udp_pair(host)
    c, d = await udp_pair(host)
    m = sk.SockMap(2)
    prog = m.attach(by_first_byte(m), attach)
    m.update(0, b)
    m.update(1, c)
    sent = [b"p1", b"d1", b"p22", b"e1", b"i1", b"", b"e22", b"i22", b"d2", b"p333"]
    for x in sent:
        await a.send(x)
    assert await receive_n(b, 4) == [b"p1", b"p22", b"", b"p333"]
    assert await receive_n(d, 2) == [b"e1", b"e22"]
    with trio.fail_after(TIMEOUT):
        assert await c.recvfrom() == (b"i1", None)
        assert await c.recvfrom() == (b"i22", None)
    await nothing_arrives(b)
    st = prog.statistics()
    assert (st.run_cnt, st.passed, st.dropped, st.redirected) == (10, 4, 2, 4)
    ps = b.statistics().psock
    assert ps is not None
    assert (ps.rx_msgs, ps.rx_passed_bytes, ps.rx_dropped_bytes, ps.rx_redirected_bytes) == (
        10, 9, 4, 10)
    for s in (a, b, c, d):
        await s.aclose()


async def test_pass_on_an_unconnected_socket_keeps_each_source_address(rt: Runtime) -> None:
    server = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    clients = [await skmsg_udp.open_udp_socket(("127.0.0.1", 0)) for _ in range(2)]
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
    m.update(0, server)
    for i, c in enumerate(clients):
        await c.sendto(b"from %d" % i, server.getsockname())
    with trio.fail_after(TIMEOUT):
        got = [await server.recvfrom() for _ in clients]
    assert sorted(got) == sorted((b"from %d" % i, c.getsockname()) for i, c in enumerate(clients))
    for s in (server, *clients):
        await s.aclose()


async def test_an_unconnected_target_is_no_redirect_target(rt: Runtime) -> None:
    a, b = await udp_pair()
    lone = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    m = sk.SockMap(2)
    results: list[int] = []

    def verdict(skb: sk.SkBuff) -> int:
        ret = sk.sk_redirect_map(skb, m, 1, sk.BPF_F_INGRESS)
        results.append(ret)
        return ret

    m.attach(verdict, sk.SK_SKB_VERDICT)
    m.update(0, b)
    m.update(1, lone)  # any UDP socket may enter a map ...
    await a.send(b"x")
    with trio.fail_after(TIMEOUT):
        while not results:
            await trio.sleep(0.01)
    assert results == [sk.SK_DROP]  # ... but only a connected one is a target
    await nothing_arrives(lone)
    for s in (a, b, lone):
        await s.aclose()


async def test_a_full_target_drops_and_counts_and_the_loop_goes_on(rt: Runtime) -> None:
    """UDP's contract: a datagram that finds the target's queue full is dropped
    and counted (sk.drops); the receive loop never waits for the reader."""
    a, b = await udp_pair()
    c, d = await udp_pair()
    m = sk.SockMap(2)
    m.attach(by_first_byte(m), sk.SK_SKB_VERDICT)
    m.update(0, b)
    m.update(1, c)
    assert c.sk.psock is not None and b.sk.psock is not None
    c.sk.psock.rcvbuf = 1000  # room for 3 datagrams of 300 bytes
    b.sk.psock.rcvbuf = 600  # its own PASS queue: room for 2
    for i in range(10):
        await a.send(b"i" + bytes([i]) * 299)
    for i in range(5):
        await a.send(b"p" + bytes([i]) * 299)
    # the loop went on past the full queues: the last datagram was judged
    prog = m.progs["skb_verdict"]
    assert prog is not None
    with trio.fail_after(TIMEOUT):
        while prog.run_cnt < 15:
            await trio.sleep(0.01)
    assert c.sk.drops == 7 and c.statistics().queued == 3
    assert b.sk.drops == 3 and b.statistics().queued == 2
    got = [await c.receive() for _ in range(3)]
    assert [g[1] for g in got] == [0, 1, 2]  # the first ones, in order, whole
    assert all(len(g) == 300 for g in got)
    # reading made room: later datagrams get in again
    await a.send(b"i-late")
    with trio.fail_after(TIMEOUT):
        assert await c.receive() == b"i-late"
    assert [len(await b.receive()) for _ in range(2)] == [300, 300]
    for s in (a, b, c, d):
        await s.aclose()


async def test_a_program_that_raises_drops_that_datagram_only(rt: Runtime) -> None:
    a, b = await udp_pair()
    m = sk.SockMap(1)

    def verdict(skb: sk.SkBuff) -> int:
        if bytes(skb.data) == b"boom":
            raise RuntimeError("bad datagram")
        return sk.SK_PASS

    prog = m.attach(verdict, sk.SK_SKB_VERDICT)
    m.update(0, b)
    for x in (b"ok", b"boom", b"fine"):
        await a.send(x)
    assert await receive_n(b, 2) == [b"ok", b"fine"]
    assert prog.statistics().errors == 1
    assert isinstance(prog.last_error, RuntimeError)
    for s in (a, b):
        await s.aclose()


async def test_leaving_the_map_gives_reading_back_and_purges_the_queue(rt: Runtime) -> None:
    a, b = await udp_pair()
    m = sk.SockMap(1)
    prog = m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
    m.update(0, b)
    await a.send(b"queued")
    with trio.fail_after(TIMEOUT):
        while prog.run_cnt < 1:
            await trio.sleep(0.01)
    assert b.statistics().queued == 1
    m.delete(0)  # sk_psock_drop purges what was queued, as the kernel does
    assert b.statistics().queued == 0
    await trio.testing.wait_all_tasks_blocked()
    await a.send(b"plain")
    with trio.fail_after(TIMEOUT):
        assert await b.receive() == b"plain"
    assert prog.run_cnt == 1
    for s in (a, b):
        await s.aclose()


async def test_a_blocked_reader_is_handed_over_to_the_verdict(rt: Runtime) -> None:
    a, b = await udp_pair()
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.SK_DROP if bytes(skb.data) == b"no" else sk.SK_PASS,
             sk.SK_SKB_VERDICT)
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            got.append(await b.receive())

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        m.update(0, b)  # the reader waits on the socket: it must let the pump read
        await a.send(b"no")
        await a.send(b"yes")
    assert got == [b"yes"]
    for s in (a, b):
        await s.aclose()


async def test_receive_programs_need_a_runtime() -> None:
    a, b = await udp_pair()
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
    with pytest.raises(OSError, match="runtime") as info:
        m.update(0, b)
    assert info.value.errno == 95  # EOPNOTSUPP
    assert len(m) == 0 and b.sk.psock is None
    for s in (a, b):
        await s.aclose()


async def test_closing_a_socket_in_a_map_removes_it(rt: Runtime) -> None:
    a, b = await udp_pair()
    m, h = sk.SockMap(2), sk.SockHash(2)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
    m.update(0, b)
    h.update(b"b", b)
    await b.aclose()
    assert len(m) == len(h) == 0 and b.sk.dead and b.sk.psock is None
    assert not rt.pumping(b)
    await a.aclose()


# -- UDP <-> TCP in one map --------------------------------------------------------------------


async def test_udp_to_tcp_redirect_each_datagram_becomes_stream_bytes(rt: Runtime) -> None:
    a, b = await udp_pair()
    t1, t2 = await tcp_stream_pair()
    m = sk.SockMap(2)
    m.attach(by_first_byte(m), sk.SK_SKB_VERDICT)
    m.update(0, b)
    m.update(1, t1)
    for x in (b"e-one|", b"e-two|", b"i-three|", b"i-four|"):
        await a.send(x)
    buf = b""
    with trio.fail_after(TIMEOUT):
        while len(buf) < 12:
            buf += await t2.receive_some()
        assert buf == b"e-one|e-two|"  # egress: out of the TCP connection, in order
        buf = b""
        while len(buf) < 15:
            buf += await t1.receive_some()
        assert buf == b"i-three|i-four|"  # ingress: into the stream's own receive
    for s in (a, b, t1, t2):
        await s.aclose()


async def test_tcp_to_udp_redirect_in_one_map_one_datagram_per_read(rt: Runtime) -> None:
    """Verdict mode (no parser), TCP and UDP in one map: each chunk the TCP side
    reads is one verdict and one datagram, out of the UDP socket or into it."""
    t1, t2 = await tcp_stream_pair()
    a, b = await udp_pair()
    m = sk.SockMap(2)
    m.attach(by_first_byte(m), sk.SK_SKB_STREAM_VERDICT)
    m.update(0, t2)
    m.update(1, a)
    for x in (b"e-first", b"e-second"):
        await t1.send_all(x)  # one at a time: a TCP read could merge two sends
        assert await receive_n(b, 1) == [x]
    await t1.send_all(b"i-third")
    with trio.fail_after(TIMEOUT):
        assert await a.recvfrom() == (b"i-third", None)
    for s in (a, b, t1, t2):
        await s.aclose()


async def test_tcp_to_udp_redirect_one_datagram_per_parsed_message(rt: Runtime) -> None:
    """With a stream parser framing the TCP stream, each message becomes one
    datagram. A UDP socket cannot sit in a map with a parser (EOPNOTSUPP, as
    in the kernel), so the target is in a second map, as a kernel proxy does."""
    t1, t2 = await tcp_stream_pair()
    a, b = await udp_pair()
    m, targets = sk.SockMap(1), sk.SockMap(1)
    m.attach(sk.LengthPrefixParser(1, "big"), sk.SK_SKB_STREAM_PARSER)

    def verdict(skb: sk.SkBuff) -> int:
        flags = sk.BPF_F_INGRESS if bytes(skb.data[1:2]) == b"i" else 0
        return sk.sk_redirect_map(skb, targets, 0, flags)

    m.attach(verdict, sk.SK_SKB_STREAM_VERDICT)
    with pytest.raises(OSError, match="stream parser needs a TCP socket") as info:
        m.update(0, a)
    assert info.value.errno == errno.EOPNOTSUPP
    m.update(0, t2)
    targets.update(0, a)  # a psock, no programs: a plain redirect target
    msgs = [b"e1", b"e22", b"i333", b"e4444", b"i5"]
    wire = b"".join(bytes([len(x)]) + x for x in msgs)
    await t1.send_all(wire[:5])  # messages straddle the writes
    await t1.send_all(wire[5:])
    egress = [bytes([len(x)]) + x for x in msgs if x[:1] == b"e"]
    ingress = [bytes([len(x)]) + x for x in msgs if x[:1] == b"i"]
    assert await receive_n(b, 3) == egress
    with trio.fail_after(TIMEOUT):
        got = [await a.recvfrom() for _ in ingress]
    assert got == [(x, None) for x in ingress]
    targets.close()
    for s in (a, b, t1, t2):
        await s.aclose()


async def test_an_sk_msg_redirect_from_tcp_to_udp_is_one_datagram_per_send(rt: Runtime) -> None:
    t1, t2 = await tcp_stream_pair()
    a, b = await udp_pair()
    m = sk.SockMap(2)
    m.attach(lambda msg: sk.msg_redirect_map(msg, m, 1, 0), sk.SK_MSG_VERDICT)
    m.update(0, t1)
    m.update(1, a)
    big = bytes(range(256)) * 200  # 51200 bytes: more than one 32 KiB fragment
    await t1.send_all(b"hello")
    await t1.send_all(big)
    assert await receive_n(b, 2) == [b"hello", big]
    for s in (a, b, t1, t2):
        await s.aclose()


async def test_a_stalled_tcp_target_drops_the_datagram_not_the_loop(rt: Runtime) -> None:
    """A TCP target whose peer does not read: once it is not writable, datagrams
    for it are dropped and counted on it; other datagrams still flow."""
    a, b = await udp_pair()
    t1, t2 = await tcp_stream_pair()
    t1.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096)
    t2.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 4096)
    m = sk.SockMap(2)
    m.attach(by_first_byte(m), sk.SK_SKB_VERDICT)
    m.update(0, b)
    m.update(1, t1)
    chunk = b"e" + b"x" * 1399
    prog = m.progs["skb_verdict"]
    assert prog is not None
    sent = 0
    with trio.fail_after(TIMEOUT):
        while t1.sk.drops == 0:
            await a.send(chunk)
            sent += 1
            while prog.run_cnt < sent:
                await trio.sleep(0.001)
    await a.send(b"p-still-flowing")
    with trio.fail_after(TIMEOUT):
        assert await b.receive() == b"p-still-flowing"
    for s in (a, b, t1, t2):
        await s.aclose()


class _FailingPump(skmsg_udp.UdpSocket):
    """A socket whose receive loop fails for good on its first datagram."""

    async def rx_datagrams(self, rt: Runtime, psock: sk.SkPsock) -> int:
        got = await super().rx_datagrams(rt, psock)
        if got != -1:
            raise OSError(errno.EIO, "the device went away")
        return got


async def test_a_failed_pump_fails_receive_closed_never_around_the_verdict(
    rt: Runtime,
) -> None:
    a = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    raw = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    raw.connect(a.getsockname())
    b = _FailingPump(raw)
    await a.connect(b.getsockname())
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.SK_DROP, sk.SK_SKB_VERDICT)
    m.update(0, b)
    await a.send(b"dropped by the verdict")
    await a.send(b"never read around it")
    with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError) as info:
        await b.receive()
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EIO
    with pytest.raises(trio.BrokenResourceError):  # and again: it does not go away
        await b.receive()
    m.delete(0)  # leaving the map gives plain reading back
    await a.send(b"plain")
    with trio.fail_after(TIMEOUT):
        got = await b.receive()
    assert got in (b"never read around it", b"plain")
    for s in (a, b):
        await s.aclose()
