"""Real trio backends for the proxy's fault tests, and clients that say what they saw.

A :class:`Backend` is a length-prefixed echo server on 127.0.0.1 (it answers
``[name] payload``) that a test can make misbehave: hold its replies, never
read, half-close after some answers, reset every connection, be killed and
restarted on the same port. Everything is real sockets; every wait is on an
event (a message received, a connection seen), never a timer.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import skmsg_core as sk
from skmsg import Address, Proxy, ProxyConfig, run_proxy
from skmsg._metrics import render, snapshot
from skmsg._parsers import parse_length_prefixed

#: A guard against hangs; every wait ends on an event long before it.
TIMEOUT = 20.0
#: Back-offs short enough for a test to see a backend come back.
FAST = {"backoff_min": 0.05, "backoff_max": 0.2}


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class Metrics:
    """What ``/metrics`` of ``proxy`` says now: the exposition ``--metrics``
    serves (the same snapshot and rendering), generated and parsed back.
    Call on the proxy's trio thread."""

    def __init__(self, proxy: Proxy) -> None:
        snap = snapshot(proxy)

        class One(Collector):
            def collect(self) -> Any:
                return render(snap)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(One())
        self.samples = [
            (s.name, s.labels, s.value)
            for fam in text_string_to_metric_families(generate_latest(registry).decode())
            for s in fam.samples
        ]

    def __call__(self, name: str, **labels: str) -> float:
        """The sum of the samples ``name`` whose labels include ``labels``
        (a backend may be given as ``index``)."""
        found = [v for n, lab, v in self.samples
                 if n == name and all(lab.get(k) == w for k, w in labels.items())]
        assert found, f"no sample {name} {labels}"
        return sum(found)


