"""An example policy file for ``skmsg proxy``: route by content, drop some.

Run::

    skmsg proxy --policy examples/route.py --demo
    skmsg proxy --policy examples/route.py --backend 127.0.0.1:9001 --backend 127.0.0.1:9002

Messages are framed by ``--parser length-prefixed`` (the default): a 4-byte
big-endian length, then the payload. A payload starting with ``a``-``m`` goes
to backend 0, any other to the last backend; one starting with ``!`` is
dropped. ``verdict`` is an SK_SKB stream verdict as a BPF programmer writes
it: choose a socket with a redirect helper, return its verdict.
"""

from __future__ import annotations

import skmsg_core as sk


def verdict(skb: sk.SkBuff, backends: sk.SockMap) -> int:
    """Pick the backend from the first payload byte (the byte after the length)."""
    first = bytes(skb.data[4:5])
    if first == b"!":
        return sk.SK_DROP
    key = 0 if b"a" <= first <= b"m" else backends.max_entries - 1
    return sk.sk_redirect_map(skb, backends, key, 0)
