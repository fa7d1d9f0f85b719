"""``skmsg proxy`` fails closed, through the real ``skmsg`` command: a policy
whose verdict returns ``Decimal('sNaN')`` or calls ``sys.exit()`` for some
messages drops those messages (counted as policy errors) and the proxy goes on
serving every client, TCP, TLS and UDP; with ``--policy-budget`` a policy
that sleeps is interrupted after that long, and the other clients are not
stalled for more. Ctrl-C then ends it with status 0 and no traceback."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from skmsg._tls import client_context

from ._support import frame

TIMEOUT = 20  # a guard against hangs: every wait below ends on an event
SKMSG = pathlib.Path(sys.executable).with_name("skmsg")  # the console script

MISBEHAVING = """
import sys
from decimal import Decimal

import skmsg_core as sk

def verdict(skb, backends):
    data = bytes(skb.data)
    if b"SNAN" in data:
        sk.sk_redirect_map(skb, backends, 0, 0)
        return Decimal("sNaN")       # its == raises: no verdict
    if b"EXIT" in data:
        sys.exit(3)
    return sk.sk_redirect_map(skb, backends, 0, 0)
"""

SLEEPING = """
import time

import skmsg_core as sk

def verdict(skb, backends):
    if b"SLEEP" in bytes(skb.data):
        time.sleep(5)
    return sk.sk_redirect_map(skb, backends, 0, 0)
