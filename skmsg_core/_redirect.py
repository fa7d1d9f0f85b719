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

__all__ = ["msg_redirect_hash", "msg_redirect_map", "sk_redirect_hash", "sk_redirect_map"]


def _redirect(
    ctx: SkMsg | SkBuff, smap: object, cls: type[SockMapBase], key: Any, flags: int, *, helper: str
) -> SkAction:
    """What every redirect helper does: check the map's type (the verifier's
    job), find an allowed target, record it on the context."""
    if not isinstance(smap, cls):
        raise TypeError(f"{helper} takes a {cls.__name__}, not {type(smap).__name__}")
    if flags & ~BPF_F_INGRESS:
        return SK_DROP
    try:
        sk = smap._slots.get(key)
    except TypeError:  # an unhashable key holds nothing
        return SK_DROP
    if sk is None or sk.dead:
        return SK_DROP
    prot = sk.sk_prot
    if prot is None or not prot.redirect_allowed(sk):
        return SK_DROP
    ctx.flags = flags
    ctx.sk_redir = sk
    return SK_PASS


def msg_redirect_map(msg: SkMsg, smap: SockMap, key: int, flags: int = 0) -> SkAction:
    """``bpf_msg_redirect_map``: send this message to the socket at ``key`` instead,
    out of its connection, or into its receive queue with ``BPF_F_INGRESS``.

    Raises:
        TypeError: ``smap`` is not a :class:`SockMap` (the verifier's rejection;
            inside a program it becomes a DROP).
    """
    return _redirect(msg, smap, SockMap, key, flags, helper="msg_redirect_map")


def msg_redirect_hash(msg: SkMsg, smap: SockHash, key: Any, flags: int = 0) -> SkAction:
    """``bpf_msg_redirect_hash``: as :func:`msg_redirect_map`, on a :class:`SockHash`."""
    return _redirect(msg, smap, SockHash, key, flags, helper="msg_redirect_hash")


def sk_redirect_map(skb: SkBuff, smap: SockMap, key: int, flags: int = 0) -> SkAction:
    """``bpf_sk_redirect_map``: send this received message to the socket at ``key``:
    out of its connection (a proxy), or into its receive queue with ``BPF_F_INGRESS``."""
    return _redirect(skb, smap, SockMap, key, flags, helper="sk_redirect_map")


def sk_redirect_hash(skb: SkBuff, smap: SockHash, key: Any, flags: int = 0) -> SkAction:
    """``bpf_sk_redirect_hash``: as :func:`sk_redirect_map`, on a :class:`SockHash`."""
    return _redirect(skb, smap, SockHash, key, flags, helper="sk_redirect_hash")
