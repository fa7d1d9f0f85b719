"""UnixDatagramSocket: send/receive/sendto/recvfrom with paths and abstract names,
the kernel's errors, and a verdict per datagram on both sides."""

from __future__ import annotations

import errno
import os
import socket as stdsocket
from pathlib import Path

import pytest
import trio

import skmsg_core as sk
import skmsg_unix
from skmsg_core.runtime import Runtime

from ._support import TIMEOUT, aclose_all, nothing_arrives, receive_n


async def test_datagrams_keep_their_boundaries_and_addresses(tmp_path: Path) -> None:
    pa, pb = str(tmp_path / "a"), skmsg_unix.abstract(f"skmsg-b-{os.getpid()}")
    a = await skmsg_unix.open_unix_datagram_socket(pa)
    b = await skmsg_unix.open_unix_datagram_socket(pb)
    assert (a.getsockname(), b.getsockname()) == (pa, pb)
    assert a.sk.state == sk.TcpState.CLOSE  # bound, unconnected
    for d in (b"one", b"", b"three" * 1000):
        assert await a.sendto(d, pb) == len(d)
    with trio.fail_after(TIMEOUT):
        got = [await b.recvfrom(100_000) for _ in range(3)]
    assert got == [(b"one", pa), (b"", pa), (b"three" * 1000, pa)]
    await a.connect(pb)
    assert a.sk.state == sk.TcpState.ESTABLISHED and a.getpeername() == pb
    await a.send(b"connected")
    with trio.fail_after(TIMEOUT):
        assert await b.receive(4) == b"conn"  # the rest of it is discarded, as recv does
    await aclose_all(a, b)


async def test_the_kernel_s_errors() -> None:
    lone = await skmsg_unix.open_unix_datagram_socket()
    with pytest.raises(OSError) as info:
        await lone.send(b"x")
    assert info.value.errno == errno.ENOTCONN
    with pytest.raises(OSError) as info:
        await lone.sendto(b"x", "/nonexistent-dir/skmsg")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        await lone.sendto(b"x", b"\0skmsg-nobody-is-bound-here")
    assert info.value.errno == errno.ECONNREFUSED
    with pytest.raises(TypeError, match="AF_UNIX address"):
        await lone.sendto(b"x", ("127.0.0.1", 53))  # type: ignore[arg-type]
    with pytest.raises(OSError) as info:
        await lone.bind("y" * 200)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="max_bytes"):
        await lone.receive(0)
    with pytest.raises(ValueError, match="empty"):
        skmsg_unix.abstract("")
    await lone.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await lone.send(b"x")
    with (
        stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as stream,
        pytest.raises(ValueError, match="AF_UNIX SOCK_DGRAM"),
    ):
        skmsg_unix.UnixDatagramSocket(stream)


async def test_a_closed_peer_refuses_and_the_socket_is_disconnected() -> None:
    a, b = await skmsg_unix.unix_dgram_pair()
    await b.aclose()
    with pytest.raises(OSError) as info:
        await a.send(b"anyone?")
    assert info.value.errno in (errno.ECONNREFUSED, errno.ECONNRESET)
    m = sk.SockMap(1)
    m.update(0, a)  # a map operation looks at it afresh
    assert a.sk.state == sk.TcpState.CLOSE  # no longer a redirect target
    m.close()
    await a.aclose()


async def test_a_full_peer_makes_send_wait_not_drop() -> None:
    """A Unix datagram socket has flow control: ``send`` waits for room."""
    a, b = await skmsg_unix.unix_dgram_pair()
    sent = 0
    with trio.move_on_after(0.5) as scope:
        while True:
            await a.send(b"x" * 1000)
            sent += 1
    assert scope.cancelled_caught and sent > 0
    with trio.fail_after(TIMEOUT):
        assert len(await receive_n(b, sent)) == sent
    await aclose_all(a, b)


# -- SK_MSG per datagram (beyond the kernel) ---------------------------------------------------


