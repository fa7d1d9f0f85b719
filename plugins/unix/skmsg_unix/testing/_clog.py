"""Clogging a connected pair of Unix streams, for trio's clogged-stream tests."""

from __future__ import annotations

import socket as stdsocket
from collections.abc import Awaitable, Callable

from skmsg_core.testing import clog_both_ways

from .._stream import UnixStream

__all__ = ["clog_unix_pair"]


async def clog_unix_pair(left: UnixStream, right: UnixStream) -> None:
    """Clog a connected pair both ways, as trio's "clogged stream" tests want:
    afterwards ``send_all`` on either side blocks until the other side receives.

    A Unix stream's bytes in flight are charged to the *sender* (its
    ``SO_SNDBUF``), so that is what shrinks, with the ingress queue of a stream
    already in a map (so its receive pump stops reading soon); then writes go
    below any program until they have blocked twice in a row with every task
    idle, one way then the other, and again until neither way takes a byte
    more (a receive pump that reads on lets its sender move again). Clog a
    pair *after* putting it into maps.

    Raises:
        OSError: a socket option could not be set, or the connection failed.
        TypeError: ``left`` or ``right`` is not a :class:`UnixStream`.
    """
    for s in (left, right):
        if not isinstance(s, UnixStream):
            raise TypeError(f"clog_unix_pair takes UnixStreams, not {type(s).__name__}")
    for s in (left, right):
        s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 4096)
        psock = s.sk.psock
        if psock is not None:
            psock.rcvbuf = 4096
    chunk = memoryview(b"x" * 1024)

    def below_programs(sender: UnixStream) -> Callable[[], Awaitable[int]]:
        async def write() -> int:
            await sender.egress_write([chunk], False)  # below the SK_MSG program
            return chunk.nbytes

        return write

    await clog_both_ways(below_programs(left), below_programs(right))
