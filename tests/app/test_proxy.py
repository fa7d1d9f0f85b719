"""``skmsg proxy`` end to end, in process: real loopback sockets, the proxy's
async entry run in a nursery, backends that record what reached them."""

from __future__ import annotations

import logging
import pathlib
import socket
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import skmsg_core as sk
from skmsg import Address, Proxy, format_table
from skmsg._parsers import parse_length_prefixed

from ._backends import proxy_running

TIMEOUT = 10  # a guard against hangs; every wait below ends on an event

ROUTE_BY_FIRST_BYTE = """
import skmsg_core as sk

def verdict(skb, backends):
    first = bytes(skb.data[4:5])
    if first == b"!":
        return sk.SK_DROP
    return sk.sk_redirect_map(skb, backends, 0 if first < b"n" else 1, 0)
"""


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class Backend:
    """A length-prefixed backend: records each message, answers ``[name] payload``.

    ``close_after``: close each connection after answering that many messages.
    """

    def __init__(self, name: str, close_after: int | None = None) -> None:
        self.name = name
        self.close_after = close_after
        self.received: list[bytes] = []
        self.connections = 0
        self.eofs = 0
        self.address = Address("127.0.0.1", 0)
        self._listeners: list[trio.SocketListener] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = Address.of(self._listeners[0].socket.getsockname())
        await trio.serve_listeners(self._handle, self._listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        parser = sk.StrParser(parse_length_prefixed)
        answered = 0
        async with stream:
            if self.close_after == 0:
                return
            async for data in stream:
                for m in parser.feed(data):
                    self.received.append(bytes(m[4:]))
                    await stream.send_all(frame(f"[{self.name}] ".encode() + bytes(m[4:])))
                    answered += 1
                    if self.close_after is not None and answered >= self.close_after:
                        return
            self.eofs += 1


@asynccontextmanager
async def backends(*specs: Backend) -> AsyncIterator[tuple[Backend, ...]]:
    async with trio.open_nursery() as nursery:
        for b in specs:
            await nursery.start(b.serve)
        yield specs
        nursery.cancel_scope.cancel()


async def connect(proxy: Proxy) -> trio.SocketStream:
    addr = proxy.listen[0]
    return await trio.open_tcp_stream(addr.host, addr.port)


class Reader:
    """Frames what a client receives (length-prefixed) with the core's strparser."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = sk.StrParser(parse_length_prefixed)
        self.got: list[bytes] = []
        self.eof = False

    async def _fill(self, n: int | None) -> None:
        with trio.fail_after(TIMEOUT):
            while not self.eof and (n is None or len(self.got) < n):
                data = await self.stream.receive_some()
                if not data:
                    self.eof = True
                self.got += [bytes(m[4:]) for m in self.parser.feed(data)]

    async def messages(self, n: int) -> list[bytes]:
        await self._fill(n)
        out, self.got = self.got[:n], self.got[n:]
        return out

    async def until_eof(self) -> list[bytes]:
        await self._fill(None)
        out, self.got = self.got, []
        return out


def write_policy(tmp_path: pathlib.Path, source: str) -> str:
    path = tmp_path / "route.py"
    path.write_text(textwrap.dedent(source))
    return str(path)


# -- routing ------------------------------------------------------------------------------


async def test_messages_are_routed_by_content_and_replies_reach_their_client(
    tmp_path: pathlib.Path,
) -> None:
    a, z = Backend("a"), Backend("z")
    async with backends(a, z), proxy_running(
        backends=(a.address, z.address), policy=write_policy(tmp_path, ROUTE_BY_FIRST_BYTE)
    ) as proxy:
        c1, c2 = await connect(proxy), await connect(proxy)
        r1, r2 = Reader(c1), Reader(c2)
        # interleaved, and split at awkward places
        wire1 = frame(b"apple") + frame(b"!secret") + frame(b"zebra") + frame(b"kiwi")
        wire2 = frame(b"yak") + frame(b"mango") + frame(b"!nope")
        await c1.send_all(wire1[:3])
        await c2.send_all(wire2[:9])
        await c1.send_all(wire1[3:14])
        await c2.send_all(wire2[9:])
        await c1.send_all(wire1[14:])
        got1 = sorted(await r1.messages(3))
        got2 = sorted(await r2.messages(2))
        with trio.fail_after(TIMEOUT):
            await proxy.counters.wait_msgs(7)
        assert got1 == [b"[a] apple", b"[a] kiwi", b"[z] zebra"]
        assert got2 == [b"[a] mango", b"[z] yak"]
        assert sorted(a.received) == [b"apple", b"kiwi", b"mango"]
        assert sorted(z.received) == [b"yak", b"zebra"]
        assert a.connections == z.connections == 3  # the start-up probe, then one per client
        s = proxy.statistics()
        assert (s.msgs, s.passed, s.dropped, s.redirected, s.policy_errors) == (7, 0, 2, 5, 0)
        assert s.bytes == len(wire1) + len(wire2)
        assert [(b.msgs, b.bytes) for b in s.backends] == [(3, 9 + 8 + 9), (2, 9 + 7)]
        assert [b.reply_bytes for b in s.backends] == [13 + 12 + 13, 13 + 11]
        assert (s.clients_open, s.clients_total) == (2, 2)
        # the data path is the maps' programs: parser + verdict on clients, reply verdict
        # on each client's 2 backend connections (at least one chunk back on each)
        assert len(proxy.clients) == 2
        assert proxy.parser.statistics().run_cnt >= 7
        assert proxy.reply.statistics().redirected >= 4
        # each client connected to the backends its messages went to: both, here
        assert [len(session.conns) for session in proxy.sessions.values()] == [2, 2]
        table = format_table(s)
        assert f"[0] {a.address}" in table
        assert f"[1] {z.address}" in table
        await c1.aclose()
        await c2.aclose()


async def test_default_policy_is_round_robin_over_embedded_echo_backends() -> None:
    async with proxy_running() as proxy:
        assert proxy.embedded
        assert len(proxy.backends) == 2
        client = await connect(proxy)
        reader = Reader(client)
        replies = []
        for payload in (b"one", b"two", b"three", b"four"):
            await client.send_all(frame(payload))
            replies += await reader.messages(1)
        assert replies == [
            b"[backend 0] one", b"[backend 1] two", b"[backend 0] three", b"[backend 1] four"
        ]
        await client.send_eof()
        assert await reader.until_eof() == []
        await client.aclose()


async def test_line_framing_across_byte_by_byte_sends() -> None:
    async with proxy_running(parser="line") as proxy:
        client = await connect(proxy)
        for byte in b"alpha\nbeta\n":
            await client.send_all(bytes([byte]))
        await client.send_eof()
        got = b""
        with trio.fail_after(TIMEOUT):
            while data := await client.receive_some():
                got += data
        assert sorted(got.splitlines()) == [b"[backend 0] alpha", b"[backend 1] beta"]
        assert proxy.statistics().msgs == 2
        await client.aclose()


async def test_http_framing_serves_requests_and_refuses_chunked_bodies() -> None:
    async with proxy_running(parser="http") as proxy:
        client = await connect(proxy)
        await client.send_all(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        got = b""
        with trio.fail_after(TIMEOUT):
            while got.count(b"HTTP/1.1 200 OK") < 2 or not got.endswith(b"\n"):
                got += await client.receive_some()
        assert b"[backend 0] POST /a HTTP/1.1 hello\n" in got
        assert b"[backend 1] GET /b HTTP/1.1\n" in got
        await client.aclose()

        bad = await connect(proxy)
        await bad.send_all(
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        refusal = b""
        with trio.fail_after(TIMEOUT):
            while data := await bad.receive_some():
                refusal += data
        assert refusal.startswith(b"HTTP/1.1 501 Not Implemented\r\n")
        assert b"chunked bodies are not supported" in refusal
        s = proxy.statistics()
        assert (s.msgs, s.parse_errors) == (2, 1)
        await bad.aclose()


# -- policies ------------------------------------------------------------------------------


async def test_a_policy_parse_replaces_the_parser(tmp_path: pathlib.Path) -> None:
    policy = write_policy(tmp_path, """
        import skmsg_core as sk

        def parse(skb):                      # messages end with ";"
            i = bytes(skb.data).find(b";")
            return 0 if i < 0 else i + 1

        def verdict(skb, backends):
            return sk.sk_redirect_map(skb, backends, len(skb.data) % 2, 0)
    """)
    async with proxy_running(policy=policy, parser="http") as proxy:
        client = await connect(proxy)
        await client.send_all(b"ab;abc;x")
        await client.send_all(b"yz;")
        await client.send_eof()
        got = b""
        with trio.fail_after(TIMEOUT):
            while data := await client.receive_some():
                got += data
        assert sorted(got.split(b";")) == [b"", b"ab", b"abc", b"xyz"]  # echoed unchanged
        s = proxy.statistics()
        assert (s.msgs, s.redirected) == (3, 3)
        assert [b.msgs for b in s.backends] == [2, 1]
        assert proxy.parser.statistics().run_cnt >= 3
        await client.aclose()


async def test_a_verdict_that_raises_drops_the_message_and_counts_an_error(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = write_policy(tmp_path, """
        import skmsg_core as sk

        def verdict(skb, backends):
            if bytes(skb.data[4:]) == b"boom":
                raise RuntimeError("kaboom")
            return sk.sk_redirect_map(skb, backends, 0, 0)
    """)
    caplog.set_level(logging.WARNING, logger="skmsg")
    async with proxy_running(policy=policy) as proxy:
        client = await connect(proxy)
        reader = Reader(client)
        await client.send_all(frame(b"boom") + frame(b"fine"))
        assert await reader.messages(1) == [b"[backend 0] fine"]
        s = proxy.statistics()
        assert (s.msgs, s.dropped, s.redirected, s.policy_errors) == (2, 1, 1, 1)
        assert 'event=policy_error policy=' in caplog.text
        assert 'error="RuntimeError: kaboom" dropped=message' in caplog.text
        await client.aclose()


async def test_pass_without_redirect_is_delivered_to_the_proxy_and_counted(
    tmp_path: pathlib.Path,
) -> None:
    policy = write_policy(tmp_path, """
        import skmsg_core as sk

        def verdict(skb, backends):
            if bytes(skb.data[4:5]) == b"p":
                return sk.SK_PASS
            return sk.sk_redirect_map(skb, backends, 1, 0)
    """)
    async with proxy_running(policy=policy) as proxy:
        client = await connect(proxy)
        reader = Reader(client)
        await client.send_all(frame(b"pass me") + frame(b"route me"))
        assert await reader.messages(1) == [b"[backend 1] route me"]
        s = proxy.statistics()
        assert (s.passed, s.redirected, s.dropped) == (1, 1, 0)
        await client.aclose()


# -- lifecycle ---------------------------------------------------------------------------


async def test_client_eof_is_passed_on_and_the_session_is_torn_down() -> None:
    a, b = Backend("a"), Backend("b")
    async with backends(a, b), proxy_running(backends=(a.address, b.address)) as proxy:
        client = await connect(proxy)
        reader = Reader(client)
        await client.send_all(frame(b"x") + frame(b"y"))
        assert sorted(await reader.messages(2)) == [b"[a] x", b"[b] y"]
        await client.send_eof()
        assert await reader.until_eof() == []
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert (a.eofs, b.eofs) == (2, 2)  # the probe's, then the client's, passed on
        s = proxy.statistics()
        assert (s.clients_open, s.clients_total, s.userspace_clients) == (0, 1, 0)
        assert proxy.sessions == {}
        assert len(proxy.clients) == 0


async def test_a_client_that_half_closed_before_it_was_accepted_is_carried_in_user_space(
    tmp_path: pathlib.Path,
) -> None:
    """The kernel refuses a CLOSE_WAIT socket into a map; the same programs then
    run in user space for that client (see the _proxy module docstring)."""
    a, z = Backend("a"), Backend("z")
    policy = write_policy(tmp_path, ROUTE_BY_FIRST_BYTE)
    async with backends(a, z), proxy_running(
        backends=(a.address, z.address), policy=policy
    ) as proxy:
        addr = proxy.listen[0]
        # blocking calls: the proxy cannot accept before the FIN is in
        raw = socket.create_connection((addr.host, addr.port))
        raw.sendall(frame(b"apple") + frame(b"!drop") + frame(b"zebra") + frame(b"fig"))
        raw.shutdown(socket.SHUT_WR)
        raw.setblocking(False)
        client = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
        got = await Reader(client).until_eof()
        assert sorted(got) == [b"[a] apple", b"[a] fig", b"[z] zebra"]
        s = proxy.statistics()
        assert (s.userspace_clients, s.msgs, s.dropped, s.redirected) == (1, 4, 1, 3)
        assert [(b.msgs, b.reply_bytes) for b in s.backends] == [(2, 13 + 11), (1, 13)]
        assert "1 half-closed early, carried in user space" in format_table(s)
        await client.aclose()


async def test_a_backend_closing_its_connection_costs_the_client_nothing() -> None:
    """A backend that closes each connection after one answer (owing nothing):
    the client stays, and its next message goes over a new connection."""
    a = Backend("a", close_after=1)
    async with backends(a), proxy_running(backends=(a.address,)) as proxy:
        client = await connect(proxy)
        reader = Reader(client)
        for n, payload in enumerate((b"first", b"second", b"third"), 1):
            await client.send_all(frame(payload))
            assert await reader.messages(1) == [b"[a] " + payload]
            with trio.fail_after(TIMEOUT):  # the proxy saw that connection end
                await proxy.counters.wait_for(
                    lambda n=n: proxy.counters.backends[0].closed["eof"] == n)
        s = proxy.statistics()
        assert (s.clients_open, s.backend_lost, s.backends[0].connects) == (1, 0, 3)
        assert s.backends[0].up
        await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert proxy.statistics().clients_open == 0


async def test_a_client_over_max_clients_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="skmsg")
    async with proxy_running(max_clients=1) as proxy:
        first = await connect(proxy)
        reader = Reader(first)
        await first.send_all(frame(b"hi"))
        assert await reader.messages(1) == [b"[backend 0] hi"]
        second = await connect(proxy)
        with trio.fail_after(TIMEOUT):
            assert await second.receive_some() == b""
        assert "refused" in caplog.text
        assert "E2BIG" in caplog.text or "full" in caplog.text
        await first.aclose()
        await second.aclose()


async def test_a_backend_gone_after_start_closes_the_clients_whose_messages_it_had(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="skmsg")
    listening = trio.socket.socket()
    await listening.bind(("127.0.0.1", 0))
    listening.listen()  # the start-up probe connects into the backlog
    addr = Address.of(listening.getsockname())
    async with proxy_running(backends=(addr,)) as proxy:
        listening.close()
        client = await connect(proxy)
        await client.send_all(frame(b"nobody home"))
        with trio.fail_after(TIMEOUT):
            assert await client.receive_some() == b""
        s = proxy.statistics()
        assert (s.connect_errors, s.no_backend, s.client_closed["no_backend"]) == (1, 1, 1)
        assert not s.backends[0].up
        port = client.socket.getsockname()[1]
        assert (f"event=backend_connect_failed client=127.0.0.1:{port} backend={addr} "
                f'kind=connect error="connection refused (ECONNREFUSED)"') in caplog.text
        assert f"event=backend_down backend={addr} index=0" in caplog.text
        await client.aclose()


async def test_bulk_transfer_through_the_proxy_is_intact() -> None:
    """Large messages, many at once: the redirect path keeps order and bytes."""
    async with proxy_running(echo_backends=1) as proxy:
        client = await connect(proxy)
        reader = Reader(client)
        payloads = [bytes([i]) * (50_000 + i) for i in range(20)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"".join(frame(p) for p in payloads))
            got = await reader.messages(len(payloads))
        assert got == [b"[backend 0] " + p for p in payloads]
        await client.aclose()
