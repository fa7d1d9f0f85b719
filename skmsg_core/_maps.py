"""``SockMap`` and ``SockHash``: socket maps, their programs and errnos (``net/core/sock_map.c``).

Theory of operation
-------------------
A map holds sockets under keys: :class:`SockMap` under integer indices
``0 .. max_entries - 1`` (``BPF_MAP_TYPE_SOCKMAP``), :class:`SockHash` under
any hashable key (``BPF_MAP_TYPE_SOCKHASH``). Updating a slot checks, in the
kernel's order: the value (a socket, or an fd), the socket's protocol and
state, the flags and key, the psock's programs against the map's, then
``BPF_NOEXIST``/``BPF_EXIST``; only then is anything changed, so a failed
update has no effect.

Each map has one program slot per attach type. Programs reach a socket when
it is inserted (copied into its psock), so attach before inserting.

Errors are ``OSError`` subclasses with the kernel's errno and a message that
names the map and key.
"""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import attrs

from ._consts import (
    ATTACH_PROG_TYPE,
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    MAX_BPF_STACK,
    BpfAttachType,
)
from ._errors import kernel_error
from ._plugins import loaded_plugins, sock_from
from ._progs import Program
from ._psock import SkPsock
from ._sock import Sock, refresh

__all__ = ["MapStats", "SockHash", "SockMap", "SockMapBase", "SockMapLink"]

_map_ids = itertools.count(1)


class _Keep:
    """The default of ``attach(budget=...)``: keep (or give) the default budget."""


_KEEP = _Keep()

#: attach type -> psock program slot (``sock_map_prog_lookup``).
_SLOT = {
    BpfAttachType.SK_MSG_VERDICT: "msg_parser",
    BpfAttachType.SK_SKB_STREAM_PARSER: "stream_parser",
    BpfAttachType.SK_SKB_STREAM_VERDICT: "stream_verdict",
    BpfAttachType.SK_SKB_VERDICT: "skb_verdict",
}


@attrs.frozen
class MapStats:
    """What a map holds and did: entries, updates, deletes, failed operations,
    and the id of the program in each attach slot (``None`` when empty)."""

    name: str
    entries: int
    max_entries: int
    updates: int
    deletes: int
    errors: int
    progs: dict[str, int | None]


