"""``skmsg proxy``: every connection ends in bounded time. Idle clients, clients
and backends that stop reading, backends that owe a reply, that never answer
a connect or a TLS handshake, and backends that half-close: real loopback
sockets and real trio backends; what each client saw, that the others were
untouched, and what was counted."""

from __future__ import annotations

import contextlib
import pathlib
import ssl
import textwrap

import trio

from skmsg._tls import TlsOptions, client_context, server_context, write_self_signed

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

#: A bound on "promptly" that a loaded 2-core machine keeps: the timeouts
#: below are fractions of a second, their sweep a quarter of that.
SLACK = 5.0

ROUTE_BY_FIRST_BYTE = """
import skmsg_core as sk

def verdict(skb, backends):
    return sk.sk_redirect_map(skb, backends, 0 if bytes(skb.data[4:5]) < b"n" else 1, 0)
"""


def policy(tmp_path: pathlib.Path, source: str) -> str:
    path = tmp_path / "policy.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


# -- idle clients ----------------------------------------------------------------------------


async def test_an_idle_client_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() -> None:
    a = Backend("a")
    async with serving(a), proxy_running(backends=(a.address,), idle_timeout=0.5) as proxy:
        idle = await Client.connect(proxy)
        busy = await Client.connect(proxy)
        assert await idle.round_trip(b"hello") == b"[a] hello"
        t0 = trio.current_time()
        n = 0
        closed = trio.Event()

        async def keep_busy() -> None:
            nonlocal n
            while not closed.is_set():
                assert await busy.round_trip(b"%d" % n) == b"[a] %d" % n
                n += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_busy)
            assert await idle.closed_by_proxy(within=0.5 + SLACK) == []
            closed.set()
        assert trio.current_time() - t0 >= 0.5  # not before its time
        assert n > 0 and await busy.round_trip(b"still") == b"[a] still"
        s = proxy.statistics()
        assert (s.timeouts["idle"], s.client_closed["idle"], s.clients_open) == (1, 1, 1)
        m = Metrics(proxy)
        assert m("skmsg_proxy_timeouts_total", kind="idle") == 1
        assert m("skmsg_proxy_clients_closed_total", reason="idle") == 1
        assert m("skmsg_proxy_clients_open") == 1
        await idle.aclose()
        await busy.aclose()


# -- peers that read nothing ---------------------------------------------------------------


async def test_a_client_that_stops_reading_is_closed_after_the_write_timeout() -> None:
    a = Backend("a", pad=256 * 1024)  # every answer is large
    async with serving(a), proxy_running(backends=(a.address,), write_timeout=0.5) as proxy:
        deaf = await Client.connect(proxy)
        other = await Client.connect(proxy)
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                try:
                    for i in range(200):
                        await deaf.send(b"%d" % i)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

            nursery.start_soon(flood)
            await wait_counted(proxy, lambda s: s.client_closed["write_timeout"] == 1)
            reply = await other.round_trip(b"fine")  # the other client never noticed
            assert reply.startswith(b"[a] fine.")
        s = proxy.statistics()
        assert (s.timeouts["write"], s.clients_open) == (1, 1)
        assert s.backends[0].up and s.backends[0].timeouts["write"] == 0
        m = Metrics(proxy)
        assert m("skmsg_proxy_timeouts_total", kind="write") == 1
        assert m("skmsg_proxy_clients_closed_total", reason="write_timeout") == 1
        assert m("skmsg_proxy_backend_timeouts_total", kind="write") == 0
        await deaf.aclose()
        await other.aclose()


async def test_a_backend_that_never_reads_does_not_pin_its_session_after_the_client_left(
    tmp_path: pathlib.Path,
) -> None:
    deaf, fine = Backend("deaf", never_read=True), Backend("z")
    async with serving(deaf, fine), proxy_running(
        backends=(deaf.address, fine.address), write_timeout=1.0,
        policy=policy(tmp_path, ROUTE_BY_FIRST_BYTE), **FAST,
    ) as proxy:
        other = await Client.connect(proxy)
        client = await Client.connect(proxy)
        big = b"a" * 65536
        while True:  # until the proxy stops reading it (flow control)
            with trio.move_on_after(0.2) as blocked:
                await client.send(big)
            if blocked.cancelled_caught:
                break
        await client.aclose()  # gone, with the proxy stuck writing to the backend
        await wait_counted(proxy, lambda s: s.clients_open == 1)
        s = proxy.statistics()
        assert s.backends[0].timeouts["write"] == 1 and s.backends[0].closed["write_timeout"] == 1
        assert not s.backends[0].up  # a backend that reads nothing is down
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_timeouts_total", index="0", kind="write") == 1
        assert m("skmsg_proxy_backend_connections_closed_total", index="0",
                 reason="write_timeout") == 1
        assert m("skmsg_proxy_backend_up", index="0") == 0
        assert await other.round_trip(b"zoo") == b"[z] zoo"
        await other.aclose()


