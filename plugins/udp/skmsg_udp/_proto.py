"""``UdpProto``: the UDP protocol table sockmap sees (``udp_bpf_update_proto``)."""

from __future__ import annotations

import skmsg_core as sk

__all__ = ["UDP_PROTO", "UdpProto"]


class UdpProto(sk.SkProtoBase):
    """UDP's table (``net/ipv4/udp_bpf.c``).

    - ``sk_state_allowed``: a UDP socket may enter a map once it is bound
      (``sk_hashed``: bound explicitly, or implicitly by a connect or a send),
      connected or not; an unbound one is refused with ``EOPNOTSUPP``. That is
      ``sock_map_sk_state_allowed`` as Linux 6.18 runs it, checked live by the
      conformance suite.
    - ``redirect_allowed``: only a connected socket (ESTABLISHED) may be a
      redirect target: an unconnected one has nowhere to send
      (``sock_map_redirect_allowed``).
    - the seam swaps the socket's operations, as for TCP.
    """

    name = "udp"

    def sk_state_allowed(self, s: sk.Sock) -> bool:
        return s.local_addr is not None and s.local_addr[1] != 0

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        """Install or restore the socket's operations (``udp_bpf_update_proto``).

        Raises:
            OSError(EOPNOTSUPP): receive programs but no running runtime.
        """
        super().psock_update_sk_prot(s, psock, restore)
        update = getattr(s.owner, "_update_ops", None)
        if update is None:
            return 0
        result: int = update(psock, restore)
        return result

    def sk_refresh_state(self, s: sk.Sock) -> None:
        """Read the socket's live state: connected (ESTABLISHED) or not (CLOSE);
        a socket adopted from a file descriptor whose fd the user closed is
        closed here, so it leaves every map (``sock_map_close``)."""
        refresh = getattr(s.owner, "_refresh_state", None)
        if refresh is not None:
            refresh()


UDP_PROTO = UdpProto()
