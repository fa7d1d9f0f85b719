"""The send path, beyond the kernel: an SK_MSG verdict once per datagram."""

from __future__ import annotations

import errno

import pytest
import trio

import skmsg_core as sk
import skmsg_udp
from skmsg_core.runtime import Runtime
from skmsg_tcp.testing import tcp_stream_pair

from ._support import TIMEOUT, nothing_arrives, receive_n, udp_pair


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def test_pass_and_drop_per_datagram_drop_does_not_stick(host: str) -> None:
    a, b = await udp_pair(host)
    m = sk.SockMap(1)
    prog = m.attach(
        lambda msg: sk.SK_DROP if bytes(msg.data[:6]) == b"SECRET" else sk.SK_PASS,
        sk.SK_MSG_VERDICT,
    )
    m.update(0, a)
    assert await a.send(b"hello") == 5
    with pytest.raises(skmsg_udp.SendError, match="dropped the datagram") as info:
        await a.send(b"SECRET plans")
    assert info.value.errno == errno.EACCES and isinstance(info.value, PermissionError)
    assert await a.send(b"world") == 5  # unlike TCP's sticky DROP: a verdict per datagram
    assert await receive_n(b, 2) == [b"hello", b"world"]
    await nothing_arrives(b)
    st = prog.statistics()
    assert (st.run_cnt, st.passed, st.dropped) == (3, 2, 1)
    ps = a.statistics().psock
    assert ps is not None
    assert (ps.tx_msgs, ps.tx_passed_bytes, ps.tx_dropped_bytes) == (3, 10, 12)
    for s in (a, b):
        await s.aclose()


async def test_sendto_on_an_unconnected_socket_runs_the_verdict() -> None:
    server = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    client = await skmsg_udp.open_udp_socket(("127.0.0.1", 0))
    m = sk.SockMap(1)
    seen: list[bytes] = []

    def verdict(msg: sk.SkMsg) -> int:
        seen.append(bytes(msg.data))
        return sk.SK_PASS

    m.attach(verdict, sk.SK_MSG_VERDICT)
    m.update(0, client)
    await client.sendto(b"q1", server.getsockname())
    await client.sendto(b"q2", server.getsockname())
    with trio.fail_after(TIMEOUT):
        assert [(await server.recvfrom())[0] for _ in range(2)] == [b"q1", b"q2"]
    assert seen == [b"q1", b"q2"]
    for s in (server, client):
        await s.aclose()


@pytest.mark.parametrize("helper", ["apply", "cork"])
async def test_apply_and_cork_do_not_apply_to_datagrams(helper: str) -> None:
    a, b = await udp_pair()
    m = sk.SockMap(1)

    def verdict(msg: sk.SkMsg) -> int:
        if bytes(msg.data[:1]) == b"x":
            if helper == "apply":
                sk.msg_apply_bytes(msg, 1)
            else:
                sk.msg_cork_bytes(msg, 100)
        return sk.SK_PASS

    m.attach(verdict, sk.SK_MSG_VERDICT)
    m.update(0, a)
    with pytest.raises(OSError, match=f"msg_{helper}_bytes, which do not apply to datagrams"
                       ) as info:
        await a.send(b"xyz")
    assert info.value.errno == errno.EOPNOTSUPP
    await a.send(b"after")  # nothing carried over
    assert await receive_n(b, 1) == [b"after"]
    await nothing_arrives(b)
    for s in (a, b):
        await s.aclose()


async def test_push_and_pop_reshape_the_datagram() -> None:
    a, b = await udp_pair()
    m = sk.SockMap(1)

    def verdict(msg: sk.SkMsg) -> int:
        sk.msg_pop_data(msg, 0, 2, 0)
        sk.msg_push_data(msg, 0, 3, 0)  # three zero bytes in front
        return sk.SK_PASS

    m.attach(verdict, sk.SK_MSG_VERDICT)
    m.update(0, a)
    assert await a.send(b"--payload") == 9  # the caller's length
    assert await receive_n(b, 1) == [b"\0\0\0payload"]
    for s in (a, b):
        await s.aclose()


async def test_redirect_egress_and_ingress_to_udp_and_tcp(rt: Runtime) -> None:
    a, b = await udp_pair()
    c, d = await udp_pair()
    t1, t2 = await tcp_stream_pair()
    m = sk.SockMap(3)

    def verdict(msg: sk.SkMsg) -> int:
        head = bytes(msg.data[:2])
        key = 1 if head[:1] == b"u" else 2
        return sk.msg_redirect_map(msg, m, key, sk.BPF_F_INGRESS if head[1:] == b"i" else 0)

    m.attach(verdict, sk.SK_MSG_VERDICT)
    m.update(0, a)
    m.update(1, c)
    m.update(2, t1)
    for x in (b"ue-1", b"ui-2", b"te-3|", b"ti-4|", b"ue-5"):
        assert await a.send(x) == len(x)
    assert await receive_n(d, 2) == [b"ue-1", b"ue-5"]  # out of c
    with trio.fail_after(TIMEOUT):
        assert await c.recvfrom() == (b"ui-2", None)  # into c's receive
        assert await t2.receive_some() == b"te-3|"  # out of the TCP stream
        assert await t1.receive_some() == b"ti-4|"  # into the TCP stream's receive
    await nothing_arrives(b)
    for s in (a, b, c, d, t1, t2):
        await s.aclose()


async def test_a_redirect_whose_target_went_away_fails_epipe(rt: Runtime) -> None:
    a, b = await udp_pair()
    c, d = await udp_pair()
    m = sk.SockMap(2)
    m.attach(lambda msg: sk.msg_redirect_map(msg, m, 1, 0), sk.SK_MSG_VERDICT)
    m.update(0, a)
    m.update(1, c)
    await d.aclose()
    await a.send(b"one")  # c's send goes out; d is gone (an ICMP refusal follows)
    await trio.sleep(0.05)
    with pytest.raises(skmsg_udp.SendError, match="redirect") as info:
        for _ in range(3):  # the refusal shows on c's next send
            await a.send(b"two")
    assert info.value.errno == errno.EPIPE
    await c.aclose()
    with pytest.raises(PermissionError) as info2:  # the key is empty now: no target, DROP
        await a.send(b"three")
    assert info2.value.errno == errno.EACCES
    for s in (a, b):
        await s.aclose()
