"""skmsg's built-in UDP plugin: datagram sockets that sit in socket maps.

Registered through the ``skmsg`` entry-point group exactly as a third-party
plugin is, so it is also a template for writing one: a protocol table
(:class:`UdpProto`) served through ``skmsg_protocols``; trio datagram sockets
(:class:`UdpSocket`) whose operations the table swaps when they enter and
leave maps, with a verdict per datagram; and ``skmsg_sock_from_fd``, which
lets a map take a UDP socket by its file descriptor alone, as the kernel does
(bound, connected or not; an unbound one is refused as Linux 6.18 refuses it).
"""

from __future__ import annotations

from collections.abc import Sequence

from skmsg_core import SkProto, Sock, hookimpl

from ._open import adopt_fd as adopt_fd
from ._open import open_udp_socket as open_udp_socket
from ._open import udp_socket_pair as udp_socket_pair
from ._proto import UDP_PROTO as UDP_PROTO
from ._proto import UdpProto as UdpProto
from ._socket import MAX_DATAGRAM as MAX_DATAGRAM
from ._socket import SendError as SendError
from ._socket import UdpSocket as UdpSocket
from ._socket import UdpStats as UdpStats


@hookimpl
def skmsg_protocols() -> Sequence[SkProto]:
    """UDP's protocol table."""
    return (UDP_PROTO,)


@hookimpl
def skmsg_sock_from_fd(fd: int) -> Sock | None:
    """Adopt an unregistered UDP socket fd for a map update (the map then
    applies ``UdpProto.sk_state_allowed``: it must be bound)."""
    return adopt_fd(fd)
