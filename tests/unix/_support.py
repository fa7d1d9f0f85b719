"""Helpers of the Unix tests: pairs of every kind, and waiting for what arrives."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import skmsg_udp
import skmsg_unix
from skmsg_tcp.testing import tcp_stream_pair

TIMEOUT = 10.0

#: The kinds of connected pair a redirect can go between.
KINDS = ("tcp", "udp", "unix_stream", "unix_dgram")


async def pair(kind: str) -> tuple[Any, Any]:
    """A new connected pair of ``kind``, in no map."""
    if kind == "tcp":
        return await tcp_stream_pair()
    if kind == "udp":
        return await skmsg_udp.udp_socket_pair()
    if kind == "unix_stream":
        return await skmsg_unix.unix_stream_pair()
    if kind == "unix_dgram":
        return await skmsg_unix.unix_dgram_pair()
    raise ValueError(kind)


def is_stream(sock: Any) -> bool:
    return hasattr(sock, "receive_some")


async def send(sock: Any, data: bytes) -> None:
    """One send: ``send_all`` on a stream, one datagram on a datagram socket."""
    if is_stream(sock):
        await sock.send_all(data)
    else:
        await sock.send(data)


async def receive_exactly(sock: Any, n: int, timeout: float = TIMEOUT) -> bytes:
    """``n`` bytes from ``sock`` (datagrams joined), or fail after ``timeout``."""
    got = b""
    with trio.fail_after(timeout):
        while len(got) < n:
            chunk = await (sock.receive_some() if is_stream(sock) else sock.receive())
            if not chunk and is_stream(sock):
                raise AssertionError(f"EOF after {got!r}")
            got += chunk
    return got


async def receive_n(sock: Any, n: int, timeout: float = TIMEOUT) -> list[bytes]:
    """Exactly the next ``n`` datagrams ``sock`` receives."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < n:
            got.append(await sock.receive())
    return got


async def nothing_arrives(sock: Any, wait: float = 0.2) -> None:
    """Assert ``sock`` receives nothing within ``wait`` seconds once every task settled."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    with trio.move_on_after(wait):
        data = await (sock.receive_some() if is_stream(sock) else sock.receive())
        raise AssertionError(f"{sock!r} received {data!r}")


async def aclose_all(*socks: Any) -> None:
    for s in socks:
        await s.aclose()
