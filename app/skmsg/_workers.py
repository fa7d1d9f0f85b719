"""``skmsg proxy --workers N``: one proxy process per core on one address.

Theory of operation
-------------------
The command's process becomes a *supervisor*; it serves no client itself.

- **The address.** The supervisor binds the ``--listen`` address once with
  ``SO_REUSEPORT`` and does not listen on it: that socket only holds the
  port (port 0 is resolved here, once), so a taken address fails at once with
  the usual one-line error, and the port stays reserved for the workers
  whatever happens to one of them. A socket that is bound but not listening
  is no member of the kernel's reuseport group and is never handed a
  connection.
- **The workers.** Each worker is the normal proxy (``python -m skmsg proxy``
  with the same arguments, re-executed, in its own process group so a
  terminal's Ctrl-C reaches the supervisor only) whose listener is bound
  with ``SO_REUSEPORT`` to that address: the workers' listeners form one
  reuseport group and the kernel spreads new connections over them by a hash
  of the connection's addresses (``reuseport_select_sock``). A connection
  stays with the worker that accepted it. ``--worker-select cpu`` pins
  worker ``i`` to the ``i``-th CPU, starts the workers one after the other
  (so they join the group in index order) and has each attach the group's
  program :func:`._reuseport.select_by_cpu`: a connection goes to the worker
  on the CPU its SYN arrived on.
- **One set of counters.** Each worker has a channel to the supervisor (a
  ``socketpair``). Over it the worker says it is ready (with the lines the
  proxy announces) and answers each request with a snapshot of its counters
  (:func:`._metrics.snapshot`), and sends a last one as it exits. The
  supervisor sums the snapshots (:func:`merge`: counts add up, gauges such as
  the uptime take the largest) and prints the one table (``--stats-interval``
  and at exit) and serves the one ``--metrics`` endpoint itself; the workers
  bind no metrics port. Per-worker messages, clients and CPU seconds are
  exported too (``skmsg_proxy_worker_*{worker,pid}``) and listed under the
  table.
- **Signals.** SIGTERM or SIGINT to the supervisor sends SIGTERM to every
  worker, waits for them to exit (:data:`STOP_TIMEOUT`, then SIGKILL), prints
  the final table and exits 0. SIGHUP is forwarded to every worker (logged as
  ``event=signal_forwarded``); each worker handles it as the single-process
  proxy does (it reloads its ``--policy`` file), and a worker that has no use
  for it logs ``event=signal_received``.
- **A worker that dies.** A worker that exits while the proxy is not
  stopping is never restarted silently, nor at all: the supervisor logs
  ``level=error event=worker_exited worker=I pid=P status=...``, stops the
  other workers as above, prints the final table (the dead worker's last
  snapshot included) and exits 1. Run it under a service manager that
  restarts it. A worker that cannot start (a bad policy file, an unreachable
  backend) prints its one-line error and the supervisor exits with its
  status (2) after stopping the rest.
- **Orphans.** A worker whose channel reaches end of file (the supervisor is
  gone, even killed) stops itself as on SIGTERM.

``--workers 1`` (the default) is the single-process proxy, unchanged;
``--workers 0`` means one worker per CPU this process may run on. The UDP
proxy and ``--demo`` run in one process only.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import errno
import io
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import skmsg_core as sk
from skmsg_core.runtime import log_event

from ._events import EventFormatter
from ._metrics import Snapshot, render, snapshot
from ._proxy import Address, _why
from ._stats import format_table

__all__ = [
    "STOP_TIMEOUT",
    "WORKER_OPTION",
    "WorkerLink",
    "add_worker_arguments",
    "merge",
    "run_supervisor",
    "run_worker",
    "worker_count",
]

log = logging.getLogger("skmsg")

#: The hidden option that makes ``skmsg proxy`` a worker: ``INDEX:FD``, FD the
#: worker's end of its channel to the supervisor.
WORKER_OPTION = "--worker-channel"
#: Seconds the supervisor waits for its workers to exit after SIGTERM, then SIGKILL.
STOP_TIMEOUT = 20.0
#: Seconds a worker may take to start (imports, policy, backends) or to answer.
START_TIMEOUT = 60.0
ANSWER_TIMEOUT = 5.0

_HEAD = struct.Struct("!I")
#: Fields that are gauges of a moment, not counts: the largest worker's wins.
_GAUGE = "<gauge>"  # a field whose metadata says ``kind="gauge"``, not a count
_LARGEST = frozenset({"uptime", "budget", _GAUGE})


def worker_count(text: str) -> int:
    """``--workers``: a whole number >= 0 (0: one per core).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    if not text.isdigit():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of worker processes >= 0 (0: one per core)")
    return int(text)


