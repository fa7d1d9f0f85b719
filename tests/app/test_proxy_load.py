"""``skmsg proxy`` under load: a thousand clients connecting at once, and more
clients than the process has file descriptors for (the real ``skmsg`` command
in a subprocess with ``RLIMIT_NOFILE`` lowered). Real loopback sockets, real
trio backends; every client's reply checked, the counters and the log read."""

from __future__ import annotations

import pathlib
import re
import resource
import signal
import sys
import urllib.request

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import skmsg_tcp
from skmsg._session import BackendSlot, ReplyLane, Session
from skmsg._upstream import BackendConn
from tests._freed import alive, collector_off

from ._backends import Backend, Client, Metrics, frame, proxy_running, serving

SKMSG = pathlib.Path(sys.executable).with_name("skmsg")  # the console script
TIMEOUT = 120  # a guard against hangs; each wait below ends on an event


async def read_reply(stream: trio.SocketStream) -> bytes:
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
        data = await stream.receive_some()
        assert data, f"closed after {buf!r}"
        buf += data
    return buf[4:]


async def test_a_thousand_clients_connecting_at_once_are_all_served() -> None:
    n = 1000
    async with proxy_running(max_clients=2 * n) as proxy:
        addr = proxy.listen[0]
        replies: dict[int, bytes] = {}
        all_served = trio.Event()

        async def client(i: int) -> None:
            sock = trio.socket.socket()
            await sock.connect((addr.host, addr.port))
            async with trio.SocketStream(sock) as stream:
                await stream.send_all(frame(b"client %d" % i))
                replies[i] = await read_reply(stream)
                if len(replies) == n:
                    all_served.set()
                await all_served.wait()  # every one of them open at once

        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(client, i)
                await all_served.wait()
                s = proxy.statistics()
                assert (s.clients_open, s.clients_total) == (n, n)
        assert sorted(replies) == list(range(n))
        for i, reply in replies.items():
            assert reply.endswith(b"] client %d" % i) and reply.startswith(b"[backend ")
        with trio.fail_after(TIMEOUT):
            await proxy.counters.wait_for(lambda: proxy.counters.clients_open == 0)
        s = proxy.statistics()
        assert s.client_closed["refused"] == s.client_closed["error"] == 0
        assert s.connect_errors == s.no_backend == s.backend_lost == 0
        assert sum(b.connects for b in s.backends) == n  # one backend connection each
        m = Metrics(proxy)
        assert m("skmsg_proxy_clients_total") == n
        assert m("skmsg_proxy_clients_closed_total") == n
        assert m("skmsg_proxy_clients_closed_total", reason="done") == n  # each said EOF
        assert m("skmsg_proxy_backend_connects_total") == n
        assert m("skmsg_proxy_accept_paused_total") == 0


async def test_a_closed_clients_objects_are_freed_without_the_garbage_collector() -> None:
    """What served a client (its session, slots, connections, reply lanes,
    streams) is freed when it closes, by reference counting: none of it is
    left in cycles for the collector, whose full collections come rarely."""
    a, b = Backend("a"), Backend("b")
    async with serving(a, b), proxy_running(backends=(a.address, b.address)) as proxy:
        with collector_off():
            for i in range(20):  # each client reaches both backends (round-robin)
                client = await Client.connect(proxy)
                await client.send(b"x%d" % i)
                await client.send(b"y%d" % i)
                got = sorted(m[4:] for m in await client.replies(2))
                assert got == [b"x%d" % i, b"y%d" % i]
                await client.aclose()
            with trio.fail_after(TIMEOUT):
                await proxy.counters.wait_for(lambda: proxy.counters.clients_open == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert sum(b.connects for b in proxy.statistics().backends) == 40
            assert alive(Session, BackendSlot, ReplyLane, BackendConn, skmsg_tcp.SkStream) == {}


class Lines:
    """A subprocess pipe, read line by line into ``text``."""

    def __init__(self, stream: trio.abc.ReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.text = ""

    async def until(self, pattern: str) -> re.Match[str]:
        while (m := re.search(pattern, self.text)) is None:
            chunk = await self.stream.receive_some()
            assert chunk, f"EOF before {pattern!r}:\n{self.text}"
            self.text += chunk.decode()
        return m

    async def rest(self) -> str:
        while chunk := await self.stream.receive_some():
            self.text += chunk.decode()
        return self.text


def _scrape(url: str) -> dict[str, float]:
    """GET ``url`` (a proxy's /metrics): each sample's value by name (summed over labels)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _low_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


async def test_out_of_file_descriptors_clients_wait_one_line_says_so_and_all_are_served() -> None:
    n = 150  # at 256 descriptors the proxy holds about 110 at once, with their backends
    started = trio.current_time()
    backend = Backend("b")
    async with serving(backend):
        proc = await trio.lowlevel.open_process(
            [str(SKMSG), "proxy", "--listen", "127.0.0.1:0", "--backend", str(backend.address),
             "--stats-interval", "0", "--metrics", "127.0.0.1:0"],
            stdout=-1, stderr=-1, preexec_fn=_low_nofile,
        )
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            with trio.fail_after(TIMEOUT):
                port = int((await out.until(r"listening on 127\.0\.0\.1:(\d+)"))[1])
                metrics_url = (await out.until(r"metrics on (http://\S+/metrics)"))[1]
                replies: dict[int, bytes] = {}
                release = trio.Event()
                done = trio.Event()

                async def client(i: int) -> None:
                    sock = trio.socket.socket()
                    await sock.connect(("127.0.0.1", port))  # into the backlog at least
                    async with trio.SocketStream(sock) as stream:
                        await stream.send_all(frame(b"client %d" % i))
                        replies[i] = await read_reply(stream)
                        if len(replies) == n:
                            done.set()
                        await release.wait()  # hold the proxy's descriptors

                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(client, i)
                    line = await err.until(r"event=accept_paused .*fd_limit=256 waiting=(\d+)")
                    assert int(line[1]) > 0
                    assert len(replies) < n  # some wait, none is refused or lost
                    release.set()  # the first ones leave; the rest get their turn
                    await done.wait()
                assert sorted(replies) == list(range(n))
                assert all(replies[i] == b"[b] client %d" % i for i in range(n))
                metrics = await trio.to_thread.run_sync(_scrape, metrics_url)
                assert metrics["skmsg_proxy_accept_paused_total"] >= 1
                assert metrics["skmsg_proxy_fd_limit"] == 256
                assert metrics["skmsg_proxy_clients_total"] == n
                proc.send_signal(signal.SIGINT)
                assert await proc.wait() == 0
                text = await err.rest()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "Traceback" not in text
    # once per interval (10 s) for each of its two causes
    took = trio.current_time() - started
    assert len(re.findall("event=accept_paused", text)) <= 2 * (1 + int(took / 10))
    assert 'error="at the file descriptor limit (RLIMIT_NOFILE)" fd_limit=256' in text
    assert "accept paused at fd limit" in text  # the final counters
    closed = re.search(r"clients closed: (.*)", text)
    assert closed is not None and "done" in closed[1]
    for bad in ("refused", "error", "no_backend", "backend_lost"):
        assert bad not in closed[1]  # the ones that waited were served, not dropped
