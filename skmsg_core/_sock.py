"""``struct sock``: what the core knows of a socket, and the protocol seam.

Theory of operation
-------------------
The core never does I/O, so it never holds an OS socket. A protocol plugin
(TCP, UDP, TLS's transport, or a user's own) builds one :class:`Sock` per
socket it serves and keeps its fields current (``state`` above all). The core
reaches the protocol through exactly one object, ``sk.sk_prot``, an
:class:`SkProto`: the kernel's ``struct proto`` reduced to what sockmap uses.

``SkProto.psock_update_sk_prot(sk, psock, restore)`` is the seam
(``tcp_bpf_update_proto``): the core calls it when a socket gains a psock or
its programs change (``restore=False``) and when its last map link goes
(``restore=True``). The plugin swaps the operations its stream runs on each
send and receive; the core never asks again on the hot path.

A ULP (the kernel's ``tcp_ulp_ops``; TLS is one) may publish what it
negotiated for programs to read: its plugin sets ``sk.ulp`` (the ULP's name)
and ``sk.ulp_info`` (a read-only record of its own), and a program reads the
record under the ULP's name, ``skb.sk.tls``, as the kernel's ULP ``get_info``
reports it under ``INET_DIAG_ULP_INFO``. The core never looks inside the
record; it only knows which names the plugins registered (``skmsg_ulps``):
such a name reads ``None`` on a socket that does not run that ULP (yet).

Anything a map is handed may be a :class:`Sock`, an object with an ``sk``
attribute that is one (a stream), or an ``int`` file descriptor of a socket a
plugin registered (:func:`skmsg_core._plugins.sock_from` resolves it, through
the plugins when the fd is not known yet).
"""

from __future__ import annotations

import itertools
import socket
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias, runtime_checkable

import attrs

from ._consts import TcpState

if TYPE_CHECKING:
    from ._psock import SkPsock

__all__ = [
    "SkFields",
    "SkProto",
    "SkProtoBase",
    "Sock",
    "SockAddr",
    "format_addr",
    "next_cookie",
    "refresh",
]

#: A socket address as Python's ``socket`` module gives it: ``(host, port, ...)``
#: for AF_INET/AF_INET6, a ``str`` path or ``bytes`` abstract name for AF_UNIX,
#: or ``None`` for none.
SockAddr: TypeAlias = tuple[Any, ...] | str | bytes | None

_ESTABLISHED, _LISTEN = int(TcpState.ESTABLISHED), int(TcpState.LISTEN)
# Cookies start past zero, as the kernel's (0 means "no cookie").
_cookie_gen = itertools.count(1)
# Sockets registered under their OS file descriptor, for map updates by fd.
_by_fd: weakref.WeakValueDictionary[int, Sock] = weakref.WeakValueDictionary()


def _no_ulps() -> frozenset[str]:
    return frozenset()


#: The names of the ULPs the plugins registered (``skmsg_ulps``); the plugin
#: manager's module sets it to its own (which loads the plugins on first use).
_ulp_names: Callable[[], frozenset[str]] = _no_ulps


def next_cookie() -> int:
    """A fresh 64-bit socket cookie, unique in this process (``gen_cookie``)."""
    return next(_cookie_gen)


@runtime_checkable
class SkProto(Protocol):
    """The protocol table a socket's plugin provides (``struct proto``, sockmap part).

    ``name`` names the protocol in errors and statistics. The methods are called
    at set-up (map updates and deletes, program changes), never per message.
    """

    name: str

    def sk_state_allowed(self, sk: Sock) -> bool:
        """Whether ``sk`` may enter a socket map now (``sock_map_sk_state_allowed``)."""
        ...

    def redirect_allowed(self, sk: Sock) -> bool:
        """Whether ``sk`` may be the target of a redirect (``sock_map_redirect_allowed``)."""
        ...

    def psock_update_sk_prot(self, sk: Sock, psock: SkPsock, restore: bool) -> int:
        """Install (``restore=False``) or remove (``restore=True``) the psock's
        operations on ``sk``; return 0 or a negative errno that fails the update
        (or raise an ``OSError`` with a message that says why). Called again
        when the psock's programs change; ``psock.rx_mode`` says whether
        receive processing runs."""
        ...


class SkProtoBase:
    """A convenient base for :class:`SkProto` with the kernel's generic rules.

    ``sk_state_allowed``: a stream socket (TCP) must be ESTABLISHED or LISTEN, a
    connection-oriented non-TCP stream ESTABLISHED, anything else is accepted.
    ``redirect_allowed``: TCP unless LISTEN; others only when ESTABLISHED.
    ``psock_update_sk_prot`` records the psock on ``sk.ops_psock`` and succeeds;
    plugins override it to swap their stream's operations.
    """

    name = "proto"
    #: Whether :meth:`redirect_allowed` is the kernel's rule, unchanged by a
    #: subclass: the redirect helpers (run per message) then apply it inline.
    kernel_redirect_rule: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kernel_redirect_rule = cls.redirect_allowed is SkProtoBase.redirect_allowed

    def sk_state_allowed(self, sk: Sock) -> bool:
        if sk.is_tcp:
            return sk.state in (_ESTABLISHED, _LISTEN)
        if sk.type == socket.SOCK_STREAM:
            return sk.state == _ESTABLISHED
        return True

    def redirect_allowed(self, sk: Sock) -> bool:
        # per message: plain ints, not Enum attribute lookups
        if sk.is_tcp:
            return sk.state != _LISTEN
        return sk.state == _ESTABLISHED

    def psock_update_sk_prot(self, sk: Sock, psock: SkPsock, restore: bool) -> int:
        sk.ops_psock = None if restore else psock
        return 0

    def sk_refresh_state(self, sk: Sock) -> None:
        """Bring ``sk.state`` up to date from the OS (optional; the maps call it
        before each operation on the socket). The base keeps the stored state."""


