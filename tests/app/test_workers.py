"""``skmsg proxy --workers N``: real worker processes on one SO_REUSEPORT address,
real clients; one set of counters and metrics; signals; a dying worker; bad
arguments; and the snapshot merge."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from skmsg._stats import BackendStats, ProxyStats
from skmsg._workers import merge
from tests.app.test_metrics import parse, value

TIMEOUT = 30.0


class Running:
    """A ``skmsg proxy --workers`` subprocess: its announced address, pids,
    metrics URL, and its stderr lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        self.port = 0
        self.pids: list[int] = []
        self.metrics = ""
        self.threads = [
            threading.Thread(target=self._pump, args=(proc.stderr, self.err), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stdout, self.out), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """After the process ended: the rest of its output read, the pipes closed."""
        for t in self.threads:
            t.join(timeout=TIMEOUT)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()

    def _pump(self, stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self.changed:
                into.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            into.append("")  # end of file
            self.changed.notify_all()

    def wait_for(self, pattern: str, where: list[str] | None = None, count: int = 1) -> list[str]:
        """Wait until ``count`` lines match ``pattern``; return them."""
        lines = self.err if where is None else where
        deadline = time.monotonic() + TIMEOUT
        with self.changed:
            while True:
                found = [x for x in lines if re.search(pattern, x)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                assert left > 0 and "" not in lines, (pattern, self.out, self.err)
                self.changed.wait(left)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.metrics, timeout=TIMEOUT) as response:
            return parse(response.read().decode())


@contextmanager
def workers(*args: str) -> Iterator[Running]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "skmsg", "proxy", "--listen", "127.0.0.1:0",
         "--stats-interval", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    run = Running(proc)
    try:
        line = run.wait_for(r"workers \(pids [\d, ]+\) sharing", run.out)[0]
        run.pids = [int(p) for p in re.findall(r"\d+", line.split("pids")[1].split(")")[0])]
        run.port = int(run.wait_for(r"listening on ", run.out)[0].rsplit(":", 1)[1])
        if "--metrics" in args:
            run.metrics = run.wait_for(r"metrics on ", run.out)[0].split("metrics on ")[1]
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        run.close()
        for pid in run.pids:
            _wait_gone(pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} still runs"
        time.sleep(0.05)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"closed after {got!r}"
        got += chunk
    return got


def converse(port: int, payloads: list[bytes]) -> list[bytes]:
    """Send each payload as a message on one connection; the replies' payloads."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
        c.sendall(b"".join(frame(p) for p in payloads))
        out = []
        for _ in payloads:
            (n,) = struct.unpack("!I", _recv_exactly(c, 4))
            out.append(_recv_exactly(c, n))
        return out


# -- serving ---------------------------------------------------------------------------------


def test_two_workers_share_the_clients_and_count_them_as_one() -> None:
    clients, per = 40, 5
    with workers("--workers", "2", "--metrics", "127.0.0.1:0") as run:
        assert len(run.pids) == 2 and all(_alive(p) for p in run.pids)
        sent = 0
        sent_bytes = 0
        for c in range(clients):
            payloads = [f"client {c} message {i}".encode() for i in range(per)]
            replies = converse(run.port, payloads)  # two backends: any order between them
            assert all(re.match(rb"\[backend [01]\] ", r) for r in replies), replies
            assert sorted(r[12:] for r in replies) == sorted(payloads)
            sent += len(payloads)
            sent_bytes += sum(4 + len(p) for p in payloads)
        s = run.scrape()
        assert value(s, "skmsg_proxy_messages_total") == sent
        assert value(s, "skmsg_proxy_message_bytes_total") == sent_bytes
        assert value(s, "skmsg_proxy_clients_total") == clients
        assert value(s, "skmsg_proxy_workers") == 2
        by_worker = {pid: value(s, "skmsg_proxy_worker_messages_total", pid=str(pid))
                     for pid in run.pids}
        assert sum(by_worker.values()) == sent
        # the kernel hashed 40 connections over both listeners (all on one: 2**-39)
        assert all(n > 0 for n in by_worker.values()), by_worker
        assert value(s, "skmsg_proxy_worker_cpu_seconds_total") > 0
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(timeout=60) == 0
        table = run.wait_for(r"^all clients ")[0].split()
        assert table[2:4] == [f"{sent:,}", f"{sent_bytes:,}"], table
        workers_line = run.wait_for(r"^workers: ")[0]
        for pid in run.pids:
            assert f"pid {pid}" in workers_line
        for pid in run.pids:
            _wait_gone(pid)


def test_workers_0_is_one_per_core() -> None:
    with workers("--workers", "0") as run:
        assert len(run.pids) == len(os.sched_getaffinity(0))
        assert converse(run.port, [b"hi"])[0].endswith(b"] hi")


def test_worker_select_cpu_accepts_each_connection_on_the_worker_pinned_to_its_cpu() -> None:
    """``--worker-select cpu``: worker ``i`` runs on the ``i``-th CPU, and the
    reuseport group's program hands a connection to the worker on the CPU that
    handled its SYN (on loopback, the connecting thread's)."""
    cpus = sorted(os.sched_getaffinity(0))
    per = 30
    with workers("--workers", "0", "--worker-select", "cpu", "--metrics", "127.0.0.1:0") as run:
        assert [os.sched_getaffinity(pid) for pid in run.pids] == [{c} for c in cpus]

        def served() -> list[float]:
            s = run.scrape()
            return [value(s, "skmsg_proxy_worker_messages_total", pid=str(pid))
                    for pid in run.pids]

        def connect_from(cpu: int) -> None:
            os.sched_setaffinity(0, {cpu})  # this thread only
            for i in range(per):
                assert converse(run.port, [b"from %d" % i])[0].endswith(b"from %d" % i)

        for i, cpu in enumerate(cpus):
            before = served()
            thread = threading.Thread(target=connect_from, args=(cpu,))
            thread.start()
            thread.join(TIMEOUT)
            after = served()
            moved = [a - b for a, b in zip(after, before, strict=True)]
            assert moved == [per if j == i else 0 for j in range(len(cpus))], (cpu, moved)


# -- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_every_worker(signum: signal.Signals) -> None:
    with workers("--workers", "2") as run:
        assert converse(run.port, [b"x"])
        run.proc.send_signal(signum)
        assert run.proc.wait(timeout=60) == 0
        for pid in run.pids:
            _wait_gone(pid)
        run.wait_for(rf"{signum.name}: shutting down 2 workers")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", run.port), timeout=TIMEOUT).close()


POLICY = """\
import skmsg_core as sk


def verdict(skb, backends):
    return sk.sk_redirect_map(skb, backends, {index}, 0)
"""


def test_sighup_reaches_every_worker_each_reloads_its_policy(tmp_path: Path) -> None:
    policy = tmp_path / "route.py"
    policy.write_text(POLICY.format(index=0))
    with workers("--workers", "2", "--policy", str(policy), "--metrics", "127.0.0.1:0") as run:
        for c in range(8):
            assert converse(run.port, [b"before %d" % c]) == [b"[backend 0] before %d" % c]
        before = run.scrape()
        policy.write_text(POLICY.format(index=1))
        run.proc.send_signal(signal.SIGHUP)
        run.wait_for(rf"event=signal_forwarded signal=SIGHUP workers=2 "
                     rf"pids={run.pids[0]},{run.pids[1]}")
        run.wait_for(r"SIGHUP: policy \S+ reloaded \(generation 2\)", count=2)
        assert all(_alive(p) for p in run.pids) and run.proc.poll() is None
        for c in range(40):  # spread over both workers: each routes by the new file
            assert converse(run.port, [b"after %d" % c]) == [b"[backend 1] after %d" % c]
        after = run.scrape()
        for pid in run.pids:
            moved = (value(after, "skmsg_proxy_worker_messages_total", pid=str(pid))
                     - value(before, "skmsg_proxy_worker_messages_total", pid=str(pid)))
            assert moved > 0, pid
        assert value(after, "skmsg_proxy_policy_generation") == 2


def test_a_killed_worker_is_reported_and_stops_the_proxy() -> None:
    with workers("--workers", "2") as run:
        assert converse(run.port, [b"x"])
        victim, other = run.pids
        os.kill(victim, signal.SIGKILL)
        assert run.proc.wait(timeout=60) == 1
        line = run.wait_for(r"event=worker_exited")[0]
        assert "level=error" in line and f"pid={victim}" in line and "worker=0" in line
        assert "status=killed signal=SIGKILL" in line
        _wait_gone(other)
        run.wait_for(r"^all clients ")


def test_an_orphaned_worker_stops_itself() -> None:
    with workers("--workers", "2") as run:
        run.proc.kill()  # the supervisor, with no chance to stop them
        run.proc.wait(timeout=60)
        for pid in run.pids:
            _wait_gone(pid)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    (["--workers", "-1"], "--workers"),
    (["--workers", "many"], "--workers: 'many' is not a number"),
    (["--workers", "2", "--udp"], "--workers needs TCP"),
    (["--workers", "2", "--demo"], "--demo runs in one process"),
    (["--workers", "2", "--policy", "/nonexistent/policy.py"], "--policy"),
    (["--workers", "2", "--backend", "127.0.0.1:1"], "--backend 127.0.0.1:1: unreachable"),
    (["--worker-select", "cpu"], "--worker-select picks among workers: add --workers N"),
    (["--workers", str(len(os.sched_getaffinity(0)) + 1), "--worker-select", "cpu"],
     f"but {len(os.sched_getaffinity(0))} CPUs to pin them to"),
    (["--workers", "2", "--worker-select", "core"], "--worker-select: invalid choice: 'core'"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], says: str) -> None:
    done = subprocess.run([sys.executable, "-m", "skmsg", "proxy", "--listen", "127.0.0.1:0",
                           *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("option", ["--listen", "--metrics"])
def test_a_taken_address_exits_2_naming_it(option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "skmsg", "proxy", "--workers", "2",
                               "--listen", "127.0.0.1:0", option, f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"{option} 127.0.0.1:{port}: cannot listen: " in done.stderr
    assert "EADDRINUSE" in done.stderr and done.stderr.count("\n") == 1


# -- merging ---------------------------------------------------------------------------------


def _stats(msgs: int, uptime: float, address: str) -> ProxyStats:
    b = BackendStats(address, msgs, msgs * 10, 1, msgs * 20, 0)
    return ProxyStats(("127.0.0.1:7000",), uptime, 1, 2, 0, msgs, msgs * 10, 0, 1, msgs, 1,
                      0, 0, 0, (b,), 3)


def test_merge_adds_counts_keeps_the_largest_gauge() -> None:
    got = merge(_stats(5, 2.0, "a:1"), _stats(7, 3.5, "a:1"))
    assert (got.msgs, got.bytes, got.redirected, got.clients_open) == (12, 120, 12, 2)
    assert got.uptime == 3.5 and got.listen == ("127.0.0.1:7000",)
    assert got.client_errors == 6 and got.backends[0].reply_bytes == 240
    assert got.backends[0].address == "a:1"
    assert merge(_stats(1, 1, "a:1"), _stats(1, 1, "b:2")).backends[0].address == (
        "(one per worker)")
    assert merge({"idle": 1}, {"idle": 2, "done": 1}) == {"idle": 3, "done": 1}
    assert merge(None, _stats(1, 1, "a:1")) == _stats(1, 1, "a:1")
    assert attrs.evolve(got) == got
