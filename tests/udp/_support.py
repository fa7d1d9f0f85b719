"""Helpers of the UDP tests: pairs of connected loopback sockets, and waiting for datagrams."""

from __future__ import annotations

import trio
import trio.testing

import skmsg_udp

TIMEOUT = 5.0


async def udp_pair(host: str = "127.0.0.1") -> tuple[skmsg_udp.UdpSocket, skmsg_udp.UdpSocket]:
    """Two UdpSockets on ``host``, bound and connected to each other."""
    return await skmsg_udp.udp_socket_pair(host)


async def receive_n(sock: skmsg_udp.UdpSocket, n: int, timeout: float = TIMEOUT) -> list[bytes]:
    """Exactly the next ``n`` datagrams ``sock`` receives (fails after ``timeout``)."""
    got: list[bytes] = []
    with trio.fail_after(timeout):
        while len(got) < n:
            got.append(await sock.receive())
    return got


async def nothing_arrives(sock: skmsg_udp.UdpSocket, wait: float = 0.2) -> None:
    """Assert ``sock`` receives nothing within ``wait`` seconds (after all tasks settled)."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    with trio.move_on_after(wait):
        data = await sock.receive()
        raise AssertionError(f"{sock!r} received {data!r}")