"""


class Pipe:
    """Reads a subprocess pipe until a pattern shows up."""

    def __init__(self, stream: trio.abc.ReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.data = b""

    async def until(self, pattern: bytes) -> re.Match[bytes]:
        while (m := re.search(pattern, self.data)) is None:
            chunk = await self.stream.receive_some()
            assert chunk, f"EOF before {pattern!r}: {self.data!r}"
            self.data += chunk
        return m

    async def until_eof(self) -> bytes:
        while chunk := await self.stream.receive_some():
            self.data += chunk
        return self.data


class Client:
    """A client of the proxy: ``send`` a message, read the next ``reply``
    (length-prefixed over TCP or TLS; a datagram over UDP)."""

    def __init__(self, stream: trio.abc.Stream | None, sock: trio.socket.SocketType | None):
        self.stream, self.sock = stream, sock
        self.buf = b""

    async def send(self, payload: bytes) -> None:
        if self.sock is not None:
            await self.sock.send(payload)
        else:
            assert self.stream is not None
            await self.stream.send_all(frame(payload))

    async def reply(self) -> bytes:
        with trio.fail_after(TIMEOUT):
            if self.sock is not None:
                return await self.sock.recv(65536)
            assert self.stream is not None
            while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "big"):
                chunk = await self.stream.receive_some()
                assert chunk, "the proxy closed the connection"
                self.buf += chunk
            n = 4 + int.from_bytes(self.buf[:4], "big")
            msg, self.buf = self.buf[4:n], self.buf[n:]
            return msg

    async def round_trip(self, payload: bytes) -> bytes:
        await self.send(payload)
        return await self.reply()


@attrs.define
class RunningProxy:
    mode: str
    port: int
    cert: str | None
    stderr: Pipe
    clients: list[Client] = attrs.Factory(list)

    async def client(self) -> Client:
        if self.mode == "udp":
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.connect(("127.0.0.1", self.port))
            client = Client(None, sock)
        elif self.mode == "tls":
            assert self.cert is not None
            ctx: ssl.SSLContext = client_context(self.cert)
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", self.port, ssl_context=ctx)
            client = Client(stream, None)
        else:
            client = Client(await trio.open_tcp_stream("127.0.0.1", self.port), None)
        self.clients.append(client)
        return client


@asynccontextmanager
async def skmsg_proxy(mode: str, *args: str) -> AsyncIterator[RunningProxy]:
    """``skmsg proxy`` on a free port with two embedded echo backends (over
    ``mode``: tcp, tls or udp) and ``args``; Ctrl-C at the end, which must end
    it with status 0 and no traceback."""
    argv = [str(SKMSG), "proxy", "--listen", "127.0.0.1:0", *args]
    argv += {"tcp": [], "tls": ["--tls"], "udp": ["--udp"]}[mode]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(lambda task_status: trio.run_process(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, task_status=task_status,
        ))
        out, err = Pipe(proc.stdout), Pipe(proc.stderr)
        with trio.fail_after(TIMEOUT):
            port = int((await out.until(rb"listening on 127\.0\.0\.1:(\d+)\n")).group(1))
            cert = None
            if mode == "tls":
                cert = (await out.until(rb"certificate (\S+)\)")).group(1).decode()
            await out.until(rb"Ctrl-C stops\n")
        proxy = RunningProxy(mode, port, cert, err)
        try:
            yield proxy
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(TIMEOUT):
                for c in proxy.clients:
                    if c.stream is not None:  # TLS: with close_notify (no truncation)
                        await c.stream.aclose()
                    elif c.sock is not None:
                        c.sock.close()
                proc.send_signal(signal.SIGINT)
                await err.until_eof()
                assert await proc.wait() == 0, err.data.decode()
    assert b"Traceback" not in err.data, err.data.decode()


@pytest.mark.parametrize("mode", ["tcp", "tls", "udp"])
async def test_a_policy_that_returns_snan_or_exits_drops_those_messages_only(
    mode: str, tmp_path: pathlib.Path
) -> None:
    policy = tmp_path / "policy.py"
    policy.write_text(MISBEHAVING)
    async with skmsg_proxy(mode, "--policy", str(policy)) as proxy:
        good, bad = await proxy.client(), await proxy.client()
        assert await good.round_trip(b"hello") == b"[backend 0] hello"
        for payload in (b"SNAN 1", b"EXIT 1", b"SNAN 2", b"EXIT 2"):
            await bad.send(payload)
            assert await good.round_trip(b"still") == b"[backend 0] still"
        # the misbehaving client is served too, and nothing came back for its drops
        assert await bad.round_trip(b"after") == b"[backend 0] after"
    log = proxy.stderr.data.decode()
    assert re.search(r"errors: policy 4, parse 0", log), log
    # backend 0: 6 messages went, the 2 sent its way with sNaN counted as dropped
    assert re.search(r"\[0\] \S+ +6 +\d+ +- +2 +6 ", log), log
    assert "SystemExit" in log and "decimal.Decimal" in log, log


@pytest.mark.parametrize("mode", ["tcp", "udp"])
async def test_with_a_policy_budget_a_sleeping_policy_does_not_stall_other_clients(
    mode: str, tmp_path: pathlib.Path
) -> None:
    budget = 0.2
    policy = tmp_path / "policy.py"
    policy.write_text(SLEEPING)
    latencies: list[float] = []
    async with skmsg_proxy(mode, "--policy", str(policy), "--policy-budget", str(budget)) as proxy:
        good, sleeper = await proxy.client(), await proxy.client()
        assert await sleeper.round_trip(b"hello") == b"[backend 0] hello"
        lot = trio.lowlevel.ParkingLot()

        async def round_trips() -> None:
            while True:
                t0 = time.monotonic()
                assert await good.round_trip(b"ping") == b"[backend 0] ping"
                latencies.append(time.monotonic() - t0)
                lot.unpark_all()

        async def trips_done(n: int) -> None:
            while len(latencies) < n:
                await lot.park()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(round_trips)
            await trips_done(3)
            t0 = time.monotonic()
            await sleeper.send(b"SLEEP")  # dropped after the budget: no reply
            assert await sleeper.round_trip(b"after") == b"[backend 0] after"
            took = time.monotonic() - t0
            await trips_done(len(latencies) + 3)
            nursery.cancel_scope.cancel()
    # the other client was stalled while the policy ran, for about the budget only
    assert budget * 0.75 <= max(latencies) < 1.0, sorted(latencies)[-3:]
    assert took < 1.0
    log = proxy.stderr.data.decode()
    assert "ran longer than its budget of 200 ms" in log, log
    assert re.search(r"errors: policy 1,", log), log
