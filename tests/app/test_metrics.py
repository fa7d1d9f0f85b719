"""``skmsg proxy --metrics``: /metrics scraped over HTTP from a running proxy (real
backends, real clients), the values moving as traffic flows; the command's
flag; statistics fields exported from their attrs records."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import skmsg_core as sk
from bench._dns_peers import dns_servers
from skmsg import Address, Proxy, ProxyConfig, run_proxy
from skmsg._metrics import MetricsServer, Snapshot, render, snapshot, start_metrics
from skmsg._stats import BackendStats, ProxyStats
from skmsg._udp_proxy import UdpProxy, UdpProxyConfig, run_udp_proxy
from tests.udp._dns import query, read_answer

TIMEOUT = 10

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels`` (summed if several)."""
    found = [v for (n, lab), v in samples.items()
             if n == name and all((k, w) in lab for k, w in labels.items())]
    assert found, f"no sample {name} {labels} in {sorted({n for n, _ in samples})}"
    return sum(found)


async def scrape(server: MetricsServer) -> Samples:
    """GET /metrics over HTTP, from a thread (the scrape needs the trio loop)."""
    url = f"http://{server.address}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())

    return parse(await trio.to_thread.run_sync(get))


@asynccontextmanager
async def metrics_of(proxy: Proxy | UdpProxy) -> AsyncIterator[MetricsServer]:
    server = start_metrics(proxy, Address("127.0.0.1", 0), trio.lowlevel.current_trio_token())
    try:
        yield server
    finally:
        await trio.to_thread.run_sync(server.close)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def round_trip(stream: trio.SocketStream, payload: bytes) -> bytes:
    await stream.send_all(frame(payload))
    want = 4 + len(b"[backend 0] ") + len(payload)
    got = b""
    with trio.fail_after(TIMEOUT):
        while len(got) < want:
            chunk = await stream.receive_some()
            assert chunk
            got += chunk
    return got[4:]


async def test_tcp_metrics_move_as_traffic_flows() -> None:
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(run_proxy, ProxyConfig(listen=Address("127.0.0.1", 0)))
        async with metrics_of(proxy) as server:
            before = await scrape(server)
            assert value(before, "skmsg_proxy_messages_total", proto="tcp") == 0
            assert value(before, "skmsg_proxy_clients_open", proto="tcp") == 0
            assert value(before, "skmsg_proxy_info", proto="tcp", policy="round-robin") == 1
            assert value(before, "skmsg_proxy_listen_backlog") > 0  # from /proc/net/tcp
            assert value(before, "process_open_fds") > 0

            addr = proxy.listen[0]
            client = await trio.open_tcp_stream(addr.host, addr.port)
            for payload in (b"one", b"two", b"three"):
                assert (await round_trip(client, payload)).endswith(payload)
            during = await scrape(server)
            assert value(during, "skmsg_proxy_clients_open", proto="tcp") == 1
            assert value(during, "skmsg_proxy_clients_total", proto="tcp") == 1
            assert value(during, "skmsg_proxy_messages_total") == 3
            assert value(during, "skmsg_proxy_message_bytes_total") == 3 * 4 + 11
            assert value(during, "skmsg_proxy_verdicts_total", verdict="redirect") == 3
            assert value(during, "skmsg_proxy_verdicts_total", verdict="drop") == 0
            b0, b1 = ({"index": str(i)} for i in range(2))
            assert value(during, "skmsg_proxy_backend_messages_total", **b0) == 2
            assert value(during, "skmsg_proxy_backend_messages_total", **b1) == 1
            assert value(during, "skmsg_proxy_backend_connections", **b0) == 1
            assert value(during, "skmsg_proxy_backend_reply_bytes_total", **b0) > 0
            # every reply's latency observed, on the backend it came from
            assert value(during, "skmsg_proxy_backend_reply_latency_seconds_count", **b0) == 2
            assert value(during, "skmsg_proxy_backend_reply_latency_seconds_count", **b1) == 1
            assert value(during, "skmsg_proxy_backend_reply_latency_seconds_bucket",
                         le="+Inf", **b1) == 1
            assert 0 < value(during, "skmsg_proxy_backend_reply_latency_seconds_sum") < TIMEOUT
            assert value(during, "skmsg_proxy_program_runs_total",
                         program="verdict (round-robin)") == 3
            assert value(during, "skmsg_proxy_program_run_seconds_total",
                         program="verdict (round-robin)") > 0  # counted while --metrics is on
            assert value(during, "skmsg_proxy_program_errors_total") == 0

            await client.aclose()
            with trio.fail_after(TIMEOUT):
                while value(after := await scrape(server), "skmsg_proxy_clients_open") != 0:
                    await trio.sleep(0.02)
            assert value(after, "skmsg_proxy_clients_closed_total", proto="tcp",
                         reason="done") == 1
            assert value(after, "skmsg_proxy_backend_connections") == 0
        assert not sk.stats_enabled()  # the server turned run-time accounting on, then off
        nursery.cancel_scope.cancel()


