"""The pluggy contract between skmsg and protocol plugins.

Every protocol, built-in or third-party, is a module registered under the
``skmsg`` entry-point group that implements some of these hooks with
``@skmsg_core.hookimpl``. Hooks are called with keyword arguments only, at
set-up (loading, socket creation, map changes), never per message: the hot
path calls the objects the hooks handed over directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ._maps import SockMapBase
    from ._psock import SkPsock
    from ._sock import SkProto, Sock

#: Marks the hook specifications below (the contract's side).
hookspec = pluggy.HookspecMarker("skmsg")
#: Marks a plugin's hook implementations: ``@skmsg_core.hookimpl``.
hookimpl = pluggy.HookimplMarker("skmsg")


@hookspec
def skmsg_protocols() -> Sequence[SkProto]:
    """The protocols this plugin serves (``struct proto`` tables), each with a
    unique ``name``. Called once when the plugin manager loads."""
    raise NotImplementedError


@hookspec
def skmsg_ulps() -> Sequence[Any]:
    """Upper-layer protocols this plugin offers (``tcp_register_ulp``), each an
    object with a unique ``name`` (``"tls"``). Called once at load."""
    raise NotImplementedError


@hookspec(firstresult=True)
def skmsg_sock_from_fd(fd: int) -> Sock | None:
    """A socket file descriptor no plugin registered was handed to a map: return
    a :class:`Sock` for it if this plugin serves that kind of socket (and keep
    the socket alive while it sits in maps), else ``None``. The first plugin to
    answer wins. Called at map updates only (the kernel's ``sockfd_lookup``)."""


@hookspec
def skmsg_sock_created(sk: Sock) -> None:
    """Observer: a protocol built ``sk`` (plugins call
    :meth:`skmsg_core.Plugins.sock_created` for each socket they make)."""


@hookspec
def skmsg_map_update(smap: SockMapBase, key: Any, sk: Sock) -> None:
    """Observer: ``sk`` entered ``smap`` at ``key``."""


@hookspec
def skmsg_map_delete(smap: SockMapBase, key: Any, sk: Sock) -> None:
    """Observer: ``sk`` left ``smap`` at ``key`` (deleted, replaced or closed)."""


@hookspec
def skmsg_psock_drop(psock: SkPsock) -> None:
    """Observer: ``psock`` lost its last link and was dropped."""
