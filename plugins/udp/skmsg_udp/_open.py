"""Making UDP sockets: opened by the user, adopted from a bare fd, and test pairs."""

from __future__ import annotations

import os
import socket as stdsocket
from typing import Any

import skmsg_core as sk

from ._socket import UdpSocket, _adopted
from ._util import _is_udp

__all__ = ["adopt_fd", "open_udp_socket", "udp_socket_pair"]


async def open_udp_socket(
    local_address: Any = None,
    remote_address: Any = None,
    *,
    family: int | None = None,
) -> UdpSocket:
    """A new :class:`UdpSocket`, bound to ``local_address`` and connected to
    ``remote_address`` when given (``(host, port)``; port 0 binds any free
    port). ``family`` defaults to the one the addresses name (IPv6 for an
    address with a ``:``), else ``AF_INET``.

    Raises:
        OSError: the bind or connect failed.
        ValueError: an address that is not a tuple.
    """
    if family is None:
        family = stdsocket.AF_INET
        for addr in (local_address, remote_address):
            if isinstance(addr, tuple) and addr and ":" in str(addr[0]):
                family = stdsocket.AF_INET6
    raw = stdsocket.socket(family, stdsocket.SOCK_DGRAM, stdsocket.IPPROTO_UDP)
    try:
        sock = UdpSocket(raw)
    except BaseException:
        raw.close()
        raise
    try:
        if local_address is not None:
            await sock.bind(local_address)
        if remote_address is not None:
            await sock.connect(remote_address)
    except BaseException:
        await sock.aclose()
        raise
    return sock


def adopt_fd(fd: int) -> sk.Sock | None:
    """The :class:`Sock` of a UDP socket the user holds only as an fd, for a map
    update by fd (``skmsg_sock_from_fd``): ``None`` if ``fd`` is not a UDP
    socket. The socket is served through a duplicate of ``fd`` (its blocking
    mode untouched) and kept alive while it sits in maps; closing ``fd`` takes
    it out of every map at the next map operation on it. A socket adopted for
    an update that then failed (it never entered a map) is let go here, at the
    next adoption."""
    for other in [s for s in _adopted.values() if s.sk.psock is None]:
        other._close_adopted()
    try:
        probe = stdsocket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if not _is_udp(probe):
            return None
        family, proto = probe.family, probe.proto
    finally:
        probe.detach()
    old = _adopted.pop(fd, None)
    if old is not None:
        old._close_now()
    dup = os.dup(fd)
    try:
        raw = stdsocket.socket(family, stdsocket.SOCK_DGRAM, proto, fileno=dup)
    except OSError:
        os.close(dup)
        raise
    sock = UdpSocket(raw, _adopted_fd=fd)
    _adopted[fd] = sock
    return sock.sk


async def udp_socket_pair(host: str = "127.0.0.1") -> tuple[UdpSocket, UdpSocket]:
    """Two new :class:`UdpSocket` on ``host`` (``"::1"`` for IPv6), each bound to
    a free port and connected to the other: the datagram counterpart of
    :func:`skmsg_tcp.testing.tcp_stream_pair`, and the pair maker the UDP
    plugin's conformance check runs on.

    Raises:
        OSError: ``host`` cannot be bound.
    """
    a = await open_udp_socket((host, 0))
    try:
        b = await open_udp_socket((host, 0))
    except BaseException:
        await a.aclose()
        raise
    try:
        await a.connect(b.getsockname())
        await b.connect(a.getsockname())
    except BaseException:
        await a.aclose()
        await b.aclose()
        raise
    return a, b
