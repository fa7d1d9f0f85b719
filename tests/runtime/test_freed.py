"""A closed socket lets go of its owner (``sock_orphan``): a stream and its
``Sock`` name each other while open, and once closed they are freed by
reference counting, not left in a cycle for the garbage collector."""

from __future__ import annotations

import weakref

import trio

import skmsg_core as sk
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import tcp_stream_pair
from tests._freed import collector_off


def _pass(skb: sk.SkBuff) -> int:
    return sk.SK_PASS


async def test_a_closed_stream_and_its_sock_are_freed_without_the_collector() -> None:
    async with open_runtime():
        m = sk.SockMap(2)
        m.attach(sk.Program.load(_pass, sk.BpfProgType.SK_SKB), sk.SK_SKB_VERDICT)
        with collector_off():
            a, b = await tcp_stream_pair()
            m.update(0, a)  # a psock, a receive pump
            await b.send_all(b"ping")
            with trio.fail_after(10):
                assert await a.receive_some() == b"ping"
            assert a.sk.owner is a
            gone = weakref.ref(a), weakref.ref(a.sk)
            sock = a.sk
            await a.aclose()
            await b.aclose()
            assert sock.owner is None and sock.dead
            del a, b, sock
            await trio.testing.wait_all_tasks_blocked()
            assert [ref() for ref in gone] == [None, None]
        m.close()
