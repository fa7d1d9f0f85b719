"""The two AF_UNIX protocol tables sockmap sees (``net/unix/unix_bpf.c``).

The kernel gives Unix sockets two ``struct proto``: ``unix_stream_proto``
("UNIX-STREAM", ``unix_stream_bpf_update_proto``) and ``unix_dgram_proto``
("UNIX-DGRAM", ``unix_dgram_bpf_update_proto``). ``SOCK_SEQPACKET`` has no
``psock_update_sk_prot`` and never enters a map; this plugin does not serve it
either, so a map refuses it with ``EOPNOTSUPP`` as the kernel does.
"""

from __future__ import annotations

import skmsg_core as sk

__all__ = ["UNIX_DGRAM_PROTO", "UNIX_STREAM_PROTO", "UnixDgramProto", "UnixStreamProto"]


class _UnixProto(sk.SkProtoBase):
    """What both tables share: the seam swaps the owner's operations."""

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        """Install or restore the socket's operations (``unix_*_bpf_update_proto``).

        Raises:
            OSError(EOPNOTSUPP): receive programs but no running runtime.
        """
        super().psock_update_sk_prot(s, psock, restore)
        update = getattr(s.owner, "_update_ops", None)
        if update is None:
            return 0  # a bare socket (a listener): nothing to swap
        result: int = update(psock, restore)
        return result

    def sk_refresh_state(self, s: sk.Sock) -> None:
        """Read the socket's live state; a socket adopted from a file descriptor
        whose fd the user closed is closed here, so it leaves every map."""
        refresh = getattr(s.owner, "_refresh_state", None)
        if refresh is not None:
            refresh()


class UnixStreamProto(_UnixProto):
    """``unix_stream_proto``'s sockmap part.

    - ``sk_state_allowed``: a connected stream (ESTABLISHED) only: a socket
      that is unconnected, bound or listening is refused ``EOPNOTSUPP``
      (``sock_map_sk_state_allowed``, ``sk_is_stream_unix``). A connected
      socket stays ESTABLISHED after its peer closed, as in the kernel.
    - ``redirect_allowed``: ESTABLISHED, the kernel's rule for non-TCP sockets.
    - the seam swaps the stream's operations, as ``unix_stream_bpf_update_proto``
      swaps ``sk_prot``.
    """

    name = "unix-stream"


class UnixDgramProto(_UnixProto):
    """``unix_dgram_proto``'s sockmap part.

    - ``sk_state_allowed``: any datagram socket, bound or not, connected or not
      (unlike UDP, whose unbound socket Linux refuses; checked live by the
      conformance suite).
    - ``redirect_allowed``: only a connected socket (ESTABLISHED, which
      ``unix_dgram_connect`` and ``socketpair`` set) may be a redirect target.
    """

    name = "unix-dgram"


UNIX_STREAM_PROTO = UnixStreamProto()
UNIX_DGRAM_PROTO = UnixDgramProto()
