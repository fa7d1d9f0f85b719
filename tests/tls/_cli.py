"""The ``openssl`` command-line tools (``s_server``, ``s_client``) as peers of
trio tests: started as subprocesses with pipes, their output collected line
by line so a test can wait for a line and read what OpenSSL did (``-msg``
prints every record and alert it sends ``>>>`` and receives ``<<<``).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

import skmsg_tls as tls
from skmsg_tcp import SkStream, open_tcp_listeners, open_tcp_stream

from ._peers import Pki

OPENSSL = shutil.which("openssl") or "openssl"


class OpenSSLTool:
    """A running ``openssl`` subprocess: stdin to write to, its output (stdout
    and stderr together) as lines."""

    def __init__(self, proc: trio.Process, args: Sequence[str]) -> None:
        self.proc = proc
        self.args = list(args)
        self.lines: list[str] = []
        self._partial = b""
        self._changed = trio.Event()
        self.closed = False

    @property
    def output(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    async def read_output(self) -> None:
        """Collect the output until the process closes it."""
        assert self.proc.stdout is not None
        while True:
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                break
            data = self._partial + chunk
            *done, self._partial = data.split(b"\n")
            self.lines.extend(line.decode(errors="replace") for line in done)
            self._wake()
        if self._partial:
            self.lines.append(self._partial.decode(errors="replace"))
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """Wait for an output line matching the regex ``pattern``.

        Raises:
            AssertionError: the output ended, or ``timeout`` passed, first
                (the message shows the output).
        """
        rx = re.compile(pattern)
        seen = 0
        with trio.move_on_after(timeout):
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                if self.closed:
                    break
                await self._changed.wait()
        raise AssertionError(
            f"openssl {' '.join(self.args[:1])} never printed /{pattern}/; its output:\n"
            + self.output
        )

    def count(self, pattern: str) -> int:
        """How many output lines match the regex ``pattern``."""
        rx = re.compile(pattern)
        return sum(1 for line in self.lines if rx.search(line))

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the tool's stdin."""
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(data)

    async def close_stdin(self) -> None:
        """End the tool's input (``s_client`` then shuts TLS down: close_notify)."""
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()

    async def wait(self, timeout: float = 10) -> int:
        """Wait for the tool to exit (and its output to end); its exit status.

        Raises:
            trio.TooSlowError: it did not exit in time.
        """
        with trio.fail_after(timeout):
            rc = await self.proc.wait()
            while not self.closed:
                await self._changed.wait()
        return rc

    def kill(self) -> None:
        """SIGKILL: the kernel closes its sockets without a word of TLS."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


@asynccontextmanager
async def openssl_tool(*args: str) -> AsyncIterator[OpenSSLTool]:
    """Run ``openssl <args>`` for the length of the block (killed at the end)."""
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            [OPENSSL, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        tool = OpenSSLTool(proc, args)
        nursery.start_soon(tool.read_output)
        try:
            yield tool
        finally:
            with trio.CancelScope(shield=True):
                tool.kill()
                await proc.wait()
                with trio.move_on_after(5):
                    while not tool.closed:
                        await tool._changed.wait()
                nursery.cancel_scope.cancel()


@asynccontextmanager
async def s_server(
    pki: Pki, *options: str, naccept: int = 1
) -> AsyncIterator[tuple[OpenSSLTool, int]]:
    """``openssl s_server`` on a free loopback port for ``naccept``
    connections, with the test certificate; yields the tool and its port once
    it listens."""
    async with openssl_tool(
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-cert",
        pki.certfile,
        "-naccept",
        str(naccept),
        *options,
    ) as tool:
        m = await tool.wait_for(r"^ACCEPT .*:(\d+)$")
        yield tool, int(m.group(1))


@asynccontextmanager
async def s_client(
    pki: Pki, port: int, *options: str
) -> AsyncIterator[OpenSSLTool]:
    """``openssl s_client`` to ``port`` on loopback, verifying the test
    certificate for ``localhost``."""
    async with openssl_tool(
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-servername",
        "localhost",
        "-CAfile",
        pki.cafile,
        "-verify_return_error",
        *options,
    ) as tool:
        yield tool


async def connect(port: int) -> SkStream:
    """A stream connected to ``port`` on loopback."""
    return await open_tcp_stream("127.0.0.1", port)


@asynccontextmanager
async def one_connection() -> AsyncIterator[tuple[int, trio.MemoryReceiveChannel[SkStream]]]:
    """A loopback listener: yields its port and a channel of the streams it
    accepts; closed at the end."""
    listeners = await open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    send, receive = trio.open_memory_channel[SkStream](4)

    async def accept() -> None:
        while True:
            try:
                stream = await listeners[0].accept()
            except trio.ClosedResourceError:  # the block ended
                return
            await send.send(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        try:
            yield port, receive
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):  # a body's error is not lost
                for listener in listeners:
                    await listener.aclose()


async def receive_until(stream: SkStream, wanted: bytes, timeout: float = 10) -> bytes:
    """``receive_some`` until ``wanted`` is among what came; all that came.

    Raises:
        AssertionError: EOF first, or ``timeout`` passed.
    """
    got = bytearray()
    with trio.move_on_after(timeout):
        while wanted not in got:
            chunk = await stream.receive_some()
            assert chunk, f"EOF after {len(got)} bytes: {bytes(got)[-200:]!r}"
            got += chunk
        return bytes(got)
    raise AssertionError(f"{wanted[:40]!r} never came; got {bytes(got)[-200:]!r}")


def alert_line(direction: str, version: str, level: str, name: str) -> str:
    """The regex of ``-msg``'s line for an alert record: ``direction`` ``<<<``
    (OpenSSL received it) or ``>>>`` (sent it)."""
    return (
        rf"^{re.escape(direction)} TLS {re.escape(version)}, "
        rf"Alert \[length 0002\], {level} {name}$"
    )


def version_of(t: tls.TlsSocket) -> str:
    """``1.2`` or ``1.3``, as ``-msg`` prints it."""
    return t.version.removeprefix("TLSv")


Mutation = Callable[[bytes], bytes]


class RecordRelay:
    """A TCP man-in-the-middle on loopback between a client that connects to
    :attr:`port` and the server at ``upstream``: bytes pass both ways as they
    are, cut into TLS records; once :meth:`arm` is called, the next record
    going to the client (``downstream``) or to the server passes through the
    given mutation (flip a byte, change the header, ...)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._armed: dict[str, Mutation] = {}
        self.mutated: dict[str, bytes] = {}
        self.records = {"downstream": 0, "upstream": 0}

    def arm(self, direction: str, mutation: Mutation) -> None:
        """Apply ``mutation`` to the next whole record going ``direction``
        (``downstream``: to the client; ``upstream``: to the server)."""
        self._armed[direction] = mutation

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream, direction: str) -> None:
        buf = bytearray()
        try:
            while data := await src.receive_some(65536):
                buf += data
                out = bytearray()
                while len(buf) >= 5:
                    end = 5 + int.from_bytes(buf[3:5], "big")
                    if len(buf) < end:
                        break
                    record = bytes(buf[:end])
                    del buf[:end]
                    self.records[direction] += 1
                    mutation = self._armed.pop(direction, None)
                    if mutation is not None:
                        record = mutation(record)
                        self.mutated[direction] = record
                    out += record
                if out:
                    await dst.send_all(out)
            if buf:
                await dst.send_all(bytes(buf))
            await dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept one client, connect it upstream, relay until both ends close."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        async with listeners[0]:
            client = await listeners[0].accept()
        server = await trio.open_tcp_stream("127.0.0.1", self.upstream)
        async with client, server, trio.open_nursery() as nursery:
            nursery.start_soon(self._pipe, client, server, "upstream")
            nursery.start_soon(self._pipe, server, client, "downstream")


@asynccontextmanager
async def record_relay(upstream: int) -> AsyncIterator[RecordRelay]:
    """A :class:`RecordRelay` to ``upstream`` for the length of the block."""
    relay = RecordRelay(upstream)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        try:
            yield relay
        finally:
            nursery.cancel_scope.cancel()


def flip_body_byte(record: bytes) -> bytes:
    """A record with one bit of its ciphertext flipped (the header intact)."""
    out = bytearray(record)
    out[len(out) // 2 + 3] ^= 0x20
    return bytes(out)


def with_length(length: int) -> Mutation:
    """A record whose header claims ``length`` bytes of body."""

    def mutate(record: bytes) -> bytes:
        return record[:3] + length.to_bytes(2, "big") + record[5:]

    return mutate


def with_type(content_type: int) -> Mutation:
    """A record whose header says ``content_type``."""

    def mutate(record: bytes) -> bytes:
        return bytes((content_type,)) + record[1:]

    return mutate


def with_version(version: int) -> Mutation:
    """A record whose header carries the legacy version ``version``."""

    def mutate(record: bytes) -> bytes:
        return record[:1] + version.to_bytes(2, "big") + record[3:]

    return mutate
