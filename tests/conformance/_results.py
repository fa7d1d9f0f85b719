"""What a run of a scenario produced, on either side, as JSON-able data.

``{"steps": [...], "received": {peer: <zlib+base64 bytes>}, "ends": {peer:
"EOF" or an errno name, for peers whose reading ended}, "msg_runs": n,
"msg_log": [...], "skb_runs": n, "skb_log": [...]}``; a step's result is
``"ok"`` or an errno name for map operations and attach, ``"cookie:<sock>"``
for a lookup that found a socket, ``[[result, count], ...]`` (a run-length list
of byte counts or errno names, one per ``sendmsg``) for a send, and
``{peer: bytes so far}`` for ``settle``.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

__all__ = ["decode_bytes", "encode_bytes", "run_length"]


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode()


def decode_bytes(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


def run_length(results: list[Any]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for r in results:
        if out and out[-1][0] == r:
            out[-1][1] += 1
        else:
            out.append([r, 1])
    return out


_SIOCINQ = 0x541B  # FIONREAD
_SIOCOUTQ = 0x5411  # TIOCOUTQ


def queued_bytes(fd: int) -> int:
    """Bytes a socket still holds: unread (``SIOCINQ``) plus unsent or unacked
    (``SIOCOUTQ``); 0 for a closed fd."""
    import array
    import fcntl

    total = 0
    for req in (_SIOCINQ, _SIOCOUTQ):
        buf = array.array("i", [0])
        try:
            fcntl.ioctl(fd, req, buf, True)
        except OSError:
            return 0
        total += buf[0]
    return total
