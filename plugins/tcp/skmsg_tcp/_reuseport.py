"""Reuseport groups of listening streams, with an SK_REUSEPORT-style program.

The kernel runs a reuseport program per SYN and hands the connection to the
listener it selected from a socket map (``bpf_sk_select_reuseport``). In user
space the choice is made per *accepted* connection: the group accepts on
every member's socket, runs the core's :class:`skmsg_core.ReuseportGroup`
selection, and queues the connection on the chosen listener, whose
``accept()`` returns it. A refused connection (``SK_DROP``, or a failed
selection the program turns into a drop) is reset at once; the client sees
``ECONNRESET`` on its first read or write where the kernel would have
refused the SYN (``ECONNREFUSED``) — a documented difference.

Every member socket has ``SO_REUSEPORT``, so other processes may bind the
same address: the kernel spreads connections between processes, and each
process's program chooses among its own listeners.
"""

from __future__ import annotations

import socket as stdsocket
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

import skmsg_core as sk

from ._listener import SkListener, open_tcp_listeners
from ._stream import SkStream

__all__ = ["SkReuseportGroup", "open_reuseport_group"]


@attrs.define(eq=False)
class SkReuseportGroup:
    """Listeners sharing one address; ``group`` is the core's selection state.

    Attach the select program with :meth:`attach`; connections are accepted
    and dispatched while the :func:`open_reuseport_group` block runs.
    """

    listeners: list[SkListener]
    group: sk.ReuseportGroup
    accepted: int = 0
    refused: int = 0
    _queues: dict[
        int, tuple[trio.MemorySendChannel[SkStream], trio.MemoryReceiveChannel[SkStream]]
    ] = attrs.field(factory=dict)

    def attach(self, prog: sk.Program | Callable[[sk.ReuseportMd], Any]) -> sk.Program:
        """Attach (or replace) the SK_REUSEPORT program.

        Raises:
            OSError(EINVAL): not an SK_REUSEPORT program, or it fails the verifier.
        """
        return self.group.attach(prog)

    @property
    def port(self) -> int:
        """The shared port."""
        return int(self.listeners[0].socket.getsockname()[1])

    async def _dispatch(self, listener: SkListener) -> None:
        while True:
            stream = await listener.accept_socket()
            peer = stream.sk.remote_addr or ()
            flow = zlib.crc32(repr(peer).encode()) & 0xFFFFFFFF
            chosen = self.group.select(flow)
            owner = chosen.owner if chosen is not None else None
            if not isinstance(owner, SkListener) or id(owner) not in self._queues:
                self.refused += 1
                stream.socket.setsockopt(
                    stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                await stream.aclose()
                continue
            self.accepted += 1
            await self._queues[id(owner)][0].send(stream)


@asynccontextmanager
async def open_reuseport_group(
    port: int = 0, *, count: int = 2, host: str = "127.0.0.1", backlog: int | None = None
) -> AsyncIterator[SkReuseportGroup]:
    """Open ``count`` listeners on one ``host:port`` with ``SO_REUSEPORT`` and
    dispatch their connections through the group's program while the block runs.

    Port 0 picks a free port for the first listener and binds the rest to it.

    Raises:
        OSError: the address cannot be bound (EADDRINUSE ...).
    """
    members: list[SkListener] = []
    try:
        first = (await open_tcp_listeners(port, host=host, backlog=backlog, reuseport=True))[0]
        members.append(first)
        bound = first.socket.getsockname()[1]
        for _ in range(count - 1):
            members += await open_tcp_listeners(bound, host=host, backlog=backlog, reuseport=True)
        group = sk.ReuseportGroup(first.socket.family, stdsocket.IPPROTO_TCP)
        out = SkReuseportGroup(members, group)
        for listener in members:
            send, receive = trio.open_memory_channel[SkStream](backlog or 128)
            listener._inbox = receive
            out._queues[id(listener)] = (send, receive)
            group.add(listener.sk)
        async with trio.open_nursery() as nursery:
            for listener in members:
                nursery.start_soon(out._dispatch, listener)
            try:
                yield out
            finally:
                nursery.cancel_scope.cancel()
                for send, _ in out._queues.values():
                    send.close()
    finally:
        for listener in members:
            await listener.aclose()