def add_worker_arguments(proxy: argparse.ArgumentParser) -> None:
    """Add ``--workers`` (and the hidden worker option) to ``skmsg proxy``'s parser."""
    proxy.add_argument(
        "--workers", metavar="N", type=worker_count, default=1,
        help="serve with N processes sharing the --listen address with SO_REUSEPORT "
        "(the kernel spreads connections over them); one set of counters and metrics for "
        "all; SIGTERM/SIGINT stop them all, SIGHUP is forwarded to each; a worker that "
        "dies stops the proxy with status 1. 0: one per core (default 1: one process). "
        "TCP/TLS only; not with --demo",
    )
    proxy.add_argument(
        "--worker-select", choices=("hash", "cpu"), default="hash",
        help="how the kernel picks the worker for a new connection: hash (default: of the "
        "connection's addresses) or cpu (a classic BPF program on the reuseport group "
        "picks the worker pinned to the CPU the connection arrives on; one worker per "
        "CPU at most). Only with --workers",
    )
    proxy.add_argument(WORKER_OPTION, default=None, help=argparse.SUPPRESS)


def select_cpus(args: argparse.Namespace) -> tuple[int, ...]:
    """The CPUs the workers run on, in worker order, for ``--worker-select cpu``
    (empty for ``hash``): the first ``workers_wanted(args)`` CPUs this process
    may run on.

    Raises:
        ValueError: more workers than those CPUs (the message names both).
    """
    if args.worker_select != "cpu":
        return ()
    cpus = sorted(os.sched_getaffinity(0))
    n = workers_wanted(args)
    if n > len(cpus):
        raise ValueError(f"--worker-select cpu: {n} workers but {len(cpus)} CPUs to pin them "
                         f"to; use at most {len(cpus)} (--workers 0: one per CPU)")
    return tuple(cpus[:n])


def workers_wanted(args: argparse.Namespace) -> int:
    """How many worker processes ``args`` ask for (``--workers 0``: one per CPU)."""
    n = int(args.workers)
    if n == 0:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
    return n


# -- the channel -------------------------------------------------------------------------


def _frame(kind: str, payload: object) -> bytes:
    body = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEAD.pack(len(body)) + body


