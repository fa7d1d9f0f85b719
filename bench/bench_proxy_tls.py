"""``skmsg proxy --tls --backend-tls`` against a ``trio.SSLStream`` relay.

Topology (both sides built once, side by side)::

    client ==TLS==> proxy under test ==TLS==> backend
    \\____ child process ____/    this process    \\__ child __/

The client and the backend are Python's ``ssl`` (OpenSSL) on blocking sockets
in **one child process** (``bench/_tls_peers.py``): the same peers for both
sides, outside the process being measured. The proxies under test run in this
process, in one ``trio.run``:

- candidate: the application itself, :func:`skmsg.run_proxy` with
  ``--tls --backend-tls`` settings (a self-signed certificate, the
  ``length-prefixed`` framing, the default round-robin policy over one
  backend): client TLS is terminated into skmsg's record layer, the stream
  parser frames the plaintext, the policy's verdict redirects each message to
  the backend connection, which seals it with its own keys; replies take the
  reply program back to the client's egress.
- baseline: a ``trio.SSLStream`` relay that inspects what it forwards, as the
  proxy does: client to backend it walks the length prefixes of each read and
  forwards its whole messages (a partial one waits for the next read),
  backend to client it forwards each read as it came.

- floor (report): :class:`RecordRelay`, the record work alone on the same
  stack: the handshakes through skmsg's key hand-off, then each record read
  is opened with skmsg's record codec and its plaintext sealed with the
  other side's keys, straight on the sockets, two trio tasks, no framing,
  program, stream or proxy. Its ratio to the relay is what the record work
  alone reaches on this stack: what the proxy spends above it is its own
  (parser, verdict, redirect, streams). The proxy's bulk path is tuned
  further than this plain loop (it seals from the pieces it was handed), so
  it can come a little under the floor's cost, never far under it.

All use TLS 1.3 with OpenSSL's default suite (AES-256-GCM here).

``proxy.reqresp_tls.programs`` (report) sets the programs against what the
target leaves: after the timed rounds, one more echo round through the proxy
(untimed) times the psock's program runs in thread CPU time, each request
through the stream parser and the verdict program (``SkPsock.rx_feed``) and
each reply through the reply program (``SkPsock.rx_verdict``), per round
trip (a clock read per run included); its baseline is the room the target
leaves above the floor, the relay's CPU time divided by the target less the
floor's, per round trip. A ratio above 1 says running the programs alone,
before any stream, redirect or scheduling work, takes more than that room.

``proxy.bulk_tls``: 256 MiB (quick: 4 MiB) as 64 KiB messages, one way.
``proxy.reqresp_tls``: 2,000 (quick: 200) round trips of a 200-byte message
over one connection.

A round is timed from the command to the child until the child says the
backend has every byte (bulk) or the last reply came (reqresp), both by the
wall clock and by **this process's CPU time** (``time.process_time``): the
CPU the proxy under test spent, the peers' being the child's. The sides take
turns, rotated every round, after an untimed warm-up round each (the bulk one
checks the backend got exactly the bytes sent, by SHA-256). The headline
figures are *paired*: the median over rounds of each round's own ratio of the
baseline's CPU time over the candidate's (the two sides of a round see the
same moment of this shared machine). The ``.wall`` figures (report only) are
the same by the wall clock, where the child's peers and this process share the
machine's two cores. After the rounds the counters prove the path: the proxy's
verdict redirected every message, the backend connection's record layer
sealed the bytes.

Targets: bulk >= 3x the relay's speed, reqresp >= 1.2x.
"""

from __future__ import annotations

import gc
import os
import socket as stdsocket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench._harness import Figure
from bench._tcp_helpers import Round
from skmsg import Address, Proxy, ProxyConfig, run_proxy
from skmsg._tls import TlsOptions, client_context, server_context, write_self_signed
from skmsg_core import SkPsock
from skmsg_tls import TLS_RECORD_TYPE_DATA, RecordOpener, RecordSealer, tls_handoff

