"""``READS`` in a policy file: the verdict sees a message's first bytes, and
the rest of a large message goes from the client to its backend with
``splice(2)``, never read into Python. Real proxy, real trio backends."""

from __future__ import annotations

import pathlib
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import skmsg_core as sk
from skmsg import Address, Proxy
from skmsg._policy import Policy, PolicyError
from tests.app._backends import TIMEOUT, Backend, Client, frame, proxy_running, serving

#: Routes by the length field alone (its first 4 bytes): odd lengths to 1.
BY_LENGTH = """
from skmsg_core import sk_redirect_map
READS = 4
def verdict(skb, backends):
    return sk_redirect_map(skb, backends, int.from_bytes(skb.data[:4], "big") % 2, 0)
"""

#: Declares 4 bytes and looks at the tenth: the run's error, a DROP.
PAST_READS = """
from skmsg_core import SK_DROP, sk_redirect_map
READS = 4
def verdict(skb, backends):
    if skb.data[9] == 0x21:
        return SK_DROP
    return sk_redirect_map(skb, backends, 0, 0)
"""

SIZE = 300_000  # over RX_TAIL_MIN_BYTES: a tail to splice


def payloads(n: int) -> list[bytes]:
    return [bytes([65 + i]) * (SIZE + i) for i in range(n)]


@asynccontextmanager
async def by_length(
    tmp_path: pathlib.Path, source: str, **backend: Any
) -> AsyncIterator[tuple[Proxy, Backend, Backend]]:
    """The proxy with ``source`` as its policy in front of backends ``b0`` and
    ``b1`` (``backend``: their options), messages up to 1 MiB; and the two."""
    policy = tmp_path / "by_length.py"
    policy.write_text(source)
    b0, b1 = Backend("b0", **backend), Backend("b1", **backend)
    async with serving(b0, b1), proxy_running(
        backends=(b0.address, b1.address), policy=str(policy), max_message_size=1 << 20,
    ) as proxy:
        yield proxy, b0, b1


async def exchange(client: Client, sent: list[bytes]) -> list[bytes]:
    """Send ``sent`` while reading the replies (megabytes each way: a client
    that only sent would fill every buffer between it and the backends)."""
    async with trio.open_nursery() as nursery:

        async def send_all() -> None:
            for p in sent:
                await client.send(p)

        nursery.start_soon(send_all)
        return await client.replies(len(sent))


def spliced(proxy: Proxy) -> int:
    """Bytes spliced out of the connected clients' sockets so far."""
    total = 0
    for session in proxy.sessions.values():
        psock = session.client.sk.psock
        if psock is not None:
            total += psock.statistics().rx_spliced_bytes
    return total


async def test_a_policy_that_reads_the_header_has_large_messages_spliced(
    tmp_path: pathlib.Path,
) -> None:
    async with by_length(tmp_path, BY_LENGTH) as (proxy, b0, b1):
        assert proxy.verdict.reads == 4
        client = await Client.connect(proxy)
        sent = payloads(6)
        replies = await exchange(client, sent)
        assert sorted(replies) == sorted(
            f"[b{len(p) % 2}] ".encode() + p for p in sent)
        assert b0.received == [p for p in sent if len(p) % 2 == 0]
        assert b1.received == [p for p in sent if len(p) % 2 == 1]
        # all but each message's head went socket to socket
        heads = len(sent) * RX_HEAD_BOUND
        assert spliced(proxy) >= sum(len(p) for p in sent) - heads
        s = proxy.statistics()
        assert (s.msgs, s.redirected, s.policy_errors) == (6, 6, 0)
        await client.aclose()


#: What of a message a receive pump may hold before its verdict runs: its
#: first read (the runtime reads 64 KiB at a time) and the parser's view.
RX_HEAD_BOUND = 2 * 65536