async def _read_exactly(sock: trio.socket.SocketType, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = await sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


async def _read_frame(sock: trio.socket.SocketType) -> tuple[str, Any] | None:
    """The next ``(kind, payload)`` from ``sock``; None at end of file."""
    head = await _read_exactly(sock, _HEAD.size)
    if head is None:
        return None
    body = await _read_exactly(sock, _HEAD.unpack(head)[0])
    if body is None:
        return None
    kind, payload = pickle.loads(body)  # our own child, over a socketpair
    return str(kind), payload


# -- the worker's side -------------------------------------------------------------------


class WorkerLink:
    """A worker's end of its channel: says it is ready, answers snapshot
    requests, sends the last snapshot at exit. See the module."""

    def __init__(self, index: int, sock: socket.socket,
                 select_cpus: tuple[int, ...] = ()) -> None:
        self.index = index
        self.sock = sock
        #: ``--worker-select cpu``: the CPUs of the workers in index order (this
        #: worker runs on ``select_cpus[index]``); empty: the kernel's hash.
        self.select_cpus = select_cpus
        self.proxy: Any = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.hups = 0

    async def serve(self, proxy: Any, announce: Callable[[Any], None]) -> None:
        """Report ``proxy`` ready (with what ``announce(proxy)`` prints), then
        answer the supervisor until cancelled; at end of file (the supervisor
        is gone) stop this process as SIGTERM would.

        Cancellation: stops answering; nothing to undo.
        """
        self.proxy = proxy
        self.token = trio.lowlevel.current_trio_token()
        said = io.StringIO()
        with contextlib.redirect_stdout(said):
            announce(proxy)
        sock = trio.socket.from_stdlib_socket(self.sock)
        await _send(sock, _frame("ready", {"pid": os.getpid(), "lines": said.getvalue()}))
        while True:
            request = await sock.recv(1)
            if not request:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await _send(sock, _frame("snap", snapshot(proxy)))

    def sighup(self) -> None:
        """SIGHUP reached this worker and nothing else handled it: log it."""
        self.hups += 1
        log_event(log, logging.WARNING, "signal_received", signal="SIGHUP", worker=self.index,
                  pid=os.getpid(), action="none")

    def finish(self) -> None:
        """Send the last snapshot (after the proxy has closed); the supervisor
        may be gone already."""
        if self.proxy is None:
            return
        with contextlib.suppress(OSError):
            self.sock.setblocking(True)
            self.sock.settimeout(ANSWER_TIMEOUT)
            self.sock.sendall(_frame("final", snapshot(self.proxy)))
        self.sock.close()


async def _send(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


def run_worker(args: argparse.Namespace,
               command: Callable[[argparse.Namespace, WorkerLink], int]) -> int:
    """Run this process as worker ``INDEX`` of a supervisor (``--worker-channel
    INDEX:FD``): ``command(args, link)`` is the proxy command, which runs the
    proxy with its listener bound with ``SO_REUSEPORT`` and hands the running
    proxy to ``link.serve``. Returns its exit status."""
    index, _, fd = str(args.worker_channel).partition(":")
    cpus = select_cpus(args)  # as the supervisor found them, before this one is pinned
    link = WorkerLink(int(index), socket.socket(fileno=int(fd)), cpus)
    if cpus:
        os.sched_setaffinity(0, {cpus[link.index]})
    if args.metrics is not None:
        sk.enable_stats()  # the supervisor serves the metrics: count programs' run time
    args.metrics = None
    args.stats_interval = 0.0

    def on_hup(signum: int, frame: object) -> None:
        if link.token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                link.token.run_sync_soon(link.sighup)

    signal.signal(signal.SIGHUP, on_hup)
    try:
        return command(args, link)
    finally:
        link.finish()


# -- merging snapshots -------------------------------------------------------------------


def merge(a: Any, b: Any, name: str = "") -> Any:
    """``a`` and ``b`` (two workers' snapshots or parts of them) as one.

    Counts add up (ints, the values of mappings, floats such as the latency
    sums); the fields in :data:`_LARGEST` (the uptime, a program's budget)
    and those whose attrs metadata says ``kind="gauge"`` (the policy
    generation, the fd limit) take the larger; a bool is true if either is
    (a backend is up if a worker sees it up); strings keep ``a``'s (a backend address that differs,
    each worker's own embedded echo backend, becomes ``(one per worker)``);
    enums keep ``a``'s; tuples merge item by item; attrs records field by field. Any field added
    to the statistics records later is merged by its type with no code here.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) or bool(b)
    if isinstance(a, enum.Enum):
        return a
    if a is None:
        return b
    if b is None:
        return a
    if attrs.has(type(a)):
        return attrs.evolve(a, **{
            f.name: merge(getattr(a, f.name), getattr(b, f.name),
                          f.name if f.metadata.get("kind") != "gauge" else _GAUGE)
            for f in attrs.fields(type(a)) if f.init
        })
    if isinstance(a, int) and isinstance(b, int):
        return max(a, b) if name in _LARGEST else a + b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return max(a, b) if name in _LARGEST else a + b
    if isinstance(a, str):
        return a if a == b or name != "address" else "(one per worker)"
    if isinstance(a, dict):
        out = dict(a)
        for key, value in b.items():
            out[key] = merge(out[key], value, name) if key in out else value
        return out
    if isinstance(a, tuple | list) and len(a) == len(b):
        return type(a)(merge(x, y, name) for x, y in zip(a, b, strict=True))
    return a


# -- the supervisor ----------------------------------------------------------------------


@attrs.define(eq=False)
class _Worker:
    index: int
    process: trio.Process
    channel: trio.socket.SocketType
    settled: trio.Event = attrs.field(factory=trio.Event)
    gone: trio.Event = attrs.field(factory=trio.Event)
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    lines: str | None = None
    last: Snapshot | None = None
    status: int | None = None
    answers: tuple[trio.MemorySendChannel[Snapshot], trio.MemoryReceiveChannel[Snapshot]] = (
        attrs.field(factory=lambda: trio.open_memory_channel[Snapshot](1)))

    @property
    def pid(self) -> int:
        return int(self.process.pid)


def _describe(status: int) -> dict[str, object]:
    if status < 0:
        try:
            return {"status": "killed", "signal": signal.Signals(-status).name}
        except ValueError:
            return {"status": "killed", "signal": -status}
    return {"status": status}


def _cpu_seconds(pid: int) -> float | None:
    """A process's user + system CPU seconds, from ``/proc/PID/stat``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Supervisor:
    """Starts, watches, asks and stops the workers (see the module)."""

    def __init__(self, argv: Sequence[str], count: int, listen: Address,
                 tell: Callable[[str], None], say: Callable[[str], None],
                 *, in_order: bool = False) -> None:
        self.argv = list(argv)
        self.count = count
        #: Start each worker only once the one before listens: they join the
        #: reuseport group in index order (``--worker-select cpu``).
        self.in_order = in_order
        self.listen = listen
        self.tell = tell
        self.say = say
        self.workers: list[_Worker] = []
        self.stopping = False
        self.status = 0
        self.stop = trio.Event()
        self.cpu: dict[int, float] = {}

    async def start_worker(self, index: int, nursery: trio.Nursery) -> _Worker:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-m", "skmsg", *self.argv, "--listen", str(self.listen),
                    WORKER_OPTION, f"{index}:{theirs.fileno()}"]
            process = await trio.lowlevel.open_process(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, process_group=0,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(index, process, trio.socket.from_stdlib_socket(mine))
        self.workers.append(worker)
        nursery.start_soon(self._read, worker)
        nursery.start_soon(self._watch, worker)
        return worker

    async def _read(self, w: _Worker) -> None:
        with w.channel:
            while True:
                try:
                    got = await _read_frame(w.channel)
                except OSError:
                    got = None
                if got is None:
                    return
                kind, payload = got
                if kind == "ready":
                    w.lines = str(payload["lines"])
                    w.settled.set()
                elif kind in ("snap", "final"):
                    w.last = payload
                    if kind == "snap":
                        with contextlib.suppress(trio.WouldBlock):
                            w.answers[0].send_nowait(payload)

    async def _watch(self, w: _Worker) -> None:
        w.status = await w.process.wait()
        self.cpu.pop(w.pid, None)
        w.gone.set()
        w.settled.set()
        if not self.stopping:
            if w.lines is None:  # it could not start: it said why on stderr
                self.status = self.status or (w.status if w.status > 0 else 1)
            else:
                log_event(log, logging.ERROR, "worker_exited", worker=w.index, pid=w.pid,
                          **_describe(w.status), action="stopping all workers")
                self.status = 1
            self.stop.set()

    async def ask(self, w: _Worker) -> Snapshot | None:
        """A fresh snapshot of ``w`` (its last one if it is gone or slow)."""
        if w.gone.is_set() or w.lines is None:
            return w.last
        async with w.lock:
            while True:  # an answer that came too late for the last request
                try:
                    w.answers[1].receive_nowait()
                except trio.WouldBlock:
                    break
            with trio.move_on_after(ANSWER_TIMEOUT), contextlib.suppress(OSError):
                await _send(w.channel, b"S")
                return await w.answers[1].receive()
        return w.last

    async def collect(self) -> tuple[Snapshot | None, list[tuple[_Worker, Snapshot | None]]]:
        """Every worker's snapshot, and their sum."""
        snaps: list[Snapshot | None] = [None] * len(self.workers)

        async def one(i: int, w: _Worker) -> None:
            snaps[i] = await self.ask(w)

        async with trio.open_nursery() as nursery:
            for i, w in enumerate(self.workers):
                nursery.start_soon(one, i, w)
        total: Snapshot | None = None
        for s in snaps:
            total = merge(total, s)
        return total, list(zip(self.workers, snaps, strict=True))

    def table(self, total: Snapshot | None,
              per: list[tuple[_Worker, Snapshot | None]]) -> str:
        if total is None:
            return "skmsg proxy: no counters (no worker answered)"
        rows = "; ".join(
            f"[{w.index}] pid {w.pid}{' (exited)' if w.gone.is_set() else ''}: "
            f"{_clients(s)} clients, {_msgs(s)} msgs"
            for w, s in per
        )
        return format_table(total.stats) + f"\nworkers: {rows}"

    async def stop_all(self) -> None:
        self.stopping = True
        for w in self.workers:
            if not w.gone.is_set():
                with contextlib.suppress(OSError):
                    w.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            for w in self.workers:
                await w.gone.wait()
        for w in self.workers:
            if not w.gone.is_set():
                log_event(log, logging.ERROR, "worker_killed", worker=w.index, pid=w.pid,
                          reason=f"not stopped {STOP_TIMEOUT:g}s after SIGTERM")
                with contextlib.suppress(OSError):
                    w.process.kill()
                await w.gone.wait()

    def forward(self, signum: int) -> None:
        name = signal.Signals(signum).name
        sent = []
        for w in self.workers:
            if not w.gone.is_set() and w.lines is not None:
                with contextlib.suppress(OSError):
                    w.process.send_signal(signum)
                    sent.append(str(w.pid))
        log_event(log, logging.WARNING, "signal_forwarded", signal=name, workers=len(sent),
                  pids=",".join(sent))

    def worker_metrics(self, per: list[tuple[_Worker, Snapshot | None]]) -> Iterable[Metric]:
        labels = ["worker", "pid"]
        n = GaugeMetricFamily("skmsg_proxy_workers", "Worker processes running.")
        n.add_metric([], sum(1 for w, _ in per if not w.gone.is_set()))
        msgs = CounterMetricFamily("skmsg_proxy_worker_messages",
                                   "Client messages judged, by worker.", labels=labels)
        clients = CounterMetricFamily("skmsg_proxy_worker_clients",
                                      "Clients accepted, by worker.", labels=labels)
        cpu = CounterMetricFamily("skmsg_proxy_worker_cpu_seconds",
                                  "User and system CPU seconds, by worker.", labels=labels)
        for w, s in per:
            key = [str(w.index), str(w.pid)]
            msgs.add_metric(key, _msgs(s))
            clients.add_metric(key, _clients_total(s))
            seconds = _cpu_seconds(w.pid)
            if seconds is not None:
                self.cpu[w.pid] = seconds
            cpu.add_metric(key, self.cpu.get(w.pid, 0.0))
        return [n, msgs, clients, cpu]


def _msgs(s: Snapshot | None) -> int:
    return s.stats.msgs if s is not None else 0


def _clients(s: Snapshot | None) -> int:
    return s.stats.clients_open if s is not None else 0


def _clients_total(s: Snapshot | None) -> int:
    return s.stats.clients_total if s is not None else 0


class _WorkersCollector(Collector):
    def __init__(self, sup: _Supervisor, token: trio.lowlevel.TrioToken) -> None:
        self.sup = sup
        self.token = token

    def collect(self) -> Iterable[Metric]:
        try:
            total, per = trio.from_thread.run(self.sup.collect, trio_token=self.token)
        except trio.RunFinishedError:
            return []
        if total is None:
            return list(self.sup.worker_metrics(per))
        return [*render(total), *self.sup.worker_metrics(per)]


def _reserve(listen: Address) -> tuple[list[socket.socket], Address]:
    """Bind (not listen) ``listen`` with ``SO_REUSEPORT``: the port the workers
    share, resolved once.

    Raises:
        OSError: the address cannot be bound (taken, not local ...).
    """
    infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    held: list[socket.socket] = []
    port = listen.port
    try:
        for family, type_, proto, _, addr in infos:
            s = socket.socket(family, type_, proto)
            held.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr[0], port, *addr[2:]))
            port = s.getsockname()[1]
    except OSError:
        for s in held:
            s.close()
        raise
    return held, Address(listen.host, port)