async def test_an_sk_msg_verdict_runs_once_per_datagram() -> None:
    a, b = await skmsg_unix.unix_dgram_pair()
    m = sk.SockMap(1)
    prog = m.attach(
        lambda msg: sk.SK_DROP if bytes(msg.data[:1]) == b"x" else sk.SK_PASS, sk.SK_MSG_VERDICT
    )
    m.update(0, a)
    outcomes = []
    for d in (b"ok1", b"x1", b"ok2"):
        try:
            await a.send(d)
            outcomes.append("sent")
        except skmsg_unix.SendError as exc:
            outcomes.append(errno.errorcode[exc.errno])
    assert outcomes == ["sent", "EACCES", "sent"]  # a DROP does not stick on a datagram
    assert await receive_n(b, 2) == [b"ok1", b"ok2"]
    assert prog.run_cnt == 3
    m.close()
    await aclose_all(a, b)


@pytest.mark.parametrize("helper", ["apply", "cork"])
async def test_apply_and_cork_do_not_apply_to_a_datagram(helper: str) -> None:
    a, b = await skmsg_unix.unix_dgram_pair()
    m = sk.SockMap(1)

    def prog(msg: sk.SkMsg) -> int:
        (sk.msg_apply_bytes if helper == "apply" else sk.msg_cork_bytes)(msg, 2)
        return sk.SK_PASS

    m.attach(prog, sk.SK_MSG_VERDICT)
    m.update(0, a)
    with pytest.raises(OSError, match=f"msg_{helper}_bytes") as info:
        await a.send(b"whole")
    assert info.value.errno == errno.EOPNOTSUPP
    await nothing_arrives(b)
    m.close()
    await aclose_all(a, b)


# -- SK_SKB per datagram -----------------------------------------------------------------------


async def test_a_pass_verdict_keeps_boundaries_and_the_source(rt: Runtime, tmp_path: Path) -> None:
    pa, pb = str(tmp_path / "a"), str(tmp_path / "b")
    a = await skmsg_unix.open_unix_datagram_socket(pa)
    b = await skmsg_unix.open_unix_datagram_socket(pb)
    m = sk.SockMap(1)
    seen: list[int] = []

    def verdict(skb: sk.SkBuff) -> int:
        seen.append(skb.len)
        return sk.SK_PASS

    m.attach(verdict, sk.SK_SKB_VERDICT)
    m.update(0, b)  # bound, unconnected: any datagram socket enters
    big = bytes(range(256)) * 600  # 153600 bytes: more than 64 KiB, one datagram
    for d in (b"hi", b"there", big):
        await a.sendto(d, pb)
    with trio.fail_after(TIMEOUT):
        got = [await b.recvfrom(200_000) for _ in range(3)]
    assert got == [(b"hi", pa), (b"there", pa), (big, pa)]  # the kernel would merge them
    assert seen == [2, 5, len(big)]
    m.close()
    await aclose_all(a, b)


async def test_a_full_receive_queue_drops_and_counts(rt: Runtime) -> None:
    a, b = await skmsg_unix.unix_dgram_pair()
    m = sk.SockMap(1)
    prog = m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
    m.update(0, b)
    assert b.sk.psock is not None
    b.sk.psock.rcvbuf = 3000
    for _ in range(10):
        await a.send(b"x" * 1000)
    with trio.fail_after(TIMEOUT):
        while prog.run_cnt < 10:
            await trio.sleep(0.001)
    st = b.statistics()
    assert (st.queued, st.drops) == (3, 7)
    assert len(await receive_n(b, 3)) == 3
    m.close()
    await aclose_all(a, b)


async def test_a_redirect_out_of_a_full_target_drops_never_waits(rt: Runtime) -> None:
    """From a datagram receive loop, a Unix datagram target whose peer's queue
    is full drops the datagram (``tx_drops``); the loop goes on."""
    a, b = await skmsg_unix.unix_dgram_pair()
    t, u = await skmsg_unix.unix_dgram_pair()
    while True:  # fill u's queue below any program
        try:
            t._raw.send(b"f" * 1000, stdsocket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    sources, targets = sk.SockMap(1), sk.SockMap(1)
    prog = sources.attach(lambda skb: sk.sk_redirect_map(skb, targets, 0, 0), sk.SK_SKB_VERDICT)
    targets.update(0, t)
    sources.update(0, b)
    for _ in range(5):
        await a.send(b"r")
    with trio.fail_after(TIMEOUT):
        while prog.run_cnt < 5:
            await trio.sleep(0.001)
    assert t.statistics().tx_drops == 5
    sources.close()
    targets.close()
    await aclose_all(a, b, t, u)