async def test_udp_metrics_move_with_dns_queries() -> None:
    """Real DNS servers (dnslib) behind the proxy; each query from its own socket."""
    with dns_servers() as (internal, public):
        config = UdpProxyConfig(listen=Address("127.0.0.1", 0), idle_timeout=0.2,
                                backends=(Address("127.0.0.1", internal),
                                          Address("127.0.0.1", public)),
                                policy="examples/dns_route.py")
        async with trio.open_nursery() as nursery:
            proxy: UdpProxy = await nursery.start(run_udp_proxy, config)
            async with metrics_of(proxy) as server:
                names = ["a.corp.example", "b.example.org", "c.example.org"]
                for i, name in enumerate(names):
                    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    with sock:
                        await sock.connect((proxy.listen[0].host, proxy.listen[0].port))
                        await sock.send(query(i, name))
                        with trio.fail_after(TIMEOUT):
                            assert read_answer(await sock.recv(512))[:2] == (i, name)
                s = await scrape(server)
                assert value(s, "skmsg_proxy_clients_total", proto="udp") == 3
                assert value(s, "skmsg_proxy_messages_total", proto="udp") == 3
                assert value(s, "skmsg_proxy_backend_messages_total", index="0") == 1
                assert value(s, "skmsg_proxy_backend_messages_total", index="1") == 2
                assert value(s, "skmsg_proxy_backend_reply_latency_seconds_count") == 3
                assert value(s, "skmsg_proxy_udp_socket_sets") == 3
                assert value(s, "skmsg_proxy_udp_reply_send_drops_total") == 0
                assert value(s, "skmsg_proxy_listen_drops_total") == 0  # /proc/net/udp
                assert value(s, "skmsg_proxy_program_runs_total", program="reply") == 3
                with trio.fail_after(TIMEOUT):  # the sessions go idle and end
                    while value(s := await scrape(server), "skmsg_proxy_clients_open"):
                        await trio.sleep(0.05)
                assert value(s, "skmsg_proxy_clients_closed_total", reason="idle") == 3
            nursery.cancel_scope.cancel()


# -- statistics fields show up without code ------------------------------------------------


@attrs.frozen
class MoreBackendStats(BackendStats):
    spares: int = 0
    probe_errors: int = 0
    warm: bool = True


@attrs.frozen
class MoreProxyStats(ProxyStats):
    drains: dict[str, int] = attrs.field(factory=dict)
    oversized: int = attrs.field(default=0, metadata={
        "metric": "skmsg_proxy_http_413", "help": "Requests refused 413."})


def _render(stats: ProxyStats, closed: dict[str, int]) -> Samples:
    snap = Snapshot("tcp", "p", stats, (), (), (1,), closed, 0, ())

    class One(Collector):
        def collect(self) -> Any:
            return render(snap)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    return parse(generate_latest(registry).decode())  # a valid exposition, parsed back


def test_a_field_added_to_the_statistics_is_exported() -> None:
    base = ProxyStats(("127.0.0.1:7000",), 1.0, 0, 5, 0, 9, 90, 0, 1, 8, 0, 0, 0, 0, ())
    backend = MoreBackendStats("127.0.0.1:9001", 8, 80, 0, 40, 0, spares=7, probe_errors=2,
                               warm=False)
    stats = MoreProxyStats(**{**attrs.asdict(base, recurse=False), "backends": (backend,)},
                           drains={"slow": 2, "fast": 1}, oversized=4)
    s = _render(stats, {"done": 5})
    assert value(s, "skmsg_proxy_drains_total", reason="slow") == 2
    assert value(s, "skmsg_proxy_drains_total", reason="fast") == 1
    assert value(s, "skmsg_proxy_http_413_total") == 4
    assert value(s, "skmsg_proxy_backend_warm", backend="127.0.0.1:9001") == 0
    assert value(s, "skmsg_proxy_backend_errors_total", reason="probe") == 2
    assert value(s, "skmsg_proxy_backend_spares_total") == 7
    assert value(s, "skmsg_proxy_messages_total") == 9
    assert value(s, "skmsg_proxy_clients_closed_total", reason="done") == 5


