"""Redirect helpers (``bpf_msg_redirect_map`` and friends, ``net/core/sock_map.c``).

They only record a target: nothing moves until the program returns
``SK_PASS``. They return ``SK_PASS`` on success and ``SK_DROP`` when the
flags are bad, the key is empty, or the socket there may not be a target (a
TCP listener; a non-TCP socket that is not connected). A key the map could
never hold (a type or size its updates refuse with ``EINVAL``) and bad flags
are the program's mistakes, not an empty slot: the run is also counted as an
error with that reason (:class:`skmsg_core.HelperError`, logged by the
runtime), whatever the program returns.

The four helpers share one body, built once per helper by
:func:`_redirect_helper`: a redirect runs once per message, so the helper a
program calls is that body itself, not a wrapper around it.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from ._consts import BPF_F_INGRESS, SK_DROP, SK_PASS, SkAction
from ._maps import SockHash, SockMap, SockMapBase
from ._ring import SkMsg
from ._skb import SkBuff

__all__ = ["msg_redirect_hash", "msg_redirect_map", "sk_redirect_hash", "sk_redirect_map"]

_Ctx_contra = TypeVar("_Ctx_contra", SkMsg, SkBuff, contravariant=True)
_Map_contra = TypeVar("_Map_contra", SockMap, SockHash, contravariant=True)
_Key_contra = TypeVar("_Key_contra", contravariant=True)


class RedirectHelper(Protocol, Generic[_Ctx_contra, _Map_contra, _Key_contra]):
    """The shape of a redirect helper: ``(ctx, map, key, flags=0) -> SK_PASS | SK_DROP``."""

    def __call__(
        self, ctx: _Ctx_contra, smap: _Map_contra, key: _Key_contra, flags: int = 0
    ) -> SkAction: ...


def _redirect_helper(cls: type[SockMapBase], name: str, doc: str) -> Any:
    """One redirect helper for maps of type ``cls``: check the map's type (the
    verifier's job), find an allowed target, record it on the context."""
    bad_flags = ~BPF_F_INGRESS

    def redirect(ctx: Any, smap: Any, key: Any, flags: int = 0) -> SkAction:
        if type(smap) is not cls and not isinstance(smap, cls):
            raise TypeError(f"{name} takes a {cls.__name__}, not {type(smap).__name__}")
        try:
            sk = smap._slots[key]
        except (KeyError, TypeError):  # an empty or unhashable key holds nothing
            _check_key(ctx, smap, key, name)
            return SK_DROP
        ok = sk.redirect_ok  # sock_map_redirect_allowed, kept current by the socket
        # (None: a live socket whose protocol has a rule of its own, asked here)
        if ok is not True and (ok is False or not sk.sk_prot.redirect_allowed(sk)):  # type: ignore[union-attr]
            return SK_DROP
        if flags and (type(flags) is not int or flags & bad_flags):
            ctx._helper_error = (
                f"{name}: flags {flags!r} other than BPF_F_INGRESS: EINVAL; the redirect "
                "was refused"
            )
            return SK_DROP
        ctx._flags = flags  # both contexts' slots: the helpers' own write
        ctx._redir = sk
        return SK_PASS

    redirect.__name__ = redirect.__qualname__ = name
    redirect.__doc__ = doc
    redirect.__module__ = __name__
    return redirect


def _check_key(ctx: Any, smap: SockMapBase, key: Any, name: str) -> None:
    """A lookup found nothing: if ``key`` cannot even be a key of ``smap`` (the
    type or size its updates refuse with ``EINVAL``), note why on ``ctx``: the
    runner counts it as the program's error, with that reason."""
    try:
        smap._check_key(key, False)
    except OSError as exc:
        ctx._helper_error = f"{name}: {exc.strerror}; the redirect found no socket"


_RAISES = """

    Raises:
        TypeError: ``smap`` is not a :class:`{cls}` (the verifier's rejection;
            inside a program it becomes a DROP).
    """

msg_redirect_map: RedirectHelper[SkMsg, SockMap, int] = _redirect_helper(
    SockMap,
    "msg_redirect_map",
    """``bpf_msg_redirect_map(msg, map, key, flags=0)``: send this message to the
    socket at ``key`` instead, out of its connection, or into its receive queue
    with ``BPF_F_INGRESS``. Returns ``SK_PASS``, or ``SK_DROP`` when there is no
    allowed target or ``flags`` has other bits."""
    + _RAISES.format(cls="SockMap"),
)

msg_redirect_hash: RedirectHelper[SkMsg, SockHash, Any] = _redirect_helper(
    SockHash,
    "msg_redirect_hash",
    """``bpf_msg_redirect_hash(msg, hash, key, flags=0)``: as :func:`msg_redirect_map`,
    on a :class:`SockHash`."""
    + _RAISES.format(cls="SockHash"),
)

sk_redirect_map: RedirectHelper[SkBuff, SockMap, int] = _redirect_helper(
    SockMap,
    "sk_redirect_map",
    """``bpf_sk_redirect_map(skb, map, key, flags=0)``: send this received message
    to the socket at ``key``: out of its connection (a proxy), or into its
    receive queue with ``BPF_F_INGRESS``. Returns ``SK_PASS`` or ``SK_DROP`` as
    :func:`msg_redirect_map`."""
    + _RAISES.format(cls="SockMap"),
)

sk_redirect_hash: RedirectHelper[SkBuff, SockHash, Any] = _redirect_helper(
    SockHash,
    "sk_redirect_hash",
    """``bpf_sk_redirect_hash(skb, hash, key, flags=0)``: as :func:`sk_redirect_map`,
    on a :class:`SockHash`."""
    + _RAISES.format(cls="SockHash"),
)