async def test_the_default_policy_reads_nothing_and_has_large_messages_spliced() -> None:
    b0 = Backend("b0")
    async with serving(b0), proxy_running(
        backends=(b0.address,), max_message_size=1 << 20,
    ) as proxy:
        assert proxy.verdict.reads == 0
        client = await Client.connect(proxy)
        sent = payloads(3)
        for p in sent:
            assert await client.round_trip(p) == b"[b0] " + p
        assert spliced(proxy) >= sum(len(p) for p in sent) - 3 * RX_HEAD_BOUND
        await client.aclose()


async def test_a_read_past_reads_drops_that_message_counted_and_the_proxy_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    policy = tmp_path / "past.py"
    policy.write_text(PAST_READS)
    b0 = Backend("b0")
    async with serving(b0), proxy_running(
        backends=(b0.address,), policy=str(policy), max_message_size=1 << 20,
    ) as proxy:
        client = await Client.connect(proxy)
        for p in [*payloads(2), b"short"]:
            await client.send(p)
        with trio.fail_after(TIMEOUT):
            while proxy.statistics().msgs < 3:
                await trio.sleep(0.01)
        s = proxy.statistics()
        assert (s.msgs, s.redirected, s.dropped, s.policy_errors) == (3, 0, 3, 3)
        assert b0.received == []
        errors = proxy.verdict.statistics()
        assert errors.errors == 3
        # the next client is served as ever: its messages are judged, and dropped
        other = await Client.connect(proxy)
        await other.send(b"x" * 20)
        with trio.fail_after(TIMEOUT):
            while proxy.statistics().msgs < 4:
                await trio.sleep(0.01)
        await client.aclose()
        await other.aclose()


