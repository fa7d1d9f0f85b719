"""The plugin manager: loading protocol plugins and a typed facade over its hooks.

Built-in protocols (``skmsg_tcp``, ``skmsg_tls``, ``skmsg_udp``) load through
the ``skmsg`` entry-point group exactly as a third-party one does. The
manager is built on first use; :func:`get_plugin_manager` returns it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from . import _sock, hookspecs
from ._consts import S32_MAX
from ._errors import kernel_error
from ._sock import SkProto, Sock, _by_fd, refresh

if TYPE_CHECKING:
    from ._maps import SockMapBase
    from ._psock import SkPsock

__all__ = ["Plugins", "get_plugin_manager", "loaded_plugins", "plugins", "sock_from"]


class Plugins:
    """A typed facade over ``pm.hook``: call sites stay typed, hooks keyword-only.

    Raises (from :meth:`protocol` and :meth:`ulp`):
        OSError(ENOPROTOOPT): no plugin serves that name.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._protocols: dict[str, SkProto] | None = None
        self._ulps: dict[str, Any] | None = None
        self._ulp_names: frozenset[str] | None = None

    def _collect(self) -> None:
        protos: dict[str, SkProto] = {}
        for group in self.pm.hook.skmsg_protocols():
            for proto in group:
                if not isinstance(proto, SkProto):
                    raise TypeError(f"plugin protocol {proto!r} does not implement SkProto")
                if proto.name in protos:
                    raise ValueError(f"two plugins register protocol {proto.name!r}")
                protos[proto.name] = proto
        ulps: dict[str, Any] = {}
        for group in self.pm.hook.skmsg_ulps():
            for ulp in group:
                name = getattr(ulp, "name", None)
                if not isinstance(name, str):
                    raise TypeError(f"plugin ULP {ulp!r} has no str name")
                if name in ulps:
                    raise ValueError(f"two plugins register ULP {name!r}")
                if name.startswith("_") or hasattr(Sock, name):
                    raise ValueError(
                        f"plugin ULP name {name!r} cannot be used: programs read a ULP's "
                        "record as sk.<name>, and that is a Sock attribute or a private name"
                    )
                ulps[name] = ulp
        self._protocols, self._ulps = protos, ulps
        self._ulp_names = frozenset(ulps)

    def protocols(self) -> dict[str, SkProto]:
        """Every registered protocol, by name."""
        if self._protocols is None:
            self._collect()
        assert self._protocols is not None
        return dict(self._protocols)

    def protocol(self, name: str) -> SkProto:
        """The protocol registered as ``name``."""
        try:
            return self.protocols()[name]
        except KeyError:
            raise kernel_error(
                errno.ENOPROTOOPT, f"no skmsg plugin serves protocol {name!r}"
            ) from None

    def ulps(self) -> dict[str, Any]:
        """Every registered ULP, by name."""
        if self._ulps is None:
            self._collect()
        assert self._ulps is not None
        return dict(self._ulps)

    def ulp_names(self) -> frozenset[str]:
        """The names of every registered ULP (what ``sk.<name>`` reads)."""
        if self._ulp_names is None:
            self._collect()
        assert self._ulp_names is not None
        return self._ulp_names

    def ulp(self, name: str) -> Any:
        """The ULP registered as ``name`` (``tcp_ulp_find``)."""
        try:
            return self.ulps()[name]
        except KeyError:
            raise kernel_error(errno.ENOENT, f"no skmsg plugin offers ULP {name!r}") from None

    def sock_from_fd(self, fd: int) -> Sock | None:
        """The :class:`Sock` a plugin makes for the unregistered socket ``fd``, or
        ``None`` when no plugin serves it (``skmsg_sock_from_fd``)."""
        sk: Sock | None = self.pm.hook.skmsg_sock_from_fd(fd=fd)
        return sk

    # -- observers: called at set-up, keyword-only, never per message ---------------
    # A proxy makes sockets and map entries per client: with nobody observing
    # (the usual case), a call is one empty-list test, not a pluggy dispatch.

    def sock_created(self, sk: Sock) -> None:
        """Tell observers a protocol built ``sk``."""
        hook = self.pm.hook.skmsg_sock_created
        if hook.get_hookimpls():
            hook(sk=sk)

    def map_update(self, smap: SockMapBase, key: Any, sk: Sock) -> None:
        """Tell observers ``sk`` entered ``smap`` at ``key``."""
        hook = self.pm.hook.skmsg_map_update
        if hook.get_hookimpls():
            hook(smap=smap, key=key, sk=sk)

    def map_delete(self, smap: SockMapBase, key: Any, sk: Sock) -> None:
        """Tell observers ``sk`` left ``smap`` at ``key``."""
        hook = self.pm.hook.skmsg_map_delete
        if hook.get_hookimpls():
            hook(smap=smap, key=key, sk=sk)

    def psock_drop(self, psock: SkPsock) -> None:
        """Tell observers ``psock`` was dropped."""
        hook = self.pm.hook.skmsg_psock_drop
        if hook.get_hookimpls():
            hook(psock=psock)

    def plugin_names(self) -> Sequence[str]:
        """Names of the loaded plugins."""
        return [name for name, _ in self.pm.list_name_plugin() if name is not None]

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object by hand (tests, embedding), then re-collect."""
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
        self._protocols = self._ulps = self._ulp_names = None

    def unregister(self, plugin: object) -> None:
        """Remove a plugin registered with :meth:`register`."""
        self.pm.unregister(plugin)
        self._protocols = self._ulps = self._ulp_names = None


_plugins: Plugins | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager, with every ``skmsg`` entry point loaded."""
    return plugins().pm


