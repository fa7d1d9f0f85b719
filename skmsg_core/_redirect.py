"""Redirect helpers (``bpf_msg_redirect_map`` and friends, ``net/core/sock_map.c``).

They only record a target: nothing moves until the program returns
``SK_PASS``. They return ``SK_PASS`` on success and ``SK_DROP`` when the
flags are bad, the key is empty, or the socket there may not be a target (a
TCP listener; a non-TCP socket that is not connected).
"""

from __future__ import annotations

from typing import Any

from ._consts import BPF_F_INGRESS, SK_DROP, SK_PASS, SkAction
from ._maps import SockHash, SockMap, SockMapBase
from ._ring import SkMsg
from ._skb import SkBuff
from ._sock import Sock

__all__ = ["msg_redirect_hash", "msg_redirect_map", "sk_redirect_hash", "sk_redirect_map"]


def _target(smap: SockMapBase, key: Any, flags: int) -> Sock | None:
    if flags & ~BPF_F_INGRESS:
        return None
    try:
        sk = smap._slots.get(key)
    except TypeError:  # an unhashable key holds nothing
        return None
    if sk is None or sk.dead:
        return None
    prot = sk.sk_prot
    if prot is None or not prot.redirect_allowed(sk):
        return None
    return sk


def _expect(smap: object, cls: type[SockMapBase], helper: str) -> None:
    if not isinstance(smap, cls):
        raise TypeError(f"{helper} takes a {cls.__name__}, not {type(smap).__name__}")


def msg_redirect_map(msg: SkMsg, smap: SockMap, key: int, flags: int = 0) -> SkAction:
    """``bpf_msg_redirect_map``: send this message to the socket at ``key`` instead,
    out of its connection, or into its receive queue with ``BPF_F_INGRESS``.

    Raises:
        TypeError: ``smap`` is not a :class:`SockMap` (the verifier's rejection;
            inside a program it becomes a DROP).
    """
    _expect(smap, SockMap, "msg_redirect_map")
    sk = _target(smap, key, flags)
    if sk is None:
        return SK_DROP
    msg.flags = flags
    msg.sk_redir = sk
    return SK_PASS


def msg_redirect_hash(msg: SkMsg, smap: SockHash, key: Any, flags: int = 0) -> SkAction:
    """``bpf_msg_redirect_hash``: as :func:`msg_redirect_map`, on a :class:`SockHash`."""
    _expect(smap, SockHash, "msg_redirect_hash")
    sk = _target(smap, key, flags)
    if sk is None:
        return SK_DROP
    msg.flags = flags
    msg.sk_redir = sk
    return SK_PASS


def sk_redirect_map(skb: SkBuff, smap: SockMap, key: int, flags: int = 0) -> SkAction:
    """``bpf_sk_redirect_map``: send this received message to the socket at ``key``:
    out of its connection (a proxy), or into its receive queue with ``BPF_F_INGRESS``."""
    _expect(smap, SockMap, "sk_redirect_map")
    sk = _target(smap, key, flags)
    if sk is None:
        return SK_DROP
    skb.flags = flags
    skb.sk_redir = sk
    return SK_PASS


def sk_redirect_hash(skb: SkBuff, smap: SockHash, key: Any, flags: int = 0) -> SkAction:
    """``bpf_sk_redirect_hash``: as :func:`sk_redirect_map`, on a :class:`SockHash`."""
    _expect(smap, SockHash, "sk_redirect_hash")
    sk = _target(smap, key, flags)
    if sk is None:
        return SK_DROP
    skb.flags = flags
    skb.sk_redir = sk
    return SK_PASS