async def test_a_reload_takes_the_new_files_reads(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "p.py"
    policy.write_text(BY_LENGTH)
    b0, b1 = Backend("b0"), Backend("b1")
    async with serving(b0, b1), proxy_running(
        backends=(b0.address, b1.address), policy=str(policy),
    ) as proxy:
        assert proxy.verdict.reads == 4
        policy.write_text(BY_LENGTH.replace("READS = 4\n", ""))
        assert proxy.reload_policy()
        assert proxy.verdict.reads is None
        policy.write_text(BY_LENGTH.replace("READS = 4", "READS = 8"))
        assert proxy.reload_policy()
        assert proxy.verdict.reads == 8
        client = await Client.connect(proxy)
        assert await client.round_trip(b"ab") == b"[b0] ab"
        await client.aclose()


@pytest.mark.parametrize("value", ["-1", "'4'", "True", "2.5", "[4]"])
def test_a_reads_that_is_not_a_byte_count_is_refused_naming_it(
    tmp_path: pathlib.Path, value: str
) -> None:
    policy = tmp_path / "bad.py"
    policy.write_text(BY_LENGTH.replace("READS = 4", f"READS = {value}"))
    with pytest.raises(PolicyError, match=r"READS must be .* an int >= 0, not "):
        Policy.from_file(policy)


def test_reads_is_the_files_declaration_or_every_byte(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "p.py"
    policy.write_text(BY_LENGTH)
    assert Policy.from_file(policy).reads == 4
    policy.write_text(BY_LENGTH.replace("READS = 4\n", ""))
    assert Policy.from_file(policy).reads is None
    assert Policy.round_robin().reads == 0
    assert sk.RX_TAIL_MIN_BYTES < SIZE


#: Routes by the length field, reading every byte (no READS).
BY_LENGTH_ALL = BY_LENGTH.replace("READS = 4\n", "")


async def test_large_replies_from_two_backends_reach_the_client_each_whole(
    tmp_path: pathlib.Path,
) -> None:
    """Two backends answer one client at once, each reply in many pieces: the
    client gets every reply whole, never pieces of two interleaved."""
    async with by_length(tmp_path, BY_LENGTH_ALL) as (proxy, _, _):
        client = await Client.connect(proxy)
        sent = payloads(10)
        replies = await exchange(client, sent)  # a torn reply fails to frame here
        assert sorted(replies) == sorted(f"[b{len(p) % 2}] ".encode() + p for p in sent)
        # each backend's own replies in the order it answered
        for i in (0, 1):
            mine = [r for r in replies if r.startswith(b"[b%d] " % i)]
            assert mine == [f"[b{i}] ".encode() + p for p in sent if len(p) % 2 == i]
        await client.aclose()


async def test_a_backend_that_breaks_mid_reply_closes_its_client_with_nothing_after_it(
    tmp_path: pathlib.Path,
) -> None:
    """Backend 0 writes half a large reply, then resets; backend 1's reply, held
    behind it in the client's lane meanwhile, is never written after the torn
    half (the client could not frame it): the client is closed at once,
    counted backend_lost, with exactly the half it got."""
    policy = tmp_path / "by_length.py"
    policy.write_text(BY_LENGTH_ALL)
    half = 200_000
    torn_reply = frame(b"t" * (2 * half))[: 4 + half]
    wrote_half = trio.Event()
    break_now = trio.Event()

    async def torn(stream: trio.SocketStream) -> None:  # backend 0
        if not await stream.receive_some():
            return  # the proxy's start-up probe
        await stream.send_all(torn_reply)
        wrote_half.set()
        await break_now.wait()
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    b1 = Backend("b1", hold=True)
    async with trio.open_nursery() as nursery, serving(b1):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, torn, listeners)
        async with proxy_running(backends=(Address("127.0.0.1", port), b1.address),
                                 policy=str(policy), max_message_size=1 << 20) as proxy:
            addr = proxy.listen[0]
            client = await trio.open_tcp_stream(addr.host, addr.port)
            got = b""
            with trio.fail_after(TIMEOUT):
                await client.send_all(frame(b"to zero!"))  # length 8: even, backend 0
                while len(got) < len(torn_reply):
                    got += await client.receive_some()
                await wrote_half.wait()
                await client.send_all(frame(b"to one!"))  # length 7: odd, backend 1
                await b1.wait(lambda: len(b1.received) == 1)
                b1.release()  # its reply now waits behind backend 0's half
                await trio.testing.wait_all_tasks_blocked(0.05)
                break_now.set()
                with trio.fail_after(5):  # at once: no timeout is involved
                    while data := await receive_or_reset(client):
                        got += data
            assert got == torn_reply
            s = proxy.statistics()
            assert (s.backend_lost, s.client_closed["backend_lost"]) == (1, 1)
            await client.aclose()
        nursery.cancel_scope.cancel()


async def receive_or_reset(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some()
    except trio.BrokenResourceError:
        return b""  # a reset is a close too


async def test_large_replies_to_a_client_carried_in_user_space_reach_it_each_whole(
    tmp_path: pathlib.Path,
) -> None:
    """A client that half-closed before it entered the clients map is served
    in user space; its replies from two backends still go through its lane:
    each reaches it whole."""
    pad = 300_000  # each reply many reads long
    async with by_length(tmp_path, BY_LENGTH_ALL, pad=pad) as (proxy, _, _):
        addr = proxy.listen[0]
        # blocking calls: the proxy cannot accept before the FIN is in
        raw = socket.create_connection((addr.host, addr.port))
        sent = [bytes([65 + i]) * (10 + i) for i in range(10)]
        raw.sendall(b"".join(frame(p) for p in sent))
        raw.shutdown(socket.SHUT_WR)
        raw.setblocking(False)
        client = Client(trio.SocketStream(trio.socket.from_stdlib_socket(raw)))
        replies = await client.replies(len(sent))  # a torn reply fails to frame here
        assert proxy.statistics().userspace_clients == 1
        assert sorted(replies) == sorted(
            f"[b{len(p) % 2}] ".encode() + p + b"." * pad for p in sent)
        assert await client.closed_by_proxy() == []  # then EOF: the session is done
        await client.aclose()
