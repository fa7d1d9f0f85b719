"""skmsg's Unix-domain plugin: AF_UNIX stream and datagram sockets in socket maps.

A protocol plugin written as a third party writes one: its own distribution
(``skmsg-unix``), registered through the ``skmsg`` entry-point group, built on
skmsg-core's public hooks only, and held to ``check_protocol_plugin`` (the
stream contract for :class:`UnixStream`, the datagram contract for
:class:`UnixDatagramSocket`). It serves the kernel's two tables
(``net/unix/unix_bpf.c``): ``unix-stream`` (:data:`UNIX_STREAM_PROTO`) and
``unix-dgram`` (:data:`UNIX_DGRAM_PROTO`); ``SOCK_SEQPACKET`` is refused, as
the kernel refuses it.

Unix sockets share maps with TCP and UDP: an SK_SKB verdict redirects between
them both ways, out of a socket (egress) or into its receive queue
(``BPF_F_INGRESS``). ``skmsg_sock_from_fd`` lets a map take a Unix socket by
its file descriptor alone, as the kernel does (a connected stream, any
datagram socket). Differences from the kernel are listed in
``docs/kernel-differences.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from skmsg_core import SkProto, Sock, hookimpl

from ._dgram import UnixDatagramSocket as UnixDatagramSocket
from ._open import UnixListener as UnixListener
from ._open import adopt_fd as adopt_fd
from ._open import open_unix_datagram_socket as open_unix_datagram_socket
from ._open import open_unix_listeners as open_unix_listeners
from ._open import open_unix_stream as open_unix_stream
from ._open import serve_unix as serve_unix
from ._open import unix_dgram_pair as unix_dgram_pair
from ._open import unix_stream_pair as unix_stream_pair
from ._proto import UNIX_DGRAM_PROTO as UNIX_DGRAM_PROTO
from ._proto import UNIX_STREAM_PROTO as UNIX_STREAM_PROTO
from ._proto import UnixDgramProto as UnixDgramProto
from ._proto import UnixStreamProto as UnixStreamProto
from ._stream import UnixStream as UnixStream
from ._util import SendError as SendError
from ._util import UnixAddress as UnixAddress
from ._util import UnixDatagramStats as UnixDatagramStats
from ._util import UnixStreamStats as UnixStreamStats
from ._util import abstract as abstract


@hookimpl
def skmsg_protocols() -> Sequence[SkProto]:
    """The two AF_UNIX protocol tables."""
    return (UNIX_STREAM_PROTO, UNIX_DGRAM_PROTO)


@hookimpl
def skmsg_sock_from_fd(fd: int) -> Sock | None:
    """Adopt an unregistered AF_UNIX socket fd for a map update (the map then
    applies the table's ``sk_state_allowed``: a stream must be connected)."""
    return adopt_fd(fd)
