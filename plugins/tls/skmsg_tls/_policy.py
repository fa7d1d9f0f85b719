"""``PatternGuard``: find forbidden byte patterns however the stream was cut.

Why
---
A verdict program sees one unit at a time: on TLS one *record* (the SK_MSG
verdict on each record a sender closes, the SK_SKB verdict on each record
received), and the peer or the application chooses where records end. A
check of each unit on its own is bypassed by cutting ``b"/admin"`` into
``b"/ad"`` and ``b"min"``. The kernel gives a BPF program two tools against
that, and so does skmsg:

- **per-socket state** (a BPF map keyed by the socket cookie): remember the
  last ``len(pattern) - 1`` bytes the program let through, and look for the
  pattern in *those bytes + the new unit*. Nothing can then cross a boundary
  unseen. This is what :class:`PatternGuard` keeps, per socket, for you.
- **cork** (``msg_cork_bytes``, SK_MSG only): hold a record open until more
  bytes come, so the program sees them together; but a record that is full
  (16 KiB) closes regardless, so cork alone is not enough.

Fail closed: once a socket has matched it stays matched (every later unit is
forbidden too), as the kernel's DROP verdict sticks on TX. So what passes
never contains a whole forbidden pattern, however it was split: at most a
proper prefix of it went out before the unit that completed it was dropped.

Use it inside a verdict program::

    guard = PatternGuard(b"SECRET")

    def egress(msg):
        return sk.SK_DROP if guard.matches(msg) else sk.SK_PASS

State lives as long as the socket (a weak reference to its ``Sock``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import skmsg_core as sk

__all__ = ["PatternGuard"]


class _State:
    __slots__ = ("carry", "matched")

    def __init__(self) -> None:
        self.carry = b""
        self.matched = False


class PatternGuard:
    """Per-socket matcher of forbidden byte patterns across verdict units.

    ``patterns``: non-empty byte strings; ``ignore_case`` compares ASCII
    letters without case; ``on_match(sk)`` is called once per socket, from
    inside the program, when the socket first matches (it must not block: set
    an event, cancel a scope).

    Raises:
        ValueError: no pattern, or an empty one.
    """

    def __init__(
        self,
        *patterns: bytes,
        ignore_case: bool = False,
        on_match: Callable[[sk.Sock], Any] | None = None,
    ) -> None:
        if not patterns or any(not p for p in patterns):
            raise ValueError("PatternGuard needs at least one non-empty pattern")
        self.ignore_case = ignore_case
        self.patterns = tuple(p.lower() if ignore_case else bytes(p) for p in patterns)
        self._keep = max(len(p) for p in self.patterns) - 1
        self._state: weakref.WeakKeyDictionary[sk.Sock, _State] = weakref.WeakKeyDictionary()
        self._detached = _State()  # a context without a socket (unit tests of a program)
        self.on_match = on_match
        #: Sockets that have matched, ever (a counter for statistics).
        self.matches_total = 0

    def _unit(self, ctx: sk.SkMsg | sk.SkBuff) -> bytes:
        if isinstance(ctx, sk.SkMsg):
            # the program sees one element; make the whole message visible
            if ctx.size and sk.msg_pull_data(ctx, 0, ctx.size, 0) != 0:
                raise ValueError("msg_pull_data failed on the whole message")
            return bytes(ctx.data)
        return bytes(ctx.data)

    def matches(self, ctx: sk.SkMsg | sk.SkBuff) -> bool:
        """Whether the stream up to and including this unit holds a forbidden
        pattern (or matched before on this socket). Remembers the unit's tail.

        Raises:
            ValueError: the message could not be made visible (inside a
                program that is a DROP: fail closed).
        """
        sock = ctx.sk
        state = self._detached if sock is None else self._state.get(sock)
        if state is None:
            state = self._state[sock] = _State()  # type: ignore[index]
        if state.matched:
            return True
        data = self._unit(ctx)
        if self.ignore_case:
            data = data.lower()
        window = state.carry + data
        if any(p in window for p in self.patterns):
            state.matched = True
            self.matches_total += 1
            if self.on_match is not None and sock is not None:
                self.on_match(sock)
            return True
        keep = self._keep
        state.carry = window[-keep:] if keep else b""
        return False

    def matched(self, sock: object) -> bool:
        """Whether ``sock`` (a stream, a ``Sock``) has matched."""
        target = sk.sock_from(sock) if not isinstance(sock, sk.Sock) else sock
        state = self._state.get(target)
        return bool(state and state.matched)
