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
    on. The redirect helpers set ``sk_redir`` and ``flags``.
    """

    __slots__ = (
        "_buf",
        "_data",
        "_off",
        "flags",
        "len",
        "mark",
        "priority",
        "sk",
        "sk_redir",
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
        self.len = 0
        self.sk_redir: Sock | None = None
        self.flags = 0
        self.mark = 0
        self.priority = 0
        self.tc_index = 0

    @property
    def data(self) -> memoryview:
        """The message's bytes, a read-only memoryview."""
        data = self._data
        if data is None:
            off = self._off
            data = self._data = self._buf[off : off + self.len]
        return data

    @data.setter
    def data(self, data: memoryview) -> None:
        self._data = data

    def reset(self, data: memoryview) -> SkBuff:
        """Point this context at ``data`` and clear the redirect state; returns self."""
        self.data = data
        self.len = data.nbytes
        self.sk_redir = None
        self.flags = 0
        return self

    def load_bytes(self, offset: int, length: int) -> bytes | int:
        """``bpf_skb_load_bytes``: a copy of ``length`` bytes at ``offset``, or
        ``-EFAULT`` when the range is not inside the message."""
        if offset < 0 or length <= 0 or offset + length > self.len:
            return -errno.EFAULT
        return bytes(self.data[offset : offset + length])

    def __repr__(self) -> str:
        return f"<SkBuff len={self.len}>"