def run_supervisor(args: argparse.Namespace, argv: Sequence[str], listen: Address,
                   tell: Callable[[str], None], say: Callable[[str], None]) -> int:
    """Run ``skmsg proxy --workers N`` (``args``, parsed from ``argv``) as the
    supervisor of N workers on ``listen``; returns the exit status: 0 stopped
    by a signal, 1 a worker died, 2 a bad argument, address or start-up (one
    line on stderr naming it). See the module."""
    if args.demo:
        tell("skmsg proxy: error: --demo runs in one process: drop --workers")
        return 2
    if args.udp:
        tell("skmsg proxy: error: --workers needs TCP: --udp runs in one process")
        return 2
    try:
        cpus = select_cpus(args)
    except ValueError as exc:
        tell(f"skmsg proxy: error: {exc}")
        return 2
    extra: list[str] = []
    if args.tls and args.cert is None:  # one certificate for every worker
        from ._tls import write_self_signed  # noqa: PLC0415

        cert, key = write_self_signed([listen.host])
        extra = ["--cert", cert, "--key", key]
        say(f"skmsg proxy: TLS certificate (self-signed) {cert}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    saved = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        held, bound = _reserve(listen)
    except OSError as exc:
        tell(f"skmsg proxy: error: --listen {listen}: cannot listen: {_why(exc)}")
        return 2
    interval = args.stats_interval
    if interval is None:
        interval = 2.0 if sys.stdout.isatty() and sys.stderr.isatty() else 0.0
    sup = _Supervisor([*argv, *extra], workers_wanted(args), bound, tell, say,
                      in_order=bool(cpus))
    try:
        return trio.run(_supervise, sup, args.metrics, interval)
    finally:
        for s in held:
            s.close()
        log.removeHandler(handler)
        log.setLevel(saved)


async def _supervise(sup: _Supervisor, metrics: Address | None, interval: float) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, sup, signals)
            server = None
            if metrics is not None:  # before any worker: a taken port is one line
                try:
                    server = _serve_metrics(sup, metrics)
                except OSError as exc:
                    sup.tell(f"skmsg proxy: error: --metrics {metrics}: cannot listen: "
                             f"{_why(exc)}")
                    nursery.cancel_scope.cancel()
                    return 2
            started = await _start(sup, nursery)
            if started:
                first = sup.workers[0].lines or ""
                for line in first.splitlines():
                    sup.say(line)
                pids = ", ".join(str(w.pid) for w in sup.workers)
                sup.say(f"skmsg proxy: {sup.count} workers (pids {pids}) sharing "
                        f"{sup.listen} with SO_REUSEPORT")
                if server is not None:
                    sup.say(f"skmsg proxy: metrics on http://{server[2]}/metrics")
                if interval > 0:
                    nursery.start_soon(_show, sup, interval)
                await sup.stop.wait()
            await sup.stop_all()
            if server is not None:
                httpd, thread, _ = server
                await trio.to_thread.run_sync(httpd.shutdown)
                httpd.server_close()
                thread.join(timeout=5)
            nursery.cancel_scope.cancel()
    if started or any(w.last is not None for w in sup.workers):
        total, per = await sup.collect()
        sup.tell(sup.table(total, per))
    return sup.status


