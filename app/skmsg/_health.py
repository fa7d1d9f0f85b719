"""Backend health for ``skmsg proxy``: passive marks, active checks, and the map a policy sees.

Rules
-----
- A backend is *up* until a failure marks it *down*: a connect that fails or
  times out, a TLS handshake to it that fails, a connection to it that breaks
  (a reset, a TLS error), a reply owed for ``--idle-timeout``, a write it does
  not read for ``--write-timeout``, or a failed active check. Running out of
  file descriptors here is not its failure.
- A backend marked down stays down for a back-off period: ``backoff_min``
  seconds the first time (1 s by default), doubled at each failure that
  follows, at most ``backoff_max`` (30 s). A failure while it is down and its
  back-off runs changes nothing (many clients see one outage once).
- When the back-off has run out the backend counts as up again for routing
  (``up(i)`` is true), so the next message routed to it tries a connection:
  one that succeeds marks it up (and the back-off starts again from
  ``backoff_min``), one that fails marks it down for the next, longer,
  back-off. Clients already connected use it again as soon as it is up: their
  connections to it are made when a message is first routed there.
- With ``--health-interval SECONDS`` every backend is also checked actively
  every that many seconds: a TCP connect (and for ``--backend-tls`` a TLS
  handshake), then a close. A check that succeeds marks the backend up at
  once, one that fails marks it down. Checks run whatever the back-off.

A policy reads the health through :class:`BackendMap`, the map it is given:
``backends.up(i)``. The default round-robin policy skips backends that are
down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence

import trio

import skmsg_core as sk
from skmsg_core.runtime import RateLimitedLog, log_event

from ._stats import BackendCounters, ProxyCounters

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "BackendHealth", "BackendMap", "run_health_checks"]

log = logging.getLogger("skmsg")
limited_log = RateLimitedLog(log)

#: The first back-off of a backend marked down, in seconds.
BACKOFF_MIN = 1.0
#: The longest back-off, in seconds.
BACKOFF_MAX = 30.0


class BackendHealth:
    """The health of backend ``index`` (see the module's rules), shared by every
    client. ``counters``: that backend's, whose ``up``/``downs`` it keeps;
    ``proxy_counters``: woken on every change (:meth:`ProxyCounters.changed`).

    Time is trio's clock (``trio.current_time``): call it from the trio thread.
    """

    __slots__ = (
        "_backoff",
        "_down",
        "_retry_at",
        "address",
        "backoff_max",
        "backoff_min",
        "counters",
        "index",
        "proxy_counters",
    )

    def __init__(
        self,
        index: int,
        address: str,
        counters: BackendCounters,
        proxy_counters: ProxyCounters,
        *,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        if not 0 < backoff_min <= backoff_max < math.inf:
            raise ValueError(
                f"back-off must be 0 < min <= max < inf, not {backoff_min}, {backoff_max}"
            )
        self.index = index
        self.address = address
        self.counters = counters
        self.proxy_counters = proxy_counters
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._down = False
        self._retry_at = 0.0
        self._backoff = backoff_min

    def up(self) -> bool:
        """Whether to route to it: not down, or down with its back-off run out
        (the next connection tries it)."""
        return not self._down or trio.current_time() >= self._retry_at

    @property
    def down(self) -> bool:
        """Marked down (its back-off may have run out: see :meth:`up`)."""
        return self._down

    @property
    def retry_in(self) -> float:
        """Seconds until its back-off runs out (0 when up or run out)."""
        return max(0.0, self._retry_at - trio.current_time()) if self._down else 0.0

    def failed(self, why: str) -> bool:
        """A failure of this backend (``why``: what failed, for the log). Marks it
        down for the next back-off, unless it is down with its back-off still
        running. Returns whether it was marked down now."""
        now = trio.current_time()
        if self._down and now < self._retry_at:
            return False
        was_up = not self._down
        self._down = True
        self._retry_at = now + self._backoff
        backoff = self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        c = self.counters
        c.up = False
        c.downs += 1
        self.proxy_counters.changed()
        limited_log.event(
            ("down", self.index), "backend_down", backend=self.address, index=self.index,
            error=why, again=not was_up, retry_in=backoff,
        )
        return True

    def succeeded(self) -> None:
        """A connection to it (or a check) succeeded: it is up, and its next
        back-off is ``backoff_min`` again."""
        self._backoff = self.backoff_min
        if not self._down:
            return
        self._down = False
        self.counters.up = True
        self.proxy_counters.changed()
        log_event(log, logging.WARNING, "backend_up", backend=self.address, index=self.index)


class BackendMap(sk.SockMap):
    """One client's backends as its policy sees them: index ``i`` is the
    ``i``-th backend. Every index holds that client's *slot* for the backend
    (see :mod:`._session`), connected or not, so
    ``sk_redirect_map(skb, backends, i, 0)`` always finds it; the connection is
    made when the first message is routed there.

    :meth:`up` tells whether backend ``i`` is up (see :mod:`._health`).
    """

    def __init__(self, health: Sequence[BackendHealth], *, name: str) -> None:
        super().__init__(max_entries=len(health), name=name)
        self._health = health

    def up(self, i: int) -> bool:
        """Whether backend ``i`` is up: not marked down, or its back-off after a
        failure has run out (a message routed there tries it). False for an
        index that is no backend."""
        if type(i) is not int or not 0 <= i < len(self._health):
            return False
        return self._health[i].up()

    def up_indices(self) -> list[int]:
        """The indices of the backends that are up, in order."""
        return [i for i, h in enumerate(self._health) if h.up()]


async def run_health_checks(
    health: Sequence[BackendHealth],
    check: Callable[[int], Awaitable[bool | str]],
    interval: float,
) -> None:
    """Check every backend every ``interval`` seconds until cancelled:
    ``check(i)`` connects to backend ``i`` (and shakes hands) and returns
    True when that worked, why it failed, or False when it could not tell
    (this process is out of file descriptors: nothing changes). Each round
    checks every backend at once; a round never starts before the last one
    ended.

    Cancellation: the checks in progress are cancelled (their connections closed).
    """

    async def one(h: BackendHealth) -> None:
        result = await check(h.index)
        if result is False:
            return
        h.counters.checks += 1
        if result is True:
            h.succeeded()
        else:
            h.counters.check_failures += 1
            h.failed(f"health check: {result}")
        h.proxy_counters.changed()

    while True:
        async with trio.open_nursery() as nursery:
            for h in health:
                nursery.start_soon(one, h)
        await trio.sleep(interval)
