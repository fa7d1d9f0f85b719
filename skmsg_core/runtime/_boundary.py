"""The per-socket error boundary: what must go on up, past one socket's service."""

from __future__ import annotations

import trio

__all__ = ["escapes_boundary"]

_ESCAPING = (trio.Cancelled, KeyboardInterrupt)


def escapes_boundary(exc: BaseException) -> bool:
    """Whether ``exc`` must go on up through a socket's error boundary: trio's
    cancellation and Ctrl-C, alone or in an exception group (a nursery's);
    everything else raised while serving one socket is that socket's error."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(_ESCAPING) is not None
    return isinstance(exc, _ESCAPING)