async def _start(sup: _Supervisor, nursery: trio.Nursery) -> bool:
    """Start worker 0 alone (a bad argument is reported once), then the rest."""
    with trio.move_on_after(START_TIMEOUT) as scope:
        first = await sup.start_worker(0, nursery)
        await first.settled.wait()
        if first.lines is None:
            return False
        rest = []
        for i in range(1, sup.count):
            rest.append(await sup.start_worker(i, nursery))
            if sup.in_order:
                await rest[-1].settled.wait()
        for w in rest:
            await w.settled.wait()
            if w.lines is None:
                return False
    if scope.cancelled_caught:
        sup.tell(f"skmsg proxy: error: the workers did not start within {START_TIMEOUT:g}s")
        sup.status = 1
        return False
    return not sup.stop.is_set()


async def _signals(sup: _Supervisor, signals: Any) -> None:
    async for signum in signals:
        if signum == signal.SIGHUP:
            sup.forward(signum)
            continue
        if not sup.stop.is_set():
            sup.tell(f"skmsg proxy: {signal.Signals(signum).name}: shutting down "
                     f"{len(sup.workers)} workers")
            sup.stop.set()


async def _show(sup: _Supervisor, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        total, per = await sup.collect()
        sup.tell(sup.table(total, per) + "\n")


def _serve_metrics(sup: _Supervisor, where: Address) -> tuple[Any, Any, Address]:
    """Serve the workers' summed metrics at ``where``.

    Raises:
        OSError: it cannot listen there.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkersCollector(sup, trio.lowlevel.current_trio_token()))
    try:
        httpd, thread = start_http_server(where.port, where.host, registry=registry)
    except socket.gaierror as exc:
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {where.host!r}") from exc
    host, port = httpd.server_address[:2]
    return httpd, thread, Address(str(host), int(port))