def test_the_load_balancers_counters_are_metrics() -> None:
    """Health, failover and timeout counters, per backend and for the proxy."""
    backend = BackendStats(
        "127.0.0.1:9001", 8, 80, 0, 40, 0, up=False, downs=2, connects=7, connect_errors=3,
        conns_open=4, checks=5, check_failures=1, unavailable=6, rerouted=6, backend_lost=3,
        timeouts={"connect": 2, "handshake": 0, "response": 1, "write": 0},
        closed={"eof": 1, "reset": 3, "idle": 0, "response_timeout": 1, "write_timeout": 0,
                "client": 2},
    )
    base = ProxyStats(("127.0.0.1:7000",), 1.0, 0, 5, 0, 9, 90, 0, 1, 8, 0, 0, 0, 0,
                      (backend,), timeouts={"idle": 1, "write": 2, "handshake": 3},
                      too_large=4, rerouted=6, no_backend=1, backend_lost=3, accept_paused=2,
                      fd_limit=1024)
    s = _render(base, {"backend_lost": 3, "done": 0})
    b = {"backend": "127.0.0.1:9001", "index": "0"}
    assert value(s, "skmsg_proxy_backend_up", **b) == 0
    assert value(s, "skmsg_proxy_backend_downs_total", **b) == 2
    assert value(s, "skmsg_proxy_backend_connects_total", **b) == 7
    assert value(s, "skmsg_proxy_backend_connect_errors_total", **b) == 3
    assert value(s, "skmsg_proxy_backend_connections", **b) == 1  # the snapshot's, not conns_open
    assert value(s, "skmsg_proxy_backend_checks_total", **b) == 5
    assert value(s, "skmsg_proxy_backend_check_failures_total", **b) == 1
    assert value(s, "skmsg_proxy_backend_unavailable_messages_total", **b) == 6
    assert value(s, "skmsg_proxy_backend_rerouted_messages_total", **b) == 6
    assert value(s, "skmsg_proxy_backend_lost_clients_total", **b) == 3
    assert value(s, "skmsg_proxy_backend_timeouts_total", kind="response", **b) == 1
    assert value(s, "skmsg_proxy_backend_connections_closed_total", reason="reset", **b) == 3
    assert value(s, "skmsg_proxy_timeouts_total", kind="handshake") == 3
    assert value(s, "skmsg_proxy_messages_too_large_total") == 4
    assert value(s, "skmsg_proxy_messages_rerouted_total") == 6
    assert value(s, "skmsg_proxy_messages_undeliverable_total") == 1
    assert value(s, "skmsg_proxy_accept_paused_total") == 2
    assert value(s, "skmsg_proxy_fd_limit") == 1024
    assert value(s, "skmsg_proxy_clients_closed_total", reason="backend_lost") == 3
    names = {n for n, _ in s}
    assert "skmsg_proxy_client_closed_total" not in names  # one family for closes
    assert "skmsg_proxy_backend_conns_open_total" not in names


async def test_a_scrape_sees_one_moment(autojump_clock: trio.testing.MockClock) -> None:
    """The snapshot is taken on the trio thread: the statistics of one call."""
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(run_proxy, ProxyConfig(listen=Address("127.0.0.1", 0)))
        snap = snapshot(proxy)
        assert snap.proto == "tcp" and snap.connections == (0, 0)
        assert [p.name for p in snap.programs] == ["verdict (round-robin)", "reply",
                                                     "parse (length-prefixed)"]
        nursery.cancel_scope.cancel()


# -- the command ---------------------------------------------------------------------------


@contextmanager
def command(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    proc = subprocess.Popen([sys.executable, "-m", "skmsg", "proxy", "--listen", "127.0.0.1:0",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        while "metrics" not in seen:
            line = proc.stdout.readline()
            assert line, proc.communicate(timeout=TIMEOUT)
            if m := re.search(r"listening on (\S+)$", line):
                seen["listen"] = m.group(1)
            if m := re.search(r"metrics on (http://\S+/metrics)$", line):
                seen["metrics"] = m.group(1)
        yield proc, seen
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def get(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return parse(response.read().decode())


def test_the_command_serves_metrics_that_move() -> None:
    with command("--metrics", "127.0.0.1:0") as (proc, seen):
        assert value(get(seen["metrics"]), "skmsg_proxy_messages_total") == 0
        host, port = seen["listen"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as c:
            c.sendall(frame(b"ping"))
            got = b""
            while len(got) < 4 + len(b"[backend 0] ping"):
                got += c.recv(100)
        s = get(seen["metrics"])
        assert value(s, "skmsg_proxy_messages_total") == 1
        assert value(s, "skmsg_proxy_backend_reply_latency_seconds_count") == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0


@pytest.mark.parametrize("bad", ["nothing", "127.0.0.1:99999", "[::1:80"])
def test_a_bad_metrics_address_exits_2_with_one_line(bad: str) -> None:
    done = subprocess.run([sys.executable, "-m", "skmsg", "proxy", "--metrics", bad],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--metrics" in done.stderr, done.stderr


def test_a_taken_metrics_port_exits_2_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "skmsg", "proxy", "--listen", "127.0.0.1:0",
                               "--metrics", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"skmsg proxy: error: --metrics 127.0.0.1:{port}: cannot listen: " in done.stderr
    assert "EADDRINUSE" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.count("listening on") <= 1
