"""``TcpProto``: the TCP protocol table sockmap sees (``tcp_bpf_update_proto``)."""

from __future__ import annotations

import socket
from typing import Any

import skmsg_core as sk

__all__ = ["TCP_PROTO", "TcpProto"]

TCP_INFO = getattr(socket, "TCP_INFO", 11)


class TcpProto(sk.SkProtoBase):
    """TCP's table: the kernel's generic state rules, and the seam that swaps a
    stream's operations when its psock's programs change."""

    name = "tcp"

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        """Install or restore the stream's operations (``tcp_bpf_update_proto``).

        Raises:
            OSError(EOPNOTSUPP): receive programs but no running runtime.
        """
        super().psock_update_sk_prot(s, psock, restore)
        update = getattr(s.owner, "_update_ops", None)
        if update is None:
            return 0  # a listener: nothing to swap
        result: int = update(psock, restore)
        return result


    def sk_refresh_state(self, s: sk.Sock) -> None:
        """Read the socket's live TCP state (``tcpi_state`` of ``TCP_INFO``), so
        the map rules see a listener that left LISTEN or a stream whose peer
        closed. A closed socket is CLOSE, and so is an adopted one whose
        user's fd no longer names it (its duplicate is let go)."""
        adopt = _adopt or _load_adopt()  # at every map update: imported once
        if not adopt.adopted_fd_alive(s):
            s.state = sk.TcpState.CLOSE
            adopt.let_go(s)
            return
        owner = s.owner
        # the stdlib socket under trio's when there is one (a stream's ``_raw``):
        # this runs at every map update
        sock = getattr(owner, "_raw", None) or getattr(owner, "socket", None)
        if sock is None:
            return
        if sock.fileno() == -1:
            s.state = sk.TcpState.CLOSE
            return
        try:
            s.state = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 8)[0]
        except OSError:
            return


TCP_PROTO = TcpProto()

_adopt: Any = None


def _load_adopt() -> Any:
    """The ``_adopt`` module (which imports this one), imported on first use."""
    global _adopt
    from . import _adopt as module  # noqa: PLC0415

    _adopt = module
    return module