class SockMapBase:
    """What SOCKMAP and SOCKHASH share. Not instantiated directly."""

    map_type = "sockmap"

    def __init__(
        self, max_entries: int, *, value_size: int = 8, map_flags: int = 0, name: str | None = None
    ) -> None:
        self.id = next(_map_ids)
        self.name = name or f"{self.map_type}#{self.id}"
        if max_entries <= 0:
            raise kernel_error(errno.EINVAL, f"{self.name}: max_entries must be > 0")
        if value_size not in (4, 8):
            raise kernel_error(errno.EINVAL, f"{self.name}: value_size must be 4 or 8")
        if map_flags:
            raise kernel_error(errno.EINVAL, f"{self.name}: unsupported map_flags {map_flags:#x}")
        self.max_entries = max_entries
        self.value_size = value_size
        self.progs: dict[str, Program | None] = dict.fromkeys(_SLOT.values())
        self._links: dict[str, SockMapLink | None] = dict.fromkeys(_SLOT.values())
        self._slots: dict[Any, Sock] = {}
        self.updates = 0
        self.deletes = 0
        self.errors = 0
        self.closed = False

    # -- to be provided by the map type ---------------------------------------------

    def _check_key(self, key: Any, for_update: bool) -> Any:
        raise NotImplementedError

    def _check_capacity(self, key: Any) -> None:
        """Raise if inserting a new ``key`` would exceed the map."""

    # -- element operations --------------------------------------------------------------

    def update(self, key: Any, sock: object, flags: int = BPF_ANY) -> None:
        """``bpf_map_update_elem``: put ``sock`` (a socket object, a stream holding
        one, or an int fd) at ``key``.

        Replacing a slot unlinks the socket it held. Inserting the socket that
        already sits at ``key`` succeeds.

        Raises:
            OSError(EINVAL): bad value or fd range, ``flags`` above ``BPF_EXIST``,
                a socket with a ULP but no psock, or a bad key.
            OSError(EBADF): the fd is not open or the socket is closed.
            OSError(ENOTSOCK): not a socket.
            OSError(EOPNOTSUPP): the protocol cannot be in a map, or the socket's
                state does not allow it (a TCP socket neither established nor
                listening).
            OSError(E2BIG): index out of range (SOCKMAP), map full (SOCKHASH).
            OSError(EBUSY): the socket's psock already has a program in a slot this
                map fills, or its psock is owned by a ULP.
            OSError(EEXIST): ``BPF_NOEXIST`` and the key is taken.
            OSError(ENOENT): ``BPF_EXIST`` and the key is empty.
        """
        try:
            self._update(key, sock, flags)
        except OSError:
            self.errors += 1
            raise
        self.updates += 1

    def _update(self, key: Any, sock: object, flags: int) -> None:
        self._check_open()
        sk = sock_from(sock)
        refresh(sk)
        self._reap(key)
        prot = sk.sk_prot
        if prot is None:
            raise kernel_error(
                errno.EOPNOTSUPP,
                f"{self._at(key)}: {sk.describe()} has no protocol that supports socket maps",
            )
        if not prot.sk_state_allowed(sk):
            raise kernel_error(
                errno.EOPNOTSUPP,
                f"{self._at(key)}: {sk.describe()} in state {sk.state} cannot enter a socket map",
            )
        if flags < 0 or flags > BPF_EXIST:
            raise kernel_error(errno.EINVAL, f"{self._at(key)}: bad update flags {flags}")
        key = self._check_key(key, for_update=True)
        psock = sk.psock
        if psock is not None:
            if sk.ulp is not None:
                raise kernel_error(
                    errno.EBUSY,
                    f"{self._at(key)}: {sk.describe()} has a psock and the {sk.ulp!r} ULP",
                )
            if psock.conflicts_with(self.progs):
                raise kernel_error(
                    errno.EBUSY,
                    f"{self._at(key)}: {sk.describe()} already "
                    "runs programs in a slot this map's programs fill",
                )
        else:
            if sk.ulp is not None:
                raise kernel_error(
                    errno.EINVAL,
                    f"{self._at(key)}: {sk.describe()} already "
                    f"has the {sk.ulp!r} ULP; insert it before enabling it",
                )
            if sk.user_data is not None:
                raise kernel_error(
                    errno.EBUSY, f"{self._at(key)}: {sk.describe()} sk_user_data is in use"
                )
        old = self._slots.get(key)
        if old is not None and flags == BPF_NOEXIST:
            raise kernel_error(errno.EEXIST, f"{self._at(key)} is taken")
        if old is None and flags == BPF_EXIST:
            raise kernel_error(errno.ENOENT, f"{self._at(key)} is empty")
        if old is None:
            self._check_capacity(key)
        created = psock is None
        if psock is None:
            psock = SkPsock(sk)
            sk.psock = psock
        try:
            psock.link(self, key, self.progs)
        except OSError:
            if created:
                psock.drop()
            raise
        self._slots[key] = sk
        if old is not None:
            assert old.psock is not None
            old.psock.unlink(self, key)
        observers = loaded_plugins()
        if observers is not None:
            if old is not None and old is not sk:
                observers.map_delete(self, key, old)
            observers.map_update(self, key, sk)

    def lookup(self, key: Any) -> int:
        """``bpf_map_lookup_elem`` from user space: the socket's 64-bit cookie.

        Raises:
            OSError(ENOSPC): the map's ``value_size`` is 4 (no room for a cookie).
            OSError(ENOENT): nothing at ``key``.
        """
        if self.value_size != 8:
            raise kernel_error(errno.ENOSPC, f"{self.name}: value_size 4 cannot hold a cookie")
        self._reap(key)
        sk = self.get(key)
        if sk is None:
            raise kernel_error(errno.ENOENT, f"{self._at(key)} is empty")
        return sk.cookie

    def get(self, key: Any) -> Sock | None:
        """The socket at ``key``, or ``None`` (the lookup a program does)."""
        try:
            return self._slots.get(key)
        except TypeError:
            return None

    def delete(self, key: Any) -> None:
        """``bpf_map_delete_elem``: remove the socket at ``key``.

        Raises:
            OSError(EINVAL): SOCKMAP index out of range or empty slot.
            OSError(ENOENT): SOCKHASH key not present.
        """
        self._check_open()
        key = self._check_key(key, for_update=False)
        self._reap(key)
        sk = self._slots.get(key)
        if sk is None:
            self.errors += 1
            raise self._missing(key)
        self._remove_sock(key, sk)
        self.deletes += 1

    def _missing(self, key: Any) -> OSError:
        raise NotImplementedError

    def _reap(self, key: Any) -> None:
        """``sock_map_unhash``, lazily: a socket at ``key`` that the kernel would
        have unhashed by now (a listener that left LISTEN, a closed TCP socket)
        leaves every map before the operation sees it."""
        try:
            sk = self._slots.get(key)
        except TypeError:
            return
        if sk is not None:
            refresh(sk)

    def _remove_sock(self, key: Any, sk: Sock) -> None:
        if self._slots.get(key) is sk:
            del self._slots[key]
            if sk.psock is not None:
                sk.psock.unlink(self, key)
            observers = loaded_plugins()
            if observers is not None:
                observers.map_delete(self, key, sk)

    def get_next_key(self, key: Any = None) -> Any:
        """``bpf_map_get_next_key``. Raises ``OSError(ENOENT)`` after the last key."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Any]:
        """The occupied keys (SOCKMAP in index order, SOCKHASH in insertion order)."""
        return iter(list(self._slots))

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._slots
        except TypeError:
            return False

    def items(self) -> list[tuple[Any, Sock]]:
        """``(key, socket)`` for every occupied slot."""
        return list(self._slots.items())

    def close(self) -> None:
        """Free the map: every socket it holds is unlinked (``sock_map_free``).
        Later updates and deletes fail with EBADF."""
        for key, sk in list(self._slots.items()):
            self._remove_sock(key, sk)
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise kernel_error(errno.EBADF, f"{self.name} is closed")

    def _at(self, key: Any) -> str:
        return f"{self.name}[{key!r}]"

    # -- programs --------------------------------------------------------------------------

    def attach(
        self,
        prog: Program | Callable[[Any], Any],
        attach_type: BpfAttachType,
        *,
        budget: float | _Keep | None = _KEEP,
    ) -> Program:
        """``BPF_PROG_ATTACH``: attach ``prog`` (a loaded :class:`Program` or a plain
        function, loaded here with the type ``attach_type`` takes), replacing the
        program in that slot. Only sockets inserted afterwards run it, as in the
        kernel; to replace a program on the sockets a map holds, attach it
        through a link (:meth:`link_create`) and update the link
        (:meth:`SockMapLink.update`).

        ``budget``: the seconds one run may last (None: no bound); a function
        loaded here gets :data:`~skmsg_core.DEFAULT_BUDGET` unless given one, a
        loaded program keeps its own unless given one.

        Raises:
            OSError(EINVAL): the program's type does not fit ``attach_type``, it
                fails the verifier (see :meth:`Program.load`), or ``budget`` is
                not a positive number of seconds.
            OSError(EOPNOTSUPP): ``attach_type`` is not a socket-map attach type.
            OSError(EBUSY): a stream verdict where an skb verdict is attached, or the
                reverse; or a link holds the slot.
        """
        slot, program = self._prepare(prog, attach_type)
        if self._links[slot] is not None:
            raise kernel_error(errno.EBUSY, f"{self.name}: a link holds {attach_type.name}")
        if not isinstance(budget, _Keep):
            program.set_budget(budget)
        self.progs[slot] = program
        return program

    def detach(self, prog: Program, attach_type: BpfAttachType) -> None:
        """``BPF_PROG_DETACH``.

        Raises:
            OSError(EINVAL): ``prog`` is of another type than the slot takes.
            OSError(ENOENT): ``prog`` is not the program attached there.
        """
        slot = self._slot(attach_type)
        prog.check_attach(attach_type)
        if self.progs[slot] is not prog:
            raise kernel_error(
                errno.ENOENT, f"{self.name}: {prog.name} is not attached as {attach_type.name}"
            )
        if self._links[slot] is not None:
            raise kernel_error(errno.EBUSY, f"{self.name}: a link holds {attach_type.name}")
        self.progs[slot] = None

    def query(self, attach_type: BpfAttachType, query_flags: int = 0) -> list[int]:
        """``BPF_PROG_QUERY``: ids of the programs attached (0 or 1 of them).

        Raises:
            OSError(EINVAL): ``query_flags`` is not 0.
        """
        if query_flags:
            raise kernel_error(errno.EINVAL, f"{self.name}: query_flags must be 0")
        prog = self.progs[self._slot(attach_type)]
        return [] if prog is None else [prog.id]

    def link_create(
        self, prog: Program | Callable[[Any], Any], attach_type: BpfAttachType
    ) -> SockMapLink:
        """``bpf_link_create``: attach through a link, which fails where the slot is taken.

        Raises:
            OSError(EBUSY): the slot holds a program already (or the verdict rule).
            OSError(EINVAL, EOPNOTSUPP): as :meth:`attach`.
        """
        slot, program = self._prepare(prog, attach_type)
        if self.progs[slot] is not None:
            raise kernel_error(errno.EBUSY, f"{self.name}: {attach_type.name} is taken")
        link = SockMapLink(self, attach_type, program)
        self.progs[slot] = program
        self._links[slot] = link
        return link

    def _slot(self, attach_type: BpfAttachType) -> str:
        try:
            return _SLOT[BpfAttachType(attach_type)]
        except (ValueError, KeyError):
            raise kernel_error(
                errno.EOPNOTSUPP, f"{self.name}: {attach_type!r} is not a socket-map attach type"
            ) from None

    def _prepare(
        self, prog: Program | Callable[[Any], Any], attach_type: BpfAttachType
    ) -> tuple[str, Program]:
        slot = self._slot(attach_type)
        attach_type = BpfAttachType(attach_type)
        if not isinstance(prog, Program):
            prog = Program.load(prog, ATTACH_PROG_TYPE[attach_type])
        prog.check_attach(attach_type)
        if slot == "stream_verdict" and self.progs["skb_verdict"] is not None:
            raise kernel_error(errno.EBUSY, f"{self.name}: SK_SKB_VERDICT is attached")
        if slot == "skb_verdict" and self.progs["stream_verdict"] is not None:
            raise kernel_error(errno.EBUSY, f"{self.name}: SK_SKB_STREAM_VERDICT is attached")
        return slot, prog

    def statistics(self) -> MapStats:
        """A snapshot of the map's counters and attached program ids."""
        return MapStats(
            self.name,
            len(self._slots),
            self.max_entries,
            self.updates,
            self.deletes,
            self.errors,
            {s: (p.id if p is not None else None) for s, p in self.progs.items()},
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {len(self._slots)}/{self.max_entries}>"


@attrs.define(eq=False)
class SockMapLink:
    """A ``bpf_link`` holding one program slot of a map."""

    map: SockMapBase
    attach_type: BpfAttachType
    prog: Program | None

    def update(self, prog: Program | Callable[[Any], Any]) -> None:
        """``BPF_LINK_UPDATE``: replace the linked program, on the map and on
        every socket the map holds now.

        Sockets that took the old program from this map run the new one from
        their next message on: a message is verdicted by the old program or
        by the new one, never by both and never by neither (a send or a
        receive batch under way finishes with the program it started with;
        an apply window an old verdict set runs out as the kernel's does); a
        stream parser's partial message is framed by the new parser. No
        connection is dropped. Sockets inserted later take the new program.

        Raises:
            OSError(EINVAL): the new program's type does not fit, or the link is detached.
        """
        old = self.prog
        if old is None:
            raise kernel_error(errno.EINVAL, f"{self.map.name}: link is detached")
        if not isinstance(prog, Program):
            prog = Program.load(prog, old.prog_type)
        prog.check_attach(self.attach_type)
        slot = self.map._slot(self.attach_type)
        self.map.progs[slot] = prog
        self.prog = prog
        for sk in list(self.map._slots.values()):
            psock = sk.psock
            if psock is not None:
                psock.replace_prog(slot, old, prog)

    def detach(self) -> None:
        """Release the slot. Idempotent."""
        if self.prog is None:
            return
        slot = self.map._slot(self.attach_type)
        self.map.progs[slot] = None
        self.map._links[slot] = None
        self.prog = None


class SockMap(SockMapBase):
    """``BPF_MAP_TYPE_SOCKMAP``: sockets at integer indices ``0 .. max_entries - 1``."""

    map_type = "sockmap"

    def _check_key(self, key: Any, for_update: bool) -> int:
        if not isinstance(key, int) or isinstance(key, bool) or key < 0 or key > 0xFFFFFFFF:
            raise kernel_error(errno.EINVAL, f"{self.name}: key {key!r} is not a u32 index")
        if key >= self.max_entries:
            if for_update:
                raise kernel_error(
                    errno.E2BIG, f"{self.name}: index {key} >= max_entries {self.max_entries}"
                )
            raise kernel_error(
                errno.EINVAL, f"{self.name}: index {key} >= max_entries {self.max_entries}"
            )
        return key

    def _missing(self, key: Any) -> OSError:
        return kernel_error(errno.EINVAL, f"{self._at(key)} is empty")

    def get_next_key(self, key: Any = None) -> int:
        """The index after ``key``, occupied or not; 0 for ``None`` or an index out
        of range. Raises ``OSError(ENOENT)`` after the last index."""
        if key is None or not isinstance(key, int) or key < 0 or key >= self.max_entries:
            return 0
        if key == self.max_entries - 1:
            raise kernel_error(errno.ENOENT, f"{self.name}: no key after {key}")
        return key + 1

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._slots))

    def items(self) -> list[tuple[Any, Sock]]:
        return sorted(self._slots.items())


