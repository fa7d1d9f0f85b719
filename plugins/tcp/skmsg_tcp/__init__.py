"""skmsg's built-in TCP plugin: streams and listeners that sit in socket maps.

Registered through the ``skmsg`` entry-point group exactly as a third-party
plugin is, so it is also the template for writing one: a protocol table
(:class:`TcpProto`) served through ``skmsg_protocols``, trio streams whose
operations the table swaps when they enter and leave maps, and
``skmsg_sock_from_fd``, which adopts a TCP socket a map is handed as a bare
file descriptor (:func:`adopt_fd`).
"""

from __future__ import annotations

from collections.abc import Sequence

from skmsg_core import SkProto, Sock, hookimpl

from ._adopt import adopt_fd as adopt_fd
from ._listener import SkListener as SkListener
from ._listener import open_tcp_listeners as open_tcp_listeners
from ._listener import open_tcp_stream as open_tcp_stream
from ._listener import serve_tcp as serve_tcp
from ._proto import TCP_PROTO as TCP_PROTO
from ._proto import TcpProto as TcpProto
from ._reuseport import SkReuseportGroup as SkReuseportGroup
from ._reuseport import open_reuseport_group as open_reuseport_group
from ._stream import SendError as SendError
from ._stream import SkStream as SkStream
from ._stream import StreamStats as StreamStats
from ._stream import StreamUlp as StreamUlp


@hookimpl
def skmsg_protocols() -> Sequence[SkProto]:
    """TCP's protocol table."""
    return (TCP_PROTO,)


@hookimpl
def skmsg_sock_from_fd(fd: int) -> Sock | None:
    """Adopt a TCP socket a map is handed as a bare fd (see :mod:`._adopt`):
    established or listening, it enters the map as the kernel's would."""
    return adopt_fd(fd)
