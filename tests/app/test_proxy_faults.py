"""``skmsg proxy`` in front of backends that fail: real loopback sockets, real trio
backends killed, reset and restarted. For each fault: what every client saw
(its replies, or a close within a bound), that the clients it did not touch
were untouched, and that the counters say what happened."""

from __future__ import annotations

import logging
import pathlib
import socket
import textwrap

import pytest
import trio

from skmsg import Address

from ._backends import (
    FAST,
    Backend,
    Client,
    Metrics,
    proxy_running,
    serving,
    unanswering_backend,
    wait_counted,
)

ROUTE_BY_FIRST_BYTE = """
import skmsg_core as sk

def verdict(skb, backends):
    return sk.sk_redirect_map(skb, backends, 0 if bytes(skb.data[4:5]) < b"n" else 1, 0)
"""

PREFER_ONE = """
import skmsg_core as sk

UP = []

def verdict(skb, backends):
    UP.append(backends.up(1))
    return sk.sk_redirect_map(skb, backends, 1 if backends.up(1) else 0, 0)
"""


def policy(tmp_path: pathlib.Path, source: str) -> str:
    path = tmp_path / "policy.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


def free_port() -> Address:
    """An address where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return Address("127.0.0.1", port)


# -- 1. one backend down costs only the messages routed to it ---------------------------------


async def test_a_backend_down_costs_only_the_messages_routed_to_it(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="skmsg")
    a = Backend("a")
    dead = free_port()
    async with serving(a), proxy_running(
        backends=(a.address, dead), policy=policy(tmp_path, ROUTE_BY_FIRST_BYTE)
    ) as proxy:
        assert f"event=backend_down backend={dead} index=1" in caplog.text  # started down
        clients = [await Client.connect(proxy) for _ in range(10)]
        for i, c in enumerate(clients):
            assert await c.round_trip(b"apple%d" % i) == b"[a] apple%d" % i
        # no client was refused, none tried the dead backend: connections are made
        # only to the backends a client's messages go to
        s = proxy.statistics()
        assert (s.clients_open, s.backends[0].connects, s.backends[1].connects) == (10, 10, 0)
        assert s.backends[1].connect_errors == 0
        assert a.accepted == 1 + 10  # the start-up probe, then one per client
        # a message for the dead backend costs its client (told: closed), nobody else
        doomed = clients[3]
        await doomed.send(b"zebra")
        assert await doomed.closed_by_proxy() == []
        for i, c in enumerate(clients):
            if c is not doomed:
                assert await c.round_trip(b"kiwi%d" % i) == b"[a] kiwi%d" % i
        s = proxy.statistics()
        assert (s.no_backend, s.client_closed["no_backend"], s.clients_open) == (1, 1, 9)
        assert s.backends[1].unavailable >= 1 and not s.backends[1].up
        m = Metrics(proxy)
        assert (m("skmsg_proxy_backend_up", index="1"), m("skmsg_proxy_backend_up", index="0")) \
            == (0, 1)
        assert m("skmsg_proxy_messages_undeliverable_total") == 1
        assert m("skmsg_proxy_clients_closed_total", reason="no_backend") == 1
        assert m("skmsg_proxy_backend_connects_total", index="0") == 10
        assert m("skmsg_proxy_backend_connects_total", index="1") == 0
        for c in clients:
            await c.aclose()


async def test_while_a_backend_connection_is_made_what_the_client_sends_waits_bounded(
) -> None:
    """The first message goes to a backend whose connect is never answered: the
    client's messages wait (the proxy stops reading it: TCP flow control holds
    the rest in the client) until --connect-timeout; then that backend is
    down and every message is judged again and answered by the other."""
    b = Backend("b")
    size, count = 32 * 1024, 768  # 24 MiB in all
    sent = 0
    with unanswering_backend() as stuck:
        async with serving(b), proxy_running(
            backends=(stuck.address, b.address), connect_timeout=1.5, backoff_min=30.0,
            backoff_max=60.0,
        ) as proxy:
            stuck.jam()  # after the start-up probe: from now on its connects hang
            client = await Client.connect(proxy)

            async def send_all() -> None:
                nonlocal sent
                for i in range(count):
                    await client.send(b"%06d" % i + b"." * (size - 6))
                    sent += size + 4

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                await wait_counted(proxy, lambda s: s.backends[0].timeouts["connect"] == 1)
                held = sent  # what the client got out while the connect was pending
                got = await client.replies(count)
            # socket buffers (the client's send buffer, the proxy's receive
            # buffer) and one read of the proxy's: far from all 24 MiB
            assert held < 12 * 1024 * 1024, held
            assert [r[:10] for r in got] == [b"[b] %06d" % i for i in range(count)]
            s = proxy.statistics()
            assert (s.msgs, s.rerouted, s.no_backend, s.clients_open) == (count, 1, 0, 1)
            assert not s.backends[0].up and s.backends[0].connects == 0
            m = Metrics(proxy)
            assert m("skmsg_proxy_backend_timeouts_total", index="0", kind="connect") == 1
            assert m("skmsg_proxy_backend_messages_total", index="1") == count
            await client.aclose()


async def test_round_robin_skips_a_backend_that_fails_and_loses_no_message() -> None:
    a, b = Backend("a"), Backend("b")
    async with serving(a, b), proxy_running(backends=(a.address, b.address), **FAST) as proxy:
        await b.kill()  # after the start-up probe: the proxy learns it from traffic
        client = await Client.connect(proxy)
        got = [await client.round_trip(b"m%d" % i) for i in range(6)]
        assert got == [b"[a] m%d" % i for i in range(6)]  # none lost, none reached b
        s = proxy.statistics()
        assert s.backends[1].connect_errors >= 1 and s.backends[1].downs >= 1
        assert s.rerouted >= 1 and s.backends[1].rerouted >= 1  # judged again, to a
        assert (s.no_backend, s.backend_lost, s.clients_open) == (0, 0, 1)
        m = Metrics(proxy)
        assert m("skmsg_proxy_messages_rerouted_total") == s.rerouted >= 1
        assert m("skmsg_proxy_backend_downs_total", index="1") >= 1
        assert m("skmsg_proxy_backend_connect_errors_total", index="1") >= 1
        await client.aclose()


async def test_a_message_whose_backend_cannot_be_connected_is_judged_again(
    tmp_path: pathlib.Path,
) -> None:
    """The policy routes to backend 1 while ``backends.up(1)``; backend 1 is gone
    without the proxy knowing: the connect fails, the backend is marked down,
    the verdict runs again, sees it down, and routes the message to 0."""
    a, b = Backend("a"), Backend("b")
    source = policy(tmp_path, PREFER_ONE)
    async with serving(a, b), proxy_running(backends=(a.address, b.address), policy=source,
                                            **FAST) as proxy:
        client = await Client.connect(proxy)
        assert await client.round_trip(b"one") == b"[b] one"
        await b.kill()
        other = await Client.connect(proxy)  # no connection to b yet: it must connect
        assert await other.round_trip(b"two") == b"[a] two"
        up = proxy.policy.verdict.__globals__["UP"]
        assert up[-2:] == [True, False]  # judged with b up, then again with b down
        s = proxy.statistics()
        assert (s.msgs, s.rerouted, s.backends[1].rerouted, s.no_backend) == (2, 1, 1, 0)
        assert [b.msgs for b in s.backends] == [1, 2]  # the rerouted one counted where it went
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_rerouted_messages_total", index="1") == 1
        assert m("skmsg_proxy_backend_messages_total", index="0") == 1
        await client.aclose()
        await other.aclose()


# -- 2. health: passive back-off, active checks, coming back ------------------------------------


async def test_a_restarted_backend_is_used_again_by_clients_already_connected() -> None:
    a, b = Backend("a"), Backend("b")
    async with serving(a, b) as nursery, proxy_running(
        backends=(a.address, b.address), **FAST
    ) as proxy:
        client = await Client.connect(proxy)
        assert {await client.round_trip(b"x"), await client.round_trip(b"y")} == {
            b"[a] x", b"[b] y"
        }
        await b.kill()
        # the proxy finds b gone (its connection ends, the reconnect is refused)
        # and carries on with a alone
        for i in range(4):
            assert await client.round_trip(b"alone%d" % i) == b"[a] alone%d" % i
        await wait_counted(proxy, lambda s: not s.backends[1].up)
        await b.start(nursery)  # back, on the same port
        # once its back-off runs out, the next message routed there tries it
        with trio.fail_after(20):
            while not (await client.round_trip(b"again")).startswith(b"[b]"):
                pass
        s = proxy.statistics()
        assert s.backends[1].up and s.backends[1].downs >= 1
        assert s.backends[1].connects >= 2  # one before, one after
        assert (s.backend_lost, s.no_backend, s.clients_open) == (0, 0, 1)
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_up", index="1") == 1
        assert m("skmsg_proxy_backend_downs_total", index="1") >= 1
        assert m("skmsg_proxy_clients_closed_total", reason="backend_lost") == 0
        await client.aclose()


async def test_active_checks_mark_a_backend_down_and_up_without_traffic() -> None:
    a, b = Backend("a"), Backend("b")
    async with serving(a, b) as nursery, proxy_running(
        backends=(a.address, b.address), health_interval=0.05, **FAST
    ) as proxy:
        await wait_counted(proxy, lambda s: s.backends[1].checks >= 1)
        await b.kill()
        await wait_counted(proxy, lambda s: not s.backends[1].up)
        assert proxy.statistics().backends[1].check_failures >= 1
        client = await Client.connect(proxy)  # routed around b from the start
        assert [await client.round_trip(b"%d" % i) for i in range(3)] == [
            b"[a] 0", b"[a] 1", b"[a] 2"
        ]
        assert proxy.statistics().rerouted == 0
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_up", index="1") == 0
        assert m("skmsg_proxy_backend_check_failures_total", index="1") >= 1
        assert m("skmsg_proxy_backend_checks_total", index="0") >= 1
        assert m("skmsg_proxy_backend_check_failures_total", index="0") == 0
        await b.start(nursery)
        await wait_counted(proxy, lambda s: s.backends[1].up)
        assert Metrics(proxy)("skmsg_proxy_backend_up", index="1") == 1
        served = {(await client.round_trip(b"p%d" % i)).split(b"]")[0] for i in range(2)}
        assert served == {b"[a", b"[b"}  # round-robin over both again
        await client.aclose()


# -- 3. a backend connection dying mid-stream -------------------------------------------------


async def test_backend_connections_reset_mid_stream_close_their_clients_at_once(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """20 busy clients: 10 with a message in flight on backend a (it holds its
    replies), 10 on backend z. a resets every connection: each of its 10
    clients is closed at once (backend_lost); z's 10 go on as if nothing
    happened."""
    caplog.set_level(logging.WARNING, logger="skmsg")
    a, z = Backend("a", hold=True), Backend("z")
    async with serving(a, z), proxy_running(
        backends=(a.address, z.address), policy=policy(tmp_path, ROUTE_BY_FIRST_BYTE), **FAST
    ) as proxy:
        on_a = [await Client.connect(proxy) for _ in range(10)]
        on_z = [await Client.connect(proxy) for _ in range(10)]
        for i, c in enumerate(on_a):
            await c.send(b"apple%d" % i)
        for i, c in enumerate(on_z):
            assert await c.round_trip(b"zebra%d" % i) == b"[z] zebra%d" % i
        await a.wait(lambda: len(a.received) == 10)
        assert a.reset_connections() == 10
        with trio.fail_after(5):  # promptly: no timeout is involved
            for c in on_a:
                assert await c.closed_by_proxy() == []
        for i, c in enumerate(on_z):
            assert await c.round_trip(b"yak%d" % i) == b"[z] yak%d" % i
        s = proxy.statistics()
        assert (s.backend_lost, s.client_closed["backend_lost"]) == (10, 10)
        assert s.backends[0].backend_lost == 10 and s.backends[0].closed["reset"] == 10
        assert s.backends[0].downs == 1  # one outage, seen by 10 connections
        assert (s.backends[1].backend_lost, s.clients_open) == (0, 10)
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_lost_clients_total", index="0") == 10
        assert m("skmsg_proxy_backend_lost_clients_total", index="1") == 0
        assert m("skmsg_proxy_backend_connections_closed_total", index="0", reason="reset") == 10
        assert m("skmsg_proxy_clients_closed_total", reason="backend_lost") == 10
        assert m("skmsg_proxy_backend_connections", index="1") == 10  # z's, untouched
        assert "event=backend_lost client=127.0.0.1:" in caplog.text
        assert f"backend={a.address} index=0 reason=reset closed=client" in caplog.text
        for c in on_a + on_z:
            await c.aclose()


async def test_a_killed_backend_closes_the_clients_it_owed_and_no_others() -> None:
    a, b = Backend("a", hold=True), Backend("b")
    async with serving(a, b), proxy_running(backends=(a.address, b.address), **FAST) as proxy:
        waiting = await Client.connect(proxy)
        await waiting.send(b"to a")  # round-robin: the first message goes to a
        await a.wait(lambda: a.received == [b"to a"])
        idle = await Client.connect(proxy)
        assert await idle.round_trip(b"to b") == b"[b] to b"
        await a.kill()  # its connections close (FIN), its port refuses
        assert await waiting.closed_by_proxy(within=5) == []
        for i in range(3):  # b serves on; a is down
            assert await idle.round_trip(b"%d" % i) == b"[b] %d" % i
        s = proxy.statistics()
        assert s.backends[0].closed["eof"] == 1 and s.backends[0].backend_lost == 1
        assert s.client_closed["backend_lost"] == 1 and s.clients_open == 1
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_connections_closed_total", index="0", reason="eof") == 1
        assert m("skmsg_proxy_backend_lost_clients_total", index="0") == 1
        assert m("skmsg_proxy_clients_open") == 1
        await idle.aclose()
        await waiting.aclose()
