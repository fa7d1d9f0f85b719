"""Accepting clients for ``skmsg proxy``: in batches, and within the file descriptor limit.

Rules
-----
- A listener is read in batches: when it is readable, every connection
  waiting is accepted at once (up to :data:`ACCEPT_BATCH`), then the loop
  yields; so a thousand clients arriving together are accepted in a few
  scheduler passes, whatever else the proxy is busy with, and a busy accept
  loop still lets the data path run between batches.
- Every client takes a file descriptor, and its first backend connection
  another (two with the embedded backends, which live in this process). The
  proxy accepts a client only while there is room for both under
  ``RLIMIT_NOFILE`` (less a margin for checks and handshakes): past that,
  clients wait in the listen backlog, served as soon as connections close.
  Should ``accept`` itself run out (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
  ``ENOMEM``: something else took descriptors), the loop backs off (0.1 s,
  doubling to 1 s, or until a connection closes) and tries again.
- Either way one line says so, at most once per interval whatever the
  number of tries, with the number of clients waiting in the backlog; the
  proxy recovers by itself.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Awaitable, Callable

import trio

import skmsg_tcp
from skmsg_core.runtime import RateLimitedLog

from ._stats import ProxyCounters
from ._upstream import LOCAL_ERRNOS

__all__ = ["ACCEPT_BATCH", "FdBudget", "accept_clients"]

log = logging.getLogger("skmsg")
limited_log = RateLimitedLog(log)

#: The most connections accepted in one go before the loop yields.
ACCEPT_BATCH = 256
#: File descriptors kept free for health checks, handshakes and the runtime.
FD_MARGIN = 16


def open_fds() -> int | None:
    """How many file descriptors this process has open (Linux), or ``None``."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
    except OSError:
        return None


class FdBudget:
    """How many more clients fit under this process's ``RLIMIT_NOFILE``.

    ``per_conn``: descriptors one backend connection takes (2 when the backend
    runs in this process). The count is the proxy's own: the descriptors open
    when it started, one per client, and one connection per client held in
    reserve (its first), plus every connection beyond.
    """

    def __init__(self, counters: ProxyCounters, per_conn: int) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit: int | None = None if soft == resource.RLIM_INFINITY else int(soft)
        self.base = open_fds() or 0
        self.per_conn = per_conn
        self.counters = counters
        #: Clients accepted whose service has not started (not yet in ``clients_open``).
        self.starting = 0
        self._released = trio.Event()
        counters.fd_limit = self.limit or 0

    def started(self) -> None:
        """An accepted client's service started: it is counted in ``clients_open`` now."""
        self.starting -= 1

    def in_use(self) -> int:
        """Descriptors in use or held for a client's first connection."""
        c = self.counters
        conns = sum(b.conns_open for b in c.backends)
        clients = c.clients_open + self.starting
        return self.base + clients * (1 + self.per_conn) + max(0, conns - clients) * self.per_conn

    def room(self) -> int:
        """How many more clients may be accepted now."""
        if self.limit is None:
            return ACCEPT_BATCH
        return (self.limit - FD_MARGIN - self.in_use()) // (1 + self.per_conn)

    def released(self) -> None:
        """A client or a connection closed: wake an accept loop waiting for room."""
        self._released.set()
        self._released = trio.Event()

    async def wait_released(self, timeout: float) -> None:
        """Wait until :meth:`released` is called, or ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            await self._released.wait()


async def accept_clients(
    listener: skmsg_tcp.SkListener,
    handle: Callable[[skmsg_tcp.SkStream], Awaitable[None]],
    nursery: trio.Nursery,
    budget: FdBudget,
) -> None:
    """Accept clients on ``listener`` until cancelled, each served by
    ``handle(stream)`` in ``nursery`` (see the module's rules).

    Raises:
        OSError: an accept error that is neither a connection's own nor a
            shortage (the listener is broken).
        trio.ClosedResourceError: the listener was closed.
    """
    pause = 0.1
    paused = False
    while True:
        await listener.wait_acceptable()
        room = budget.room()
        if room <= 0:
            if not paused:
                paused = True
                budget.counters.accept_paused += 1
            _say_waiting(listener, budget, None)
            await budget.wait_released(1.0)
            continue
        paused = False
        for _ in range(min(ACCEPT_BATCH, room)):
            try:
                stream = listener.accept_nowait()
            except trio.WouldBlock:
                break
            except OSError as exc:
                if exc.errno not in LOCAL_ERRNOS:
                    raise
                budget.counters.accept_paused += 1
                _say_waiting(listener, budget, exc)
                await budget.wait_released(pause)
                pause = min(pause * 2, 1.0)
                break
            pause = 0.1
            budget.starting += 1
            nursery.start_soon(handle, stream)
            del stream  # not held while the loop waits: it is freed when it closes


def _say_waiting(listener: skmsg_tcp.SkListener, budget: FdBudget, exc: OSError | None) -> None:
    backlog = listener.backlog()
    if exc is not None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        error = f"accept failed: {os.strerror(exc.errno or 0).lower()} ({name})"
    else:
        error = "at the file descriptor limit (RLIMIT_NOFILE)"
    limited_log.event(
        ("accept", exc is None), "accept_paused", listen=_name(listener), error=error,
        fd_limit=budget.limit, waiting=backlog[0] if backlog else None,
        resume="as connections close",
    )


def _name(listener: skmsg_tcp.SkListener) -> str:
    try:
        host, port = listener.socket.getsockname()[:2]
    except OSError:
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