def refresh(sk: Sock) -> None:
    """Ask ``sk``'s protocol for its live state, if the protocol can tell, and
    take it out of every map if the kernel would have unhashed it by now."""
    prot = sk.sk_prot
    update = getattr(prot, "sk_refresh_state", None)
    if update is None:
        return
    update(sk)
    if sk.psock is not None and sk.is_tcp and sk.state == TcpState.CLOSE:
        sk.psock.unlink_all()


@attrs.define(eq=False, weakref_slot=True)
class Sock:
    """``struct sock``: identity, state and addresses of one socket, as the core sees it.

    Mutable and kept current by the owning plugin. ``owner`` is the plugin's own
    object for this socket (a stream), which the I/O layer reaches from a redirect
    target, until :meth:`close` (then ``None``). ``psock`` is ``sk_user_data`` for
    sockmap: set by the core only.

    ``sk_prot``, ``state`` and ``dead`` are properties: setting one recomputes
    :attr:`redirect_ok`, the redirect rule's answer, which the redirect helpers
    (run per message) read instead of applying the rule each time.
    """

    _sk_prot: SkProto | None
    family: int = socket.AF_INET
    type: int = socket.SOCK_STREAM
    protocol: int = socket.IPPROTO_TCP
    _state: int = TcpState.CLOSE
    #: The socket's own address as Python's ``socket`` module gives it: a tuple
    #: for AF_INET/AF_INET6, a ``str`` path or an abstract ``bytes`` name
    #: (``b"\\0name"``) for AF_UNIX, ``""`` for an unnamed AF_UNIX socket;
    #: ``None`` when unknown or unbound.
    local_addr: SockAddr = None
    #: The peer's address, in the same forms (``""``: an unnamed AF_UNIX peer,
    #: such as a socketpair's); ``None`` when not connected.
    remote_addr: SockAddr = None
    cookie: int = attrs.field(factory=next_cookie)
    fileno: int = -1
    owner: Any = None
    #: A ULP installed on the socket (``"tls"``), which forbids creating a psock.
    ulp: str | None = None
    #: What that ULP negotiated, for programs: a read-only record the ULP's
    #: plugin sets along with ``ulp`` (TLS: ``skmsg_tls.TlsInfo``, once the
    #: handshake is done), read as ``sk.<ulp name>`` (``sk.tls``). The core
    #: never reads it.
    ulp_info: object | None = None
    #: Someone else's use of ``sk_user_data``: a psock cannot be created (EBUSY).
    user_data: object | None = None
    #: An ``SO_REUSEPORT`` group this socket listens in, if any.
    reuseport_group: object | None = None
    _dead: bool = False
    #: ``sk_drops``: messages (datagrams) dropped because this socket's receive
    #: queue was full when they arrived (UDP's contract: drop and count).
    drops: int = 0
    psock: SkPsock | None = None
    #: Set by :meth:`SkProtoBase.psock_update_sk_prot`: the psock whose ops are installed.
    ops_psock: SkPsock | None = None

    #: ``sk_is_tcp``: a stream socket speaking TCP (computed once: it never changes).
    is_tcp: bool = attrs.field(init=False)
    #: May this socket be a redirect target now? ``True`` or ``False`` by the
    #: kernel's rule (``sock_map_redirect_allowed``: not dead, a protocol, TCP
    #: unless LISTEN, others only ESTABLISHED), or ``None`` when the protocol
    #: has its own ``redirect_allowed``, which must then be asked each time.
    redirect_ok: bool | None = attrs.field(init=False, default=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.is_tcp = self.type == socket.SOCK_STREAM and self.protocol == socket.IPPROTO_TCP
        self._redirect_rule()

    def _redirect_rule(self) -> None:
        prot = self._sk_prot
        if self._dead or prot is None:
            self.redirect_ok = False
        elif not getattr(prot, "kernel_redirect_rule", False):
            self.redirect_ok = None
        elif self.is_tcp:
            self.redirect_ok = self._state != _LISTEN
        else:
            self.redirect_ok = self._state == _ESTABLISHED

    @property
    def sk_prot(self) -> SkProto | None:
        """The protocol table (``sk->sk_prot``); ``None`` for a bare socket."""
        return self._sk_prot

    @sk_prot.setter
    def sk_prot(self, prot: SkProto | None) -> None:
        self._sk_prot = prot
        self._redirect_rule()

    @property
    def state(self) -> int:
        """The TCP state (``sk->sk_state``, a :class:`TcpState` value), kept
        current by the plugin; UDP uses ESTABLISHED for a connected socket."""
        return self._state

    @state.setter
    def state(self, state: int) -> None:
        self._state = state
        self._redirect_rule()

    @property
    def dead(self) -> bool:
        """Closed for good (``SOCK_DEAD``): never a redirect target again."""
        return self._dead

    @dead.setter
    def dead(self, dead: bool) -> None:
        self._dead = dead
        self._redirect_rule()

    if not TYPE_CHECKING:  # typed code reads ``ulp_info``: typos stay type errors

        def __getattr__(self, name: str) -> object:
            """``sk.<ulp name>`` (``sk.tls``): the record the socket's ULP
            published (``ulp_info``) when ``name`` is the ULP it runs, ``None``
            when ``name`` is a ULP some plugin registered and this socket does
            not run it (yet); any other name is an ``AttributeError``. Only
            called for names that are not attributes of ``Sock``."""
            if name[:1] != "_" and name in _ulp_names():
                return self.ulp_info if self.ulp == name else None
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_fd(self, fd: int) -> None:
        """Make this socket reachable by its OS file descriptor ``fd`` in map updates."""
        self.fileno = fd
        _by_fd[fd] = self

    def close(self) -> None:
        """``sock_map_close``: leave every map (the psock goes with the last link),
        then mark the socket dead and CLOSE, and let go of its owner
        (``sock_orphan``: ``owner`` is ``None`` from then on). The owner names
        this socket and this socket named the owner: once closed, neither keeps
        the other alive, so both are freed by reference counting, not left to
        the cycle collector. Idempotent; the plugin closes the OS socket itself."""
        psock = self.psock
        if psock is not None:
            psock.unlink_all()
        self.dead = True
        self.state = TcpState.CLOSE
        self.owner = None
        if self.fileno >= 0 and _by_fd.get(self.fileno) is self:
            del _by_fd[self.fileno]

    def describe(self) -> str:
        """A short name for errors: protocol, cookie and addresses."""
        proto = self.sk_prot.name if self.sk_prot is not None else "?"
        addr = f" {format_addr(self.local_addr)}" if self.local_addr else ""
        peer = f"->{format_addr(self.remote_addr)}" if self.remote_addr else ""
        return f"{proto} socket (cookie {self.cookie}){addr}{peer}"


def format_addr(addr: SockAddr) -> str:
    """An address for messages: a tuple as it prints, a path as itself, an
    abstract AF_UNIX name as ``@name`` (``ss``'s notation), none as ``-``."""
    if not addr:
        return "-"
    if isinstance(addr, bytes):
        name = addr[1:] if addr[:1] == b"\0" else addr
        return "@" + name.decode("utf-8", "backslashreplace")
    if isinstance(addr, str):
        return "@" + addr[1:] if addr.startswith("\0") else addr
    return str(addr)


class SkFields:
    """The socket fields of ``sk_msg_md`` and ``__sk_buff``, read through ``self.sk``.

    ``family``; ``local_ip4``/``remote_ip4`` (``None`` unless AF_INET) and
    ``local_ip6``/``remote_ip6`` (``None`` unless AF_INET6) as address strings;
    ``local_port``/``remote_port`` in host byte order (the kernel gives
    ``remote_port`` in network order; a deliberate difference). A socket of
    another family (AF_UNIX) has no IP address and no port: ``None`` and 0, as
    the kernel's fields read zero for it. What the socket's ULP negotiated is
    read through the socket: ``msg.sk.tls``.
    """

    __slots__ = ()
    sk: Sock | None

    @property
    def family(self) -> int:
        return self.sk.family if self.sk is not None else 0

    @property
    def local_port(self) -> int:
        return _port(self.sk, local=True)

    @property
    def remote_port(self) -> int:
        return _port(self.sk, local=False)

    @property
    def local_ip4(self) -> str | None:
        return _ip(self.sk, local=True, v6=False)

    @property
    def remote_ip4(self) -> str | None:
        return _ip(self.sk, local=False, v6=False)

    @property
    def local_ip6(self) -> str | None:
        return _ip(self.sk, local=True, v6=True)

    @property
    def remote_ip6(self) -> str | None:
        return _ip(self.sk, local=False, v6=True)


_INET = (socket.AF_INET, socket.AF_INET6)


def _addr(sk: Sock | None, local: bool) -> tuple[Any, ...] | None:
    """The socket's IP address tuple, or None (no socket, no address, or a
    family without IP addresses)."""
    if sk is None or sk.family not in _INET:
        return None
    addr = sk.local_addr if local else sk.remote_addr
    return addr if isinstance(addr, tuple) else None


def _port(sk: Sock | None, local: bool) -> int:
    addr = _addr(sk, local)
    return int(addr[1]) if addr and len(addr) > 1 else 0


def _ip(sk: Sock | None, local: bool, v6: bool) -> str | None:
    addr = _addr(sk, local)
    if sk is None or not addr or (sk.family == socket.AF_INET6) != v6:
        return None
    return str(addr[0])