__all__ = ["BENCHMARKS"]

MIB = 1 << 20
MSG = 65536
BULK_TARGET = 3.0
REQRESP_TARGET = 1.2
DEADLINE = 300.0
PEERS = Path(__file__).resolve().parent / "_tls_peers.py"


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"bench_proxy_tls: {what}")


class Peers:
    """The child process running the client and the backend (``_tls_peers.py``)."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buf = b""

    async def line(self) -> str:
        """The child's next output line."""
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            data = await self.proc.stdout.receive_some()
            _check(bool(data), "the peers' child process ended early")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    async def ask(self, command: str) -> str:
        """Send one command line, return the answer line."""
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(command.encode() + b"\n")
        return await self.line()


async def _pipe(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream) -> None:
    while data := await src.receive_some(65536):
        await dst.send_all(data)


async def _inspecting_pipe(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream) -> None:
    """Frame by the 4-byte length prefix; forward each read's whole messages."""
    rest = b""
    while data := await src.receive_some(65536):
        buf = rest + data if rest else data
        n = len(buf)
        off = 0
        while n - off >= 4:
            end = off + 4 + int.from_bytes(buf[off : off + 4], "big")
            if end > n:
                break
            off = end
        if off:
            await dst.send_all(memoryview(buf)[:off])
        rest = buf[off:]


