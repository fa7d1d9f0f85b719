"""Reuseport groups and ``bpf_sk_select_reuseport`` with socket maps.

A :class:`ReuseportGroup` is the kernel's ``sock_reuseport``: listening
sockets bound to one address with ``SO_REUSEPORT``. With an SK_REUSEPORT
program attached, each new connection runs it on a :class:`ReuseportMd`; the
program picks a listener from a socket map with :func:`sk_select_reuseport`.
``SK_DROP`` refuses the connection (the client sees ``ECONNREFUSED``);
``SK_PASS`` without a successful selection falls back to the hash.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from ._consts import SK_PASS, BpfProgType, TcpState
from ._errors import kernel_error
from ._maps import SockMapBase
from ._progs import Program
from ._sock import Sock

__all__ = ["ReuseportGroup", "ReuseportMd", "sk_select_reuseport"]


class ReuseportMd:
    """``sk_reuseport_md``: what a reuseport program sees of a new connection.

    ``data``/``len``: the first bytes of the request where known (empty for a
    TCP SYN); ``hash``: the flow hash; ``ip_protocol``; ``bind_inany``;
    ``group``: the reuseport group. ``selected`` is set by the helper.
    """

    __slots__ = ("bind_inany", "data", "group", "hash", "ip_protocol", "len", "selected")

    def __init__(
        self,
        group: ReuseportGroup,
        hash: int,
        data: bytes = b"",
        ip_protocol: int = 6,
        bind_inany: bool = False,
    ) -> None:
        self.group = group
        self.hash = hash
        self.data = memoryview(data)
        self.len = len(data)
        self.ip_protocol = ip_protocol
        self.bind_inany = bind_inany
        self.selected: Sock | None = None


def sk_select_reuseport(reuse: ReuseportMd, smap: SockMapBase, key: Any, flags: int = 0) -> int:
    """``bpf_sk_select_reuseport``: choose the listener at ``key`` for this connection.

    Returns 0, ``-EINVAL`` for ``flags`` or a socket there that is not in a
    reuseport group (an established socket), ``-ENOENT`` for an empty key,
    ``-EXDEV`` for a listener of another group, ``-EPROTOTYPE`` or
    ``-EAFNOSUPPORT`` for a protocol or family mismatch.
    """
    if flags:
        return -errno.EINVAL
    sk = smap.get(key)
    if sk is None:
        return -errno.ENOENT
    group = sk.reuseport_group
    if group is None or (sk.state != TcpState.LISTEN and sk.is_tcp):
        return -errno.EINVAL
    if group is not reuse.group:
        mine = reuse.group
        if sk.protocol != mine.protocol:
            return -errno.EPROTOTYPE
        if sk.family != mine.family:
            return -errno.EAFNOSUPPORT
        return -errno.EXDEV
    reuse.selected = sk
    return 0


class ReuseportGroup:
    """``struct sock_reuseport``: listeners sharing an address, and the select program."""

    def __init__(self, family: int, protocol: int = 6) -> None:
        self.family = family
        self.protocol = protocol
        self.socks: list[Sock] = []
        self.prog: Program | None = None
        self.selected = 0
        self.refused = 0

    def add(self, sk: Sock) -> None:
        """Add a listener (``reuseport_add_sock``)."""
        sk.reuseport_group = self
        self.socks.append(sk)

    def remove(self, sk: Sock) -> None:
        """Remove a listener; unknown sockets are ignored."""
        if sk in self.socks:
            self.socks.remove(sk)
        if sk.reuseport_group is self:
            sk.reuseport_group = None

    def attach(self, prog: Program | Callable[[ReuseportMd], Any]) -> Program:
        """``SO_ATTACH_REUSEPORT_EBPF``: attach (or replace) the select program.

        Raises:
            OSError(EINVAL): not an SK_REUSEPORT program, or it fails the verifier.
        """
        if not isinstance(prog, Program):
            prog = Program.load(prog, BpfProgType.SK_REUSEPORT)
        if prog.prog_type != BpfProgType.SK_REUSEPORT:
            raise kernel_error(errno.EINVAL, f"program {prog.name} is not SK_REUSEPORT")
        self.prog = prog
        return prog

    def select(self, hash: int, data: bytes = b"") -> Sock | None:
        """Pick the listener for a new connection (``reuseport_select_sock``).

        Returns ``None`` when the program refuses it (``SK_DROP``, or a program
        that raised: fail closed), meaning the connection is refused.
        """
        live = [s for s in self.socks if not s.dead]
        if self.prog is None:
            return live[hash % len(live)] if live else None
        md = ReuseportMd(self, hash, data, self.protocol)
        try:
            ret = self.prog.run(md)
        except Exception as exc:
            self.prog.last_error = exc
            self.prog.dropped += 1
            self.refused += 1
            return None
        if ret != SK_PASS:
            self.prog.dropped += 1
            self.refused += 1
            return None
        self.prog.passed += 1
        self.selected += 1
        if md.selected is not None:
            return md.selected
        return live[hash % len(live)] if live else None