class Backend:
    """A length-prefixed backend (see the module).

    ``hold``: replies wait until :meth:`release` (messages are still read and
    recorded); ``reply``: answer at all; ``never_read``: accept and read
    nothing; ``half_close_after``: after that many answers on a connection,
    shut its sending side (EOF) and go on reading (answering nothing more);
    ``pad``: add that many bytes to each answer.
    """

    def __init__(
        self,
        name: str,
        *,
        hold: bool = False,
        reply: bool = True,
        never_read: bool = False,
        half_close_after: int | None = None,
        pad: int = 0,
    ) -> None:
        self.name = name
        self.reply = reply
        self.never_read = never_read
        self.half_close_after = half_close_after
        self.pad = b"." * pad
        self.port = 0
        self.received: list[bytes] = []
        self.accepted = 0
        self.conns: set[trio.SocketStream] = set()
        self._held = trio.Event() if hold else None
        self._lot = trio.lowlevel.ParkingLot()
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def address(self) -> Address:
        return Address("127.0.0.1", self.port)

    def release(self) -> None:
        """Let held replies go."""
        if self._held is not None:
            self._held.set()

    async def wait(self, ready: Any) -> None:
        """Wait until ``ready()`` is true (looked at after each message or
        connection this backend sees)."""
        with trio.fail_after(TIMEOUT):
            while not ready():
                await self._lot.park()

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen (on the same port as before, once it had one) and serve."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        nursery.start_soon(self._serve, listeners, self._scope)

    async def _serve(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        try:
            with scope:
                await trio.serve_listeners(self._handle, listeners)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            self._stopped.set()

    async def kill(self, *, reset: bool = False) -> None:
        """Stop as a killed process does: the listener closes, so do its
        connections (with a reset when ``reset``)."""
        if reset:
            self.reset_connections()
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()

    def reset_connections(self) -> int:
        """Reset (RST) every open connection; returns how many."""
        conns = list(self.conns)
        for stream in conns:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            stream.socket.close()
        return len(conns)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.conns.add(stream)
        self.accepted += 1
        self._lot.unpark_all()
        try:
            if self.never_read:
                await trio.sleep_forever()
            parser = sk.StrParser(parse_length_prefixed, max_msg_size=1 << 24)
            answered = 0
            shut = False
            async for data in stream:
                for m in parser.feed(data):
                    payload = bytes(m[4:])
                    self.received.append(payload)
                    self._lot.unpark_all()
                    if not shut and self.half_close_after == answered:
                        await stream.send_eof()
                        shut = True
                    if shut or not self.reply:
                        continue
                    if self._held is not None:
                        await self._held.wait()
                    await stream.send_all(frame(f"[{self.name}] ".encode() + payload + self.pad))
                    answered += 1
                    if self.half_close_after == answered:
                        await stream.send_eof()
                        shut = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.conns.discard(stream)
            self._lot.unpark_all()
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def serving(*backends: Backend) -> AsyncIterator[trio.Nursery]:
    """Run ``backends`` for the block; the nursery restarts killed ones."""
    async with trio.open_nursery() as nursery:
        for b in backends:
            await b.start(nursery)
        yield nursery
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxy_running(**kw: Any) -> AsyncIterator[Proxy]:
    config = ProxyConfig(listen=Address("127.0.0.1", 0), **kw)
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(run_proxy, config)
        yield proxy
        nursery.cancel_scope.cancel()


class Unanswering:
    """A listener that answers connects until :meth:`jam` fills its accept
    queue: from then on a connect to ``address`` is never answered (its SYNs
    are dropped). :meth:`close` frees everything."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.address = Address(*self.listener.getsockname()[:2])
        self.fillers: list[socket.socket] = []

    def jam(self) -> None:
        while True:  # connect until one is not taken at once: the queue is full
            s = socket.socket()
            s.setblocking(False)
            self.fillers.append(s)
            if s.connect_ex((self.address.host, self.address.port)) not in (0, 115):
                break  # not EINPROGRESS
            if not select.select([], [s], [], 0.2)[1]:
                break

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


@contextmanager
def unanswering_backend() -> Iterator[Unanswering]:
    """An :class:`Unanswering` listener, closed when the block ends."""
    stuck = Unanswering()
    try:
        yield stuck
    finally:
        stuck.close()


async def wait_counted(proxy: Proxy, ready: Any) -> None:
    """Wait until ``ready(proxy.statistics())`` is true."""
    with trio.fail_after(TIMEOUT):
        await proxy.counters.wait_for(lambda: ready(proxy.statistics()))


class Client:
    """A length-prefixed client of the proxy that keeps what it saw."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = sk.StrParser(parse_length_prefixed, max_msg_size=1 << 24)
        self.got: list[bytes] = []
        self.closed = False

    @classmethod
    async def connect(cls, proxy: Proxy) -> Client:
        addr = proxy.listen[0]
        return cls(await trio.open_tcp_stream(addr.host, addr.port))

    async def send(self, payload: bytes) -> None:
        await self.stream.send_all(frame(payload))

    async def _fill(self, n: int | None) -> None:
        while not self.closed and (n is None or len(self.got) < n):
            try:
                data = await self.stream.receive_some()
            except trio.BrokenResourceError:
                data = b""  # a reset is a close too
            if not data:
                self.closed = True
            self.got += [bytes(m[4:]) for m in self.parser.feed(data)]

    async def replies(self, n: int) -> list[bytes]:
        """The next ``n`` replies (fewer if the proxy closed first)."""
        with trio.fail_after(TIMEOUT):
            await self._fill(n)
        out, self.got = self.got[:n], self.got[n:]
        return out

    async def round_trip(self, payload: bytes) -> bytes:
        await self.send(payload)
        got = await self.replies(1)
        assert got, f"closed instead of answering {payload!r}"
        return got[0]

    async def closed_by_proxy(self, within: float = TIMEOUT) -> list[bytes]:
        """Wait for the proxy to close this connection (EOF or reset) within
        ``within`` seconds; returns the replies that came first."""
        with trio.fail_after(within):
            await self._fill(None)
        out, self.got = self.got, []
        return out

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