class SslRelay:
    """The baseline: accept TLS clients, connect TLS to the backend, relay."""

    def __init__(self, sctx: object, cctx: object, backend: Address) -> None:
        self.sctx, self.cctx, self.backend = sctx, cctx, backend
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        client = trio.SSLStream(tcp, self.sctx, server_side=True)  # type: ignore[arg-type]
        up = await trio.open_tcp_stream(self.backend.host, self.backend.port)
        backend = trio.SSLStream(up, self.cctx, server_hostname=self.backend.host)  # type: ignore[arg-type]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_inspecting_pipe, client, backend)
                nursery.start_soon(_pipe, backend, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(backend)


#: How much the floor reads at a time (raw bytes).
_FLOOR_READ = 262144


async def _records(
    src: stdsocket.socket, opener: RecordOpener, dst: stdsocket.socket, sealer: RecordSealer
) -> None:
    """Open each record read from ``src``, seal its plaintext for ``dst``, write
    it: the record work alone, straight on non-blocking sockets, into one
    buffer reused for every write, yielding to trio only to wait."""
    scratch = bytearray(_FLOOR_READ + 4096)
    while True:
        try:
            if not opener.fill(src.recv_into, _FLOOR_READ):
                return
        except BlockingIOError:
            await trio.lowlevel.wait_readable(src)
            continue
        pieces = []
        while (rec := opener.next_record()) is not None:
            if rec[0] == TLS_RECORD_TYPE_DATA:
                pieces.append(rec[1])
        if not pieces:
            continue
        out = sealer.seal_batch(pieces, scratch=scratch)
        try:
            while out.nbytes:
                try:
                    out = out[dst.send(out) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
        finally:
            out.release()


class RecordRelay(SslRelay):
    """The floor: what relaying costs on this stack with nothing but the record
    work. The handshakes go through skmsg's key hand-off (OpenSSL), then two
    tasks open each record with skmsg's record codec and seal its plaintext
    with the other side's keys, on the sockets themselves: no framing, no
    program, no stream, no proxy."""

    async def _handle(self, tcp: trio.SocketStream) -> None:
        up = await trio.open_tcp_stream(self.backend.host, self.backend.port)
        try:
            sctx, cctx = self.sctx, self.cctx
            assert isinstance(sctx, ssl.SSLContext) and isinstance(cctx, ssl.SSLContext)
            near = await tls_handoff(tcp.send_all, tcp.receive_some, sctx, server_side=True)
            far = await tls_handoff(
                up.send_all,
                up.receive_some,
                cctx,
                server_side=False,
                server_hostname=self.backend.host,
            )
            client, backend = (
                stdsocket.socket(fileno=os.dup(s.socket.fileno())) for s in (tcp, up)
            )
            with client, backend:
                client.setblocking(False)
                backend.setblocking(False)
                inbound, outbound = RecordOpener(near.rx), RecordOpener(far.rx)
                inbound.feed(near.unconsumed)
                outbound.feed(far.unconsumed)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_records, client, inbound, backend, RecordSealer(far.tx))
                    nursery.start_soon(_records, backend, outbound, client, RecordSealer(near.tx))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(tcp)
            await trio.aclose_forcefully(up)


async def _timed(peers: Peers, command: str) -> Round:
    gc.collect()
    gc.disable()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        with trio.fail_after(DEADLINE):
            answer = await peers.ask(command)
        r = Round(time.perf_counter() - t0, time.process_time() - c0)
    finally:
        gc.enable()
    _check(answer == "done", f"{command!r}: the peers answered {answer!r}")
    return r


async def _programs_round(peers: Peers, count: int) -> Round:
    """One more echo round through the proxy, untimed, with the psock's program
    runs timed (thread CPU): ``SkPsock.rx_feed`` (the client's bytes through
    the stream parser and the verdict program) and ``SkPsock.rx_verdict``
    (each reply through the reply program). ``cpu`` is their sum."""
    spent = [0]
    saved = {name: getattr(SkPsock, name) for name in ("rx_feed", "rx_verdict")}

    def timed(run: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return run(*args, **kwargs)
            finally:
                spent[0] += time.thread_time_ns() - t0

        return wrapper

    for name, run in saved.items():
        setattr(SkPsock, name, timed(run))
    try:
        answer = await peers.ask(f"echo ours-echo {count}")
    finally:
        for name, run in saved.items():
            setattr(SkPsock, name, run)
    _check(answer == "done", f"programs round: echo answered {answer!r}")
    return Round(0.0, spent[0] / 1e9)


async def _run(
    kind: str, amount: int, rounds: int, sides: tuple[str, ...] = ("ours", "ssl", "floor")
) -> dict[str, list[Round]]:
    """``rounds`` timed rounds of each of ``sides``: ``kind`` "bulk" sends
    ``amount`` bytes, "echo" makes ``amount`` round trips. (One side alone is
    for profiling it.)"""
    cert, key = write_self_signed(["127.0.0.1"])
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(PEERS), cert, key], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    peers = Peers(proc)
    try:
        word, port = (await peers.line()).split()
        _check(word == "backend", f"the peers said {word!r}")
        backend = Address("127.0.0.1", int(port))
        tls = TlsOptions(server_context(cert, key), client_context(cert), None, cert)
        config = ProxyConfig(
            listen=Address("127.0.0.1", 0), backends=(backend,), parser="length-prefixed", tls=tls
        )
        async with trio.open_nursery() as nursery:
            proxy: Proxy = await nursery.start(run_proxy, config)
            relay = SslRelay(server_context(cert, key), client_context(cert), backend)
            await nursery.start(relay.serve)
            floor = RecordRelay(server_context(cert, key), client_context(cert), backend)
            await nursery.start(floor.serve)
            ports = {"ours": proxy.listen[0].port, "ssl": relay.port, "floor": floor.port}
            for name, p in ports.items():
                for mode in ("bulk", "echo"):
                    answer = await peers.ask(f"open {name}-{mode} {p} {mode}")
                    _check(answer == "ok", f"open {name}-{mode}: {answer!r}")
            for name in ports:  # warm-up, checked
                answer = await peers.ask(f"bulk {name}-bulk {4 * MIB} 1")
                _check(answer == "done ok", f"{name}: the backend got other bytes than sent")
                answer = await peers.ask(f"echo {name}-echo 50")
                _check(answer == "done", f"{name}: echo answered {answer!r}")
            verdicts0 = proxy.verdict.statistics().redirected
            out: dict[str, list[Round]] = {name: [] for name in sides}
            command = f"bulk {{}}-bulk {amount} 0" if kind == "bulk" else f"echo {{}}-echo {amount}"
            for r in range(rounds):
                k = r % len(sides)
                for name in sides[k:] + sides[:k]:
                    out[name].append(await _timed(peers, command.format(name)))
            if kind == "echo" and "ours" in sides:  # untimed: the programs' own share
                out["programs"] = [await _programs_round(peers, amount)]
            redirected = proxy.verdict.statistics().redirected - verdicts0
            want = (rounds + (kind == "echo")) * ("ours" in sides) * (
                amount // MSG if kind == "bulk" else amount
            )
            _check(redirected == want, f"the proxy redirected {redirected} of {want} messages")
            _check(proxy.runtime.redirect_errors == 0, "a redirect write failed")
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                assert proc.stdin is not None
                try:
                    await proc.stdin.send_all(b"quit\n")
                    with trio.move_on_after(10):
                        await proc.wait()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    os.unlink(key)
    os.unlink(cert)
    os.rmdir(os.path.dirname(cert))
    return out


def _paired(ours: list[Round], base: list[Round], what: Callable[[Round], float]) -> float:
    return statistics.median(what(b) / what(c) for c, b in zip(ours, base, strict=True))


def _figures(
    name: str, out: dict[str, list[Round]], scale: float, unit: str, target: float
) -> list[Figure]:
    """The paired CPU figure (with ``target``), the wall-clock one, and the
    floor's CPU figure (:class:`RecordRelay`: what the record work alone
    reaches, report only); ``scale`` turns a round's seconds into
    ``unit``."""
    base = out["ssl"]
    figs = []
    for suffix, side, what, label in (
        ("", "ours", lambda r: r.cpu, "SSLStream relay (CPU)"),
        (".wall", "ours", lambda r: r.wall, "SSLStream relay"),
        (".floor", "floor", lambda r: r.cpu, "SSLStream relay (CPU)"),
    ):
        ours = out[side]
        figs.append(
            Figure.speedup(
                name + suffix,
                value=statistics.median(what(r) for r in ours) * scale,
                unit=unit,
                baseline=label,
                baseline_value=statistics.median(what(r) for r in base) * scale,
                target=target if not suffix else None,
                paired=_paired(ours, base, what),
            )
        )
    if "programs" in out:
        # what the target leaves above the floor, and what running the
        # programs alone takes of it
        budget = statistics.median(r.cpu for r in base) / target - statistics.median(
            r.cpu for r in out["floor"]
        )
        figs.append(
            Figure.cost_ratio(
                name + ".programs",
                value=out["programs"][0].cpu * scale,
                unit=unit,
                baseline="target's room above floor",
                baseline_value=budget * scale,
            )
        )
    return figs


def bench_bulk(quick: bool) -> list[Figure]:
    """256 MiB (quick: 4 MiB) of 64 KiB messages through skmsg proxy --tls
    --backend-tls, through a trio.SSLStream relay and through the floor."""
    total, rounds = (4 * MIB, 2) if quick else (256 * MIB, 5)
    out = trio.run(_run, "bulk", total, rounds)
    return _figures("proxy.bulk_tls", out, 1e6 / (total / MIB), "us/MiB", BULK_TARGET)


def bench_reqresp(quick: bool) -> list[Figure]:
    """2,000 (quick: 200) 200-byte round trips over one connection, the same three ways."""
    count, rounds = (200, 2) if quick else (2000, 7)
    out = trio.run(_run, "echo", count, rounds)
    return _figures("proxy.reqresp_tls", out, 1e6 / count, "us/rt", REQRESP_TARGET)


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "proxy.bulk_tls": bench_bulk,
    "proxy.reqresp_tls": bench_reqresp,
}
