"""``__sk_buff``: the context an SK_SKB program (parser or verdict) sees.

One object is reused for every run of a receive engine: a program must not
keep it past its return (a BPF program cannot either). ``data`` is read-only
here, a deliberate difference from the kernel's direct packet writes: received
bytes are shared with the receive buffer.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ._sock import SkFields

if TYPE_CHECKING:
    from ._sock import Sock

__all__ = ["SkBuff"]

_EMPTY = memoryview(b"")


class SkBuff(SkFields):
    """The ``__sk_buff`` subset SK_SKB programs use.

    ``len``: bytes of the message (for a parser, of everything accumulated so
    far); ``data``: those bytes, a memoryview; ``sk``: the socket it arrived
    on. The redirect helpers set ``sk_redir`` and ``flags``; those and
    ``len`` are read-only to a program (the engines read them after it).
    """

    __slots__ = (
        "_buf",
        "_data",
        "_flags",
        "_helper_error",
        "_len",
        "_off",
        "_redir",
        "mark",
        "priority",
        "sk",
        "tc_index",
    )

    def __init__(self, sk: Sock | None = None) -> None:
        self.sk = sk
        # ``data`` is made on first read from the batch buffer ``_buf`` (the
        # message is ``_buf[_off:_off + len]``): a program that never looks at
        # the bytes costs no memoryview per message.
        self._buf = _EMPTY
        self._off = 0
        self._data: memoryview | None = _EMPTY
        self._len = 0
        self._redir: Sock | None = None
        self._flags = 0
        # a helper's note of the program's mistake, for the runner to count
        self._helper_error: str | None = None
        self.mark = 0
        self.priority = 0
        self.tc_index = 0

    @property
    def len(self) -> int:
        """Bytes of the message (for a parser, of everything accumulated so far)."""
        return self._len

    @property
    def sk_redir(self) -> Sock | None:
        """The redirect target the helpers recorded; set by the helpers only."""
        return self._redir

    @property
    def flags(self) -> int:
        """The redirect helper's flags (``BPF_F_INGRESS``); set by the helpers only."""
        return self._flags

    def end_run(self) -> None:
        """A program run ended. Nothing to do: ``data`` is read-only (the
        counterpart of :meth:`SkMsg.end_run`, so a runner treats both alike)."""

    @property
    def data(self) -> memoryview:
        """The message's bytes, a read-only memoryview."""
        data = self._data
        if data is None:
            off = self._off
            data = self._data = self._buf[off : off + self._len]
        return data

    @data.setter
    def data(self, data: memoryview) -> None:
        self._data = data

    def reset(self, data: memoryview) -> SkBuff:
        """Point this context at ``data`` and clear the redirect state; returns self."""
        self._data = data
        self._len = data.nbytes
        self._redir = None
        self._flags = 0
        return self

    def load_bytes(self, offset: int, length: int) -> bytes | int:
        """``bpf_skb_load_bytes``: a copy of ``length`` bytes at ``offset``, or
        ``-EFAULT`` when the range is not inside the message."""
        if (
            type(offset) is not int
            or type(length) is not int
            or offset < 0
            or length <= 0
            or offset + length > self._len
        ):
            return -errno.EFAULT
        return bytes(self.data[offset : offset + length])

    def __repr__(self) -> str:
        return f"<SkBuff len={self.len}>"
