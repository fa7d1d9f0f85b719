"""An example policy file for ``skmsg proxy --tls``: route by server name (SNI), then ALPN.

Run (a certificate valid for both names, the policy, two backends)::

    skmsg proxy --tls --cert both-names.pem --key key.pem --alpn h2,http/1.1 \\
        --policy examples/tls_sni_route.py \\
        --backend 127.0.0.1:9001 --backend 127.0.0.1:9002

The proxy terminates each client's TLS; once the handshake is done the
client's socket carries what it agreed on, ``skb.sk.tls`` (a
:class:`skmsg_tls.TlsInfo`), and every message the client sends is
verdicted with it:

- a client that asked for ``alpha.example`` goes to backend 0, one that
  asked for ``beta.example`` to the last backend;
- a client that sent no known name (an IP address is never sent as SNI) is
  routed by the ALPN protocol it agreed on: ``h2`` to backend 0,
  ``http/1.1`` to the last;
- anything else is dropped: policy fails closed. So is a client without
  TLS, which a ``--tls`` proxy never lets through anyway (``sk.tls`` is
  ``None`` before and without a handshake).

``server_name`` is lower-cased, so ``Alpha.Example`` routes as
``alpha.example``. A policy could as well route on the client certificate
(``tls.peer_common_name`` when ``tls.peer_verified``) or refuse old
versions (``tls.version == "TLSv1.2"``).
"""

from __future__ import annotations

import skmsg_core as sk

#: Server name (SNI) -> backend: 0 is the first ``--backend``, -1 the last.
BY_SERVER_NAME = {"alpha.example": 0, "beta.example": -1}
#: ALPN protocol -> backend, for clients that sent no known server name.
BY_ALPN = {"h2": 0, "http/1.1": -1}


def verdict(skb: sk.SkBuff, backends: sk.SockMap) -> int:
    """Pick the backend from the client's TLS facts; drop what matches no rule."""
    tls = skb.sk.tls if skb.sk is not None else None
    if tls is None:
        return sk.SK_DROP
    index = BY_SERVER_NAME.get(tls.server_name)
    if index is None:
        index = BY_ALPN.get(tls.alpn_protocol)
    if index is None:
        return sk.SK_DROP
    return sk.sk_redirect_map(skb, backends, index % backends.max_entries, 0)
