"""``skmsg proxy --udp`` end to end: a DNS-shaped client, two DNS backends, real
loopback sockets, the example policy routing queries by name."""

from __future__ import annotations

import pathlib
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from skmsg import Address, ProxyError
from skmsg._udp_proxy import UdpProxy, UdpProxyConfig, run_udp_proxy

from ._dns import answer, parse_question, query, read_answer

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICY = str(ROOT / "examples" / "dns_route.py")
TIMEOUT = 10


class DnsBackend:
    """A DNS server on 127.0.0.1 answering every A query with ``address``;
    records the names it was asked."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.names: list[str] = []
        self.where = Address("127.0.0.1", 0)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            self.where = Address.of(sock.getsockname())
            task_status.started()
            while True:
                data, peer = await sock.recvfrom(512)
                self.names.append(read_name(data))
                await sock.sendto(answer(data, self.address), peer)


def read_name(q: bytes) -> str:
    return parse_question(q)[1]


@asynccontextmanager
async def running(**kw: Any) -> AsyncIterator[tuple[UdpProxy, DnsBackend, DnsBackend]]:
    internal, public = DnsBackend("10.0.0.1"), DnsBackend("192.0.2.7")
    async with trio.open_nursery() as nursery:
        await nursery.start(internal.serve)
        await nursery.start(public.serve)
        config = UdpProxyConfig(
            listen=kw.pop("listen", Address("127.0.0.1", 0)),
            backends=(internal.where, public.where), **kw)
        proxy: UdpProxy = await nursery.start(run_udp_proxy, config)
        yield proxy, internal, public
        nursery.cancel_scope.cancel()


async def client_socket(proxy: UdpProxy) -> trio.socket.SocketType:
    """A plain UDP socket, as a stub resolver uses, connected to the proxy."""
    addr = proxy.listen[0]
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    await sock.connect((addr.host, addr.port))
    return sock


async def resolve(sock: trio.socket.SocketType, qid: int, name: str) -> str:
    await sock.send(query(qid, name))
    with trio.fail_after(TIMEOUT):
        got_id, got_name, address = read_answer(await sock.recv(512))
    assert (got_id, got_name) == (qid, name)
    return address


async def test_queries_are_routed_by_name_and_answers_reach_their_client() -> None:
    async with running(policy=POLICY) as (proxy, internal, public):
        clients = [await client_socket(proxy) for _ in range(3)]
        results: dict[tuple[int, str], str] = {}

        async def ask(i: int, sock: trio.socket.SocketType) -> None:
            for j, name in enumerate(("db.corp.example", "example.org", "CORP.example",
                                      f"host{i}.example.net")):
                qid = i * 100 + j
                results[(i, name)] = await resolve(sock, qid, name)

        async with trio.open_nursery() as nursery:
            for i, sock in enumerate(clients):
                nursery.start_soon(ask, i, sock)
        for (i, name), address in results.items():
            want = "10.0.0.1" if name.lower().endswith("corp.example") else "192.0.2.7"
            assert address == want, (i, name)
        assert sorted(internal.names) == sorted(["db.corp.example", "CORP.example"] * 3)
        assert len(public.names) == 6
        s = proxy.statistics()
        assert (s.msgs, s.redirected, s.dropped, s.clients_total, s.clients_open) == (
            12, 12, 0, 3, 3)
        assert [b.msgs for b in s.backends] == [6, 6]
        assert all(b.reply_bytes > 0 for b in s.backends)
        assert proxy.verdict.statistics().run_cnt == 12  # once per query
        for sock in clients:
            sock.close()


def _sockets_on_port(port: int) -> int:
    """How many UDP sockets (IPv4) are bound to ``port`` on this machine."""
    with open("/proc/net/udp", encoding="ascii") as f:
        next(f)
        return sum(int(line.split()[1].rsplit(":", 1)[1], 16) == port for line in f)


async def test_clients_cost_no_socket_on_the_listened_address() -> None:
    """Each client is a slot that sends from the listener: however many
    sessions are open, the listened port has one socket, so the kernel's
    lookup for every datagram that reaches it stays one socket long; and a
    reply still comes from that address (the client sockets are connected to
    it, and take nothing else)."""
    async with running(policy=POLICY) as (proxy, internal, _):
        port = proxy.listen[0].port
        clients = [await client_socket(proxy) for _ in range(40)]
        for i, sock in enumerate(clients):
            assert await resolve(sock, i, f"h{i}.corp.example") == "10.0.0.1"
        assert proxy.statistics().clients_open == 40
        assert len(internal.names) == 40
        assert _sockets_on_port(port) == 1
        for sock in clients:
            sock.close()


async def test_junk_is_dropped_and_counted_and_the_client_still_served() -> None:
    async with running(policy=POLICY) as (proxy, internal, public):
        sock = await client_socket(proxy)
        await sock.send(b"not a dns query")
        await sock.send(answer(query(1, "x.example"), "1.2.3.4"))  # a response, not a query
        assert await resolve(sock, 7, "www.example.com") == "192.0.2.7"
        s = proxy.statistics()
        assert (s.msgs, s.dropped, s.redirected) == (3, 2, 1)
        assert public.names == ["www.example.com"] and internal.names == []
        sock.close()


async def test_ipv6_clients_are_served() -> None:
    async with running(policy=POLICY, listen=Address("::1", 0)) as (proxy, internal, _):
        sock = await client_socket(proxy)
        assert await resolve(sock, 42, "mail.corp.example") == "10.0.0.1"
        assert internal.names == ["mail.corp.example"]
        sock.close()


async def test_an_idle_session_expires_and_a_new_one_opens() -> None:
    """An idle session ends; its sockets are kept for the next client (the same
    one here), and closed once unused for the idle timeout."""
    async with running(policy=POLICY, idle_timeout=0.05) as (proxy, *_):
        sock = await client_socket(proxy)
        assert await resolve(sock, 1, "a.example") == "192.0.2.7"
        with trio.fail_after(TIMEOUT):
            while proxy.statistics().clients_open:
                await trio.sleep(0.02)
        assert len(proxy.clients) == 1 and not proxy.sessions  # kept, serving nobody
        assert await resolve(sock, 2, "b.corp.example") == "10.0.0.1"
        s = proxy.statistics()
        assert (s.clients_total, s.msgs, s.redirected) == (2, 2, 2)
        assert len(proxy.clients) == 1  # the kept socket serves the new session
        assert proxy.closed == {"idle": 1}
        with trio.fail_after(TIMEOUT):
            while len(proxy.clients):  # idle again, then unused: closed
                await trio.sleep(0.02)
        assert proxy.closed == {"idle": 2}
        sock.close()


async def test_a_policy_that_raises_drops_and_counts(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "boom.py"
    policy.write_text(textwrap.dedent("""
        import skmsg_core as sk
        def verdict(skb, backends):
            if bytes(skb.data[-1:]) == b"!":
                raise ValueError("no shouting")
            return sk.sk_redirect_map(skb, backends, 1, 0)
    """))
    async with running(policy=str(policy)) as (proxy, *_):
        sock = await client_socket(proxy)
        await sock.send(b"!")
        assert await resolve(sock, 3, "ok.example") == "192.0.2.7"
        s = proxy.statistics()
        assert (s.policy_errors, s.dropped, s.redirected) == (1, 1, 1)
        sock.close()


async def test_a_full_proxy_gives_an_answered_sessions_sockets_to_a_new_client(
        caplog: pytest.LogCaptureFixture) -> None:
    """At max_clients, the least recently active session whose query was
    answered gives way (evicted): the new client is served, and so is the old
    one when it comes back (on a new session)."""
    caplog.set_level("INFO", "skmsg")
    async with running(policy=POLICY, max_clients=1) as (proxy, *_):
        first, second = await client_socket(proxy), await client_socket(proxy)
        assert await resolve(first, 1, "a.example") == "192.0.2.7"
        assert await resolve(second, 2, "b.corp.example") == "10.0.0.1"
        assert await resolve(first, 3, "c.example") == "192.0.2.7"
        s = proxy.statistics()
        assert (s.clients_total, s.clients_open, s.connect_errors) == (3, 1, 0)
        assert proxy.closed == {"evicted": 2} and len(proxy.clients) == 1
        evicted = [r.getMessage() for r in caplog.records if "reason=evicted" in r.getMessage()]
        assert len(evicted) == 2 and evicted[0].startswith("event=client_closed client=127.0.0.1:")
        assert "datagrams_in=1 bytes_in=" in evicted[0] and "datagrams_out=1 " in evicted[0]
        first.close()
        second.close()


async def test_a_full_proxy_refuses_when_every_session_waits_for_a_reply(
        caplog: pytest.LogCaptureFixture) -> None:
    """A session whose request is unanswered is not evicted: with max_clients
    of them the next client is refused, clearly."""
    silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a backend that never answers
    await silent.bind(("127.0.0.1", 0))
    async with trio.open_nursery() as nursery:
        config = UdpProxyConfig(listen=Address("127.0.0.1", 0),
                                backends=(Address.of(silent.getsockname()),), max_clients=1)
        proxy: UdpProxy = await nursery.start(run_udp_proxy, config)
        first, second = await client_socket(proxy), await client_socket(proxy)
        await first.send(query(1, "a.example"))
        with trio.fail_after(TIMEOUT):
            await silent.recv(512)  # it reached the backend: the session waits
        await second.send(query(2, "b.example"))
        with trio.fail_after(TIMEOUT):
            while not proxy.statistics().connect_errors:
                await trio.sleep(0.01)
        line = next(r.getMessage() for r in caplog.records
                    if r.getMessage().startswith("event=client_refused "))
        assert "reason=max_clients max_clients=1" in line
        assert 'error="every session is waiting for a reply"' in line
        assert proxy.statistics().clients_open == 1 and not proxy.closed
        first.close()
        second.close()
        nursery.cancel_scope.cancel()
    silent.close()


# -- bad input is refused before it starts ------------------------------------------------


async def test_bad_configuration_is_a_proxy_error(tmp_path: pathlib.Path) -> None:
    parse = tmp_path / "parse.py"
    parse.write_text("def verdict(skb, backends):\n    return 0\n"
                     "def parse(skb):\n    return skb.len\n")
    with pytest.raises(ProxyError, match=r"defines parse.*every datagram is one message"):
        await run_udp_proxy(UdpProxyConfig(listen=Address("127.0.0.1", 0), policy=str(parse)))
    with pytest.raises(ProxyError, match=r"--backend no-such-host\.invalid:53: unreachable"):
        await run_udp_proxy(UdpProxyConfig(listen=Address("127.0.0.1", 0),
                                           backends=(Address("no-such-host.invalid", 53),)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(ProxyError, match=rf"--listen 127.0.0.1:{port}: cannot listen: "
                                             r".*EADDRINUSE"):
            await run_udp_proxy(UdpProxyConfig(listen=Address("127.0.0.1", port)))


# -- the command ------------------------------------------------------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "skmsg", *args]


def test_udp_demo_exits_0_and_prints_the_replies() -> None:
    done = subprocess.run(command("proxy", "--udp", "--demo"), capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "one message per datagram" in done.stdout
    for i, p in enumerate((b"hello", b"kiwi", b"zebra", b"!secret")):
        assert f"demo: sent {p!r}  ->  reply {b'[backend %d] ' % (i % 2) + p!r}" in done.stdout
    assert re.search(r"all clients\s+4\s+21\s+0\s+0\s+4\s", done.stderr)
    assert "Traceback" not in done.stderr


def test_udp_with_a_policy_that_parses_exits_2_with_one_line(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "p.py"
    policy.write_text("def verdict(skb, backends):\n    return 0\n"
                      "def parse(skb):\n    return skb.len\n")
    done = subprocess.run(command("proxy", "--udp", "--policy", str(policy)),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "skmsg proxy: error: --policy" in done.stderr
    assert "every datagram is one message" in done.stderr


@pytest.mark.parametrize("flag", ["--tls", "--backend-tls"])
def test_udp_with_tls_options_exits_2_with_one_line(flag: str) -> None:
    """The TLS options need a stream; with --udp they are refused, not ignored."""
    backend = ["--backend", "127.0.0.1:9"] if flag == "--backend-tls" else []
    args = ["proxy", "--udp", flag, *backend]
    done = subprocess.run(command(*args), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--tls/--backend-tls need TCP" in done.stderr


async def test_the_example_policy_routes_in_the_command_too() -> None:
    internal, public = DnsBackend("10.0.0.1"), DnsBackend("192.0.2.7")
    async with trio.open_nursery() as nursery:
        await nursery.start(internal.serve)
        await nursery.start(public.serve)
        proc = await nursery.start(lambda task_status: trio.run_process(
            command("proxy", "--udp", "--listen", "127.0.0.1:0", "--policy", POLICY,
                    "--backend", str(internal.where), "--backend", str(public.where),
                    "--stats-interval", "0.05"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
            task_status=task_status))
        assert proc.stdout is not None and proc.stderr is not None
        out = b""
        with trio.fail_after(TIMEOUT):
            while (m := re.search(rb"listening on 127\.0\.0\.1:(\d+)\n", out)) is None:
                chunk = await proc.stdout.receive_some()
                assert chunk, out
                out += chunk
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.connect(("127.0.0.1", int(m.group(1))))
        assert await resolve(sock, 9, "vpn.corp.example") == "10.0.0.1"
        assert await resolve(sock, 10, "python.org") == "192.0.2.7"
        sock.close()
        err = b""
        with trio.fail_after(TIMEOUT):
            while not re.search(rb"all clients +2 ", err):  # the live counters saw both
                chunk = await proc.stderr.receive_some()
                assert chunk, err
                err += chunk
        proc.terminate()
        with trio.fail_after(TIMEOUT):
            while chunk := await proc.stderr.receive_some():
                err += chunk
            assert await proc.wait() == 0
        nursery.cancel_scope.cancel()
    tail = err[err.index(b"SIGTERM"):]
    assert b"Traceback" not in err
    assert re.search(rb"clients 0 open, 1 total", tail)
    assert re.search(rb"all clients +2 +\d+ +0 +0 +2 ", tail)


async def test_a_reload_routes_the_same_clients_next_queries_and_refuses_a_parse(
    tmp_path: pathlib.Path,
) -> None:
    """The UDP proxy reloads its policy as the TCP one does (SIGHUP calls
    ``reload_policy``): a session open across the reload is routed by the new
    generation; a file with ``parse`` (which --udp does not use) is refused."""
    route = tmp_path / "route.py"
    source = ("import skmsg_core as sk\n"
              "def verdict(skb, backends):\n"
              "    return sk.sk_redirect_map(skb, backends, {}, 0)\n")
    route.write_text(source.format(0))
    async with running(policy=str(route)) as (proxy, internal, public):
        sock = await client_socket(proxy)
        assert await resolve(sock, 1, "a.example") == "10.0.0.1"
        route.write_text(source.format(1))
        assert proxy.reload_policy()
        assert await resolve(sock, 2, "b.example") == "192.0.2.7"  # the same session
        route.write_text(source.format(0) + "def parse(skb):\n    return skb.len\n")
        assert not proxy.reload_policy()
        assert await resolve(sock, 3, "c.example") == "192.0.2.7"  # generation 2 kept
        s = proxy.statistics()
        assert (s.policy_generation, s.policy_reloads, s.policy_reload_errors) == (2, 1, 1)
        assert s.policy_verdicts == {"1": 1, "2": 2}
        assert (internal.names, public.names) == (["a.example"], ["b.example", "c.example"])
        sock.close()
