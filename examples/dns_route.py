"""An example policy file for ``skmsg proxy --udp``: route DNS queries by name.

Run::

    skmsg proxy --udp --listen 127.0.0.1:5353 --policy examples/dns_route.py \\
        --backend 127.0.0.1:5301 --backend 127.0.0.1:5302

Each datagram is one DNS query (RFC 1035 wire format). ``verdict`` reads the
question's name (QNAME) from the datagram: names in ``corp.example`` go to
backend 0 (the internal resolver), every other name to the last backend; a
datagram that is not a well-formed query (a response, a truncated header, a
bad label) is dropped. ``verdict`` is an SK_SKB verdict as a BPF programmer
writes it: read the packet, choose a socket with a redirect helper, return
its verdict.
"""

from __future__ import annotations

import skmsg_core as sk

#: Names at or under this one go to backend 0.
INTERNAL = ("corp", "example")
HEADER = 12


def qname(data: memoryview) -> tuple[str, ...] | None:
    """The labels of the first question's name, lower-cased; None unless ``data``
    is a query (QR bit clear, QDCOUNT >= 1) whose name is well formed."""
    if len(data) < HEADER + 5 or data[2] & 0x80 or not (data[4] or data[5]):
        return None
    labels: list[str] = []
    i = HEADER
    while True:
        if i >= len(data):
            return None
        n = data[i]
        if n == 0:
            break
        if n > 63 or i + 1 + n > len(data):  # no compression pointers in a question
            return None
        try:
            labels.append(bytes(data[i + 1 : i + 1 + n]).decode("ascii").lower())
        except UnicodeDecodeError:
            return None
        i += 1 + n
    if i + 5 > len(data):  # QTYPE and QCLASS follow the name
        return None
    return tuple(labels)


def verdict(skb: sk.SkBuff, backends: sk.SockMap) -> int:
    """Internal names to backend 0, the rest to the last backend; junk dropped."""
    name = qname(skb.data)
    if name is None:
        return sk.SK_DROP
    key = 0 if name[-len(INTERNAL) :] == INTERNAL else backends.max_entries - 1
    return sk.sk_redirect_map(skb, backends, key, 0)