async def test_a_backend_that_owes_a_reply_for_the_idle_timeout_is_down_and_its_client_told(
    tmp_path: pathlib.Path,
) -> None:
    mute, fine = Backend("mute", reply=False), Backend("z")
    async with serving(mute, fine), proxy_running(
        backends=(mute.address, fine.address), idle_timeout=0.5,
        policy=policy(tmp_path, ROUTE_BY_FIRST_BYTE), **FAST,
    ) as proxy:
        waiting = await Client.connect(proxy)
        await waiting.send(b"anyone?")
        await mute.wait(lambda: mute.received == [b"anyone?"])
        assert await waiting.closed_by_proxy(within=0.5 + SLACK) == []
        other = await Client.connect(proxy)
        assert await other.round_trip(b"zip") == b"[z] zip"
        s = proxy.statistics()
        assert s.backends[0].timeouts["response"] == 1
        assert s.backends[0].closed["response_timeout"] == 1
        assert (s.client_closed["backend_lost"], s.backends[0].backend_lost) == (1, 1)
        assert not s.backends[0].up
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_timeouts_total", index="0", kind="response") == 1
        assert m("skmsg_proxy_backend_lost_clients_total", index="0") == 1
        assert m("skmsg_proxy_backend_up", index="0") == 0
        await waiting.aclose()
        await other.aclose()


# -- connects and handshakes that never finish ------------------------------------------------


async def test_a_connect_that_is_never_answered_times_out_and_the_message_goes_elsewhere() -> None:
    a = Backend("a")
    with unanswering_backend() as stuck:
        async with serving(a), proxy_running(
            backends=(stuck.address, a.address), connect_timeout=0.3, **FAST
        ) as proxy:
            stuck.jam()  # after the start-up probe: from now on its SYNs go unanswered
            client = await Client.connect(proxy)
            t0 = trio.current_time()
            assert await client.round_trip(b"hi") == b"[a] hi"  # round-robin tried 0 first
            assert trio.current_time() - t0 >= 0.3
            st = proxy.statistics()
            assert st.backends[0].timeouts["connect"] == 1 and not st.backends[0].up
            assert (st.rerouted, st.no_backend, st.clients_open) == (1, 0, 1)
            m = Metrics(proxy)
            assert m("skmsg_proxy_backend_timeouts_total", index="0", kind="connect") == 1
            assert m("skmsg_proxy_messages_rerouted_total") == 1
            await client.aclose()


async def test_a_slow_tls_handshake_is_cut_at_the_handshake_timeout() -> None:
    cert, key = write_self_signed(["127.0.0.1"])
    options = TlsOptions(server=server_context(cert, key), cert_path=cert)
    async with proxy_running(tls=options, handshake_timeout=0.5) as proxy:
        addr = proxy.listen[0]
        slow = await trio.open_tcp_stream(addr.host, addr.port)  # says nothing
        good = await trio.open_ssl_over_tcp_stream(
            addr.host, addr.port, ssl_context=client_context(cert))
        client = Client(good)
        assert await client.round_trip(b"hello") == b"[backend 0] hello"
        t0 = trio.current_time()
        with trio.fail_after(0.5 + SLACK):
            assert await slow.receive_some() == b""
        assert trio.current_time() - t0 <= 0.5 + SLACK
        assert await client.round_trip(b"again") == b"[backend 1] again"
        s = proxy.statistics()
        assert (s.timeouts["handshake"], s.client_closed["handshake"], s.clients_open) == (1, 1, 1)
        m = Metrics(proxy)
        assert m("skmsg_proxy_timeouts_total", kind="handshake", proto="tls") == 1
        assert m("skmsg_proxy_clients_closed_total", reason="handshake") == 1
        await slow.aclose()
        with contextlib.suppress(trio.BrokenResourceError, ssl.SSLError):
            await good.aclose()


# -- backends that half-close ------------------------------------------------------------------


async def test_a_backend_that_half_closes_after_answering_costs_the_client_nothing() -> None:
    """It answers, then shuts its sending side and keeps reading: the proxy
    retires that connection, and the next message goes over a new one."""
    a = Backend("a", half_close_after=1)
    async with serving(a), proxy_running(backends=(a.address,)) as proxy:
        client = await Client.connect(proxy)
        for n in range(1, 4):
            assert await client.round_trip(b"m%d" % n) == b"[a] m%d" % n
            await wait_counted(proxy, lambda s, n=n: s.backends[0].closed["eof"] == n)
        assert a.received == [b"m1", b"m2", b"m3"]
        s = proxy.statistics()
        assert (s.backends[0].connects, s.backend_lost, s.clients_open) == (3, 0, 1)
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_connections_closed_total", reason="eof") == 3
        assert m("skmsg_proxy_backend_connects_total") == 3
        assert m("skmsg_proxy_backend_lost_clients_total") == 0
        await client.aclose()


async def test_a_backend_that_half_closes_owing_a_reply_closes_that_client_at_once() -> None:
    a, b = Backend("a", half_close_after=0), Backend("b")  # EOF instead of an answer
    async with serving(a, b), proxy_running(backends=(a.address, b.address), **FAST) as proxy:
        other = await Client.connect(proxy)
        client = await Client.connect(proxy)
        await client.send(b"to a")  # round-robin: a
        assert await client.closed_by_proxy(within=SLACK) == []
        assert a.received == [b"to a"]
        assert (await other.round_trip(b"x")).endswith(b"x")
        s = proxy.statistics()
        assert s.backends[0].closed["eof"] == 1 and s.backends[0].backend_lost == 1
        assert s.client_closed["backend_lost"] == 1 and s.clients_open == 1
        assert s.backends[0].up  # a clean close is no failure
        m = Metrics(proxy)
        assert m("skmsg_proxy_backend_lost_clients_total", index="0") == 1
        assert m("skmsg_proxy_backend_up", index="0") == 1
        await client.aclose()
        await other.aclose()