def loaded_plugins() -> Plugins | None:
    """The facade if the plugin manager is loaded, else ``None``.

    The core notifies observers through this: observer hooks run once the
    manager is loaded (creating any plugin-served socket loads it), and a
    program of pure core calls never pays for loading every plugin.
    """
    return _plugins


def plugins() -> Plugins:
    """The typed facade over the process's plugin manager (built on first use).

    Raises:
        pluggy.PluginValidationError: a plugin implements a hook that does not
            exist or with wrong arguments.
    """
    global _plugins
    if _plugins is None:
        pm = pluggy.PluginManager("skmsg")
        pm.add_hookspecs(hookspecs)
        pm.load_setuptools_entrypoints("skmsg")
        pm.check_pending()
        _plugins = Plugins(pm)
    return _plugins


def _registered_ulp_names() -> frozenset[str]:
    return plugins().ulp_names()


_sock._ulp_names = _registered_ulp_names


def sock_from(value: object) -> Sock:
    """Resolve what a map update was handed to a :class:`Sock`.

    Accepts a :class:`Sock`, an object with an ``sk`` attribute holding one, or
    an ``int`` file descriptor (the kernel's value). An fd no plugin registered
    is offered to the plugins (``skmsg_sock_from_fd``): a protocol that can
    serve a socket nobody wrapped (UDP, as in the kernel) adopts it.
    A registered socket whose fd was closed or reused is looked at afresh.

    Raises:
        OSError(EINVAL): an int fd below 0 or above ``S32_MAX``.
        OSError(EBADF): an fd that is not open, or a socket already closed.
        OSError(EOPNOTSUPP): an open socket fd no protocol plugin serves.
        OSError(ENOTSOCK): anything else.
    """
    if isinstance(value, Sock):
        sk = value
    elif isinstance(getattr(value, "sk", None), Sock):
        sk = value.sk  # type: ignore[attr-defined]
    elif isinstance(value, int) and not isinstance(value, bool):
        if value < 0 or value > S32_MAX:
            raise kernel_error(errno.EINVAL, f"socket fd {value} out of range 0..S32_MAX")
        found = _by_fd.get(value)
        if found is not None:
            refresh(found)  # a plugin may find its fd closed or reused (then it is dead)
            if found.dead:
                found = None
        if found is None:
            try:
                mode = os.fstat(value).st_mode
            except OSError as exc:
                raise kernel_error(errno.EBADF, f"fd {value} is not open") from exc
            if not stat.S_ISSOCK(mode):
                raise kernel_error(errno.ENOTSOCK, f"fd {value} is not a socket")
            found = plugins().sock_from_fd(value)  # loads the plugins only now
            if found is None:
                raise kernel_error(
                    errno.EOPNOTSUPP, f"fd {value} is a socket no skmsg protocol serves"
                )
        sk = found
    else:
        raise kernel_error(errno.ENOTSOCK, f"{type(value).__name__} object is not a socket")
    if sk.dead:
        raise kernel_error(errno.EBADF, f"{sk.describe()} is closed")
    return sk