class SockHash(SockMapBase):
    """``BPF_MAP_TYPE_SOCKHASH``: sockets under hashable keys, at most ``max_entries``.

    With ``key_size`` set, keys must be ``bytes`` of exactly that length, as in
    the kernel; without it any hashable key works.
    """

    map_type = "sockhash"

    def __init__(
        self,
        max_entries: int,
        *,
        key_size: int | None = None,
        value_size: int = 8,
        map_flags: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(max_entries, value_size=value_size, map_flags=map_flags, name=name)
        if key_size is not None:
            if key_size == 0:
                raise kernel_error(errno.EINVAL, f"{self.name}: key_size must be > 0")
            if key_size > MAX_BPF_STACK:
                raise kernel_error(
                    errno.E2BIG, f"{self.name}: key_size {key_size} > {MAX_BPF_STACK}"
                )
        self.key_size = key_size

    def _check_key(self, key: Any, for_update: bool) -> Hashable:
        if self.key_size is not None and (not isinstance(key, bytes) or len(key) != self.key_size):
            raise kernel_error(
                errno.EINVAL, f"{self.name}: key {key!r} is not {self.key_size} bytes"
            )
        try:
            hash(key)
        except TypeError:
            raise kernel_error(errno.EINVAL, f"{self.name}: key {key!r} is not hashable") from None
        return key  # type: ignore[no-any-return]

    def _check_capacity(self, key: Any) -> None:
        if len(self._slots) >= self.max_entries:
            raise kernel_error(errno.E2BIG, f"{self.name} is full ({self.max_entries} entries)")

    def _missing(self, key: Any) -> OSError:
        return kernel_error(errno.ENOENT, f"{self._at(key)} is not present")

    def get_next_key(self, key: Any = None) -> Any:
        """The key after ``key`` in insertion order; the first key for ``None`` or a
        key not present. Raises ``OSError(ENOENT)`` after the last key."""
        keys = list(self._slots)
        if key is not None and key in self._slots:
            i = keys.index(key) + 1
        else:
            i = 0
        if i >= len(keys):
            raise kernel_error(errno.ENOENT, f"{self.name}: no key after {key!r}")
        return keys[i]
