"""Socket maps holding real TCP sockets: reference §7 cases 44-51, 57, 66 and 68.

What mirrors what. The kernel's map update takes a socket fd. skmsg's maps take
an ``SkStream`` / ``SkListener`` (or its ``sk``), or an int fd: an fd resolves
to the socket a protocol plugin registered under it. Only connected streams
and listening sockets are ever registered by the TCP plugin, so the fd of a
fresh, bound-but-not-listening or otherwise unregistered TCP socket is "a
socket no skmsg protocol serves" and the update fails ``EOPNOTSUPP``: the
errno the kernel gives for a TCP socket in a state a map refuses
(``sock_map_sk_state_allowed``). A closed stream or listener leaves every map
(``sock_map_close``), and its stale fd is ``EBADF``.
"""

from __future__ import annotations

import errno
import socket as stdsocket
import struct
import threading
from collections.abc import Callable

import pytest
import trio

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import open_runtime
from skmsg_tcp.testing import tcp_stream_pair

from ._topology import open_listener, port_of, read_exact, tcp_pair

MAPS: list[Callable[[], sk.SockMapBase]] = [
    lambda: sk.SockMap(max_entries=4),
    lambda: sk.SockHash(max_entries=4),
]
MAP_IDS = ["sockmap", "sockhash"]
#: each map type with the errno of a delete of a key that holds nothing
MAPS_AND_MISSING = list(zip(MAPS, [errno.EINVAL, errno.ENOENT], strict=True))
SO_COOKIE = getattr(stdsocket, "SO_COOKIE", 57)


def raises(err: int) -> pytest.RaisesExc[OSError]:
    return pytest.raises(OSError, check=lambda e: e.errno == err)


def so_cookie(sock: trio.socket.SocketType) -> int:
    return int(struct.unpack("=Q", sock.getsockopt(stdsocket.SOL_SOCKET, SO_COOKIE, 8))[0])


def psock_of(s: skmsg_tcp.SkStream | skmsg_tcp.SkListener) -> sk.SkPsock | None:
    """The psock now (a call, so no narrowing carries over a map update)."""
    return s.sk.psock


def key(m: sk.SockMapBase, i: int) -> int | str:
    return i if isinstance(m, sk.SockMap) else f"k{i}"


# -- case 44: bad values ------------------------------------------------------------------------


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_case_44_value_minus_one_einval_int_max_ebadf(
    make: Callable[[], sk.SockMapBase],
) -> None:
    """Value -1 (as s32 and as u64) ⇒ EINVAL; ``INT_MAX`` (no such fd) ⇒ EBADF;
    a listener's real fd then goes in."""
    async with open_runtime():
        m = make()
        with raises(errno.EINVAL):
            m.update(key(m, 0), -1)
        with raises(errno.EINVAL):
            m.update(key(m, 0), 2**64 - 1)
        with raises(errno.EBADF):
            m.update(key(m, 0), 2**31 - 1)
        async with await open_listener() as listener:
            m.update(key(m, 0), listener.fileno())
            assert m.get(key(m, 0)) is listener.sk
        assert len(m) == 0  # closing the listener took it out
        m.close()


# -- cases 45, 46: which TCP sockets may enter -------------------------------------------------


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_case_45_fresh_tcp_socket_is_eopnotsupp(make: Callable[[], sk.SockMapBase]) -> None:
    async with open_runtime():
        m = make()
        with (
            trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM) as fresh,
            raises(errno.EOPNOTSUPP),
        ):
            m.update(key(m, 0), fresh.fileno())
        assert len(m) == 0
        m.close()


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
def test_case_45_fresh_udp_socket_is_refused_until_bound(
    make: Callable[[], sk.SockMapBase],
) -> None:
    """A fresh UDP socket's fd is refused EOPNOTSUPP, as Linux 6.18 refuses an
    unhashed UDP socket (the reference's case 45 says it is taken; the live
    kernel, in tests/conformance, does not). Once bound, the UDP plugin adopts
    it: it sits in the map (a cookie to look up, the kernel's ``SO_COOKIE``)
    but, unconnected, is no redirect target; closing the fd takes it out."""
    m = make()
    with stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM) as fresh:
        try:
            with raises(errno.EOPNOTSUPP):
                m.update(key(m, 0), fresh.fileno())
            assert len(m) == 0
            fresh.bind(("127.0.0.1", 0))
            m.update(key(m, 0), fresh.fileno())
            assert len(m) == 1
            held = m.get(key(m, 0))
            assert held is not None and held.sk_prot is not None
            assert held.sk_prot.name == "udp"
            assert held.state == sk.TcpState.CLOSE
            assert not held.sk_prot.redirect_allowed(held)
            cookie = struct.unpack("=Q", fresh.getsockopt(stdsocket.SOL_SOCKET, 57, 8))[0]
            assert m.lookup(key(m, 0)) == cookie
            assert fresh.getblocking()  # the user's fd keeps its blocking mode
        except BaseException:
            m.close()
            raise
    with raises(errno.EINVAL if isinstance(m, sk.SockMap) else errno.ENOENT):
        m.delete(key(m, 0))  # closing the fd took it out
    m.close()


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_case_46_bound_tcp_refused_listening_accepted(
    make: Callable[[], sk.SockMapBase],
) -> None:
    """Bound but not listening ⇒ EOPNOTSUPP (and the plugin will not make a
    listener of it); listening ⇒ accepted, as the object and by its fd."""
    async with open_runtime():
        m = make()
        with trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM) as bound:
            await bound.bind(("127.0.0.1", 0))
            with raises(errno.EOPNOTSUPP):
                m.update(key(m, 0), bound.fileno())
            with pytest.raises(ValueError, match="listening"):
                skmsg_tcp.SkListener(bound)
        async with await open_listener() as a, await open_listener() as b:
            m.update(key(m, 0), a)
            m.update(key(m, 1), b.fileno())
            assert m.get(key(m, 0)) is a.sk and m.get(key(m, 1)) is b.sk
            assert a.sk.state == b.sk.state == sk.TcpState.LISTEN
        m.close()


async def test_case_46_state_rule_stream_whose_peer_closed_is_eopnotsupp() -> None:
    """The state rule behind cases 45 and 46 (reference §1.3, update check 4): a
    TCP socket may enter a map only while ESTABLISHED or LISTEN. Once the peer
    has closed and this side has read the EOF, the socket is CLOSE_WAIT and
    the kernel refuses it EOPNOTSUPP (``sock_map_sk_state_allowed``)."""
    async with open_runtime():
        c, p = await tcp_stream_pair()
        await p.aclose()
        with trio.fail_after(5):
            assert await c.receive_some(10) == b""  # FIN read: CLOSE_WAIT
        m = sk.SockMap(max_entries=1)
        try:
            with raises(errno.EOPNOTSUPP):
                m.update(0, c)
        finally:
            m.close()
            await c.aclose()


# -- cases 47-49 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "err"), MAPS_AND_MISSING, ids=MAP_IDS)
async def test_case_47_delete_after_close(make: Callable[[], sk.SockMapBase], err: int) -> None:
    """Insert a listener, delete ⇒ ok; insert, close the socket, delete ⇒ EINVAL
    (sockmap) / ENOENT (sockhash): closing took it out of the map."""
    async with open_runtime():
        m = make()
        listener = await open_listener()
        fd = listener.fileno()
        m.update(key(m, 0), listener)
        m.delete(key(m, 0))
        m.update(key(m, 0), fd)
        await listener.aclose()
        with raises(err):
            m.delete(key(m, 0))
        assert len(m) == 0 and listener.sk.psock is None
        with raises(errno.EBADF):
            m.update(key(m, 0), listener)  # a closed socket
        m.close()


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_case_48_lookup_is_so_cookie(make: Callable[[], sk.SockMapBase]) -> None:
    """Lookup gives the socket's cookie, equal to ``getsockopt(SO_COOKIE)``;
    after delete ⇒ ENOENT; a map with ``value_size`` 4 ⇒ ENOSPC."""
    async with open_runtime():
        m = make()
        async with await open_listener() as listener:
            m.update(key(m, 1), listener)
            assert m.lookup(key(m, 1)) == so_cookie(listener.socket) > 0
            m.delete(key(m, 1))
            with raises(errno.ENOENT):
                m.lookup(key(m, 1))
            small = type(m)(max_entries=4, value_size=4)
            small.update(key(small, 1), listener)
            with raises(errno.ENOSPC):
                small.lookup(key(small, 1))
            small.close()
        m.close()


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_case_49_noexist_then_exist(make: Callable[[], sk.SockMapBase]) -> None:
    """s1 with BPF_NOEXIST, then s2 at the same key: NOEXIST ⇒ EEXIST, EXIST ⇒ ok."""
    async with open_runtime():
        m = make()
        async with await open_listener() as s1, await open_listener() as s2:
            m.update(key(m, 0), s1, sk.BPF_NOEXIST)
            with raises(errno.EEXIST):
                m.update(key(m, 0), s2, sk.BPF_NOEXIST)
            m.update(key(m, 0), s2, sk.BPF_EXIST)
            assert m.lookup(key(m, 0)) == so_cookie(s2.socket)
            assert s1.sk.psock is None  # replaced: its only link went
        m.close()


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
@pytest.mark.parametrize("order", ["delete_then_accept", "accept_then_delete"])
async def test_case_50_accepted_child_has_no_psock(
    make: Callable[[], sk.SockMapBase], order: str
) -> None:
    """Listener in the map; a client connects; the listener is deleted; the
    accepted child goes in with BPF_NOEXIST (nothing inherited). Accepting
    before the delete: the child goes in at key 1 while the listener is at 0."""
    async with open_runtime():
        m = make()
        listener = await open_listener()
        m.update(key(m, 0), listener)
        client = await skmsg_tcp.open_tcp_stream("127.0.0.1", port_of(listener))
        if order == "delete_then_accept":
            m.delete(key(m, 0))
            child = await listener.accept()
            assert psock_of(child) is None
            m.update(key(m, 0), child, sk.BPF_NOEXIST)
        else:
            child = await listener.accept()
            assert psock_of(child) is None
            m.update(key(m, 1), child, sk.BPF_NOEXIST)
            m.delete(key(m, 0))
        assert psock_of(child) is not None and psock_of(listener) is None
        await client.send_all(b"ping")  # a child in a map without programs reads plainly
        assert await read_exact(child, 4) == b"ping"
        for resource in (client, child, listener):
            await resource.aclose()
        m.close()


# -- case 51: a listener leaving LISTEN ----------------------------------------------------------


def leave_listen(listener: skmsg_tcp.SkListener) -> None:
    """Take the OS socket out of LISTEN, as ``connect(AF_UNSPEC)`` does in the
    kernel test: ``shutdown(SHUT_RD)`` on a listener runs ``tcp_disconnect``."""
    listener.socket.shutdown(stdsocket.SHUT_RD)
    assert not listener.socket.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ACCEPTCONN)


@pytest.mark.parametrize("make", MAPS, ids=MAP_IDS)
async def test_case_51_race_listen_disconnect_vs_insert_delete(
    make: Callable[[], sk.SockMapBase],
) -> None:
    """sockmap_listen ``test_race_insert_listen``: a thread flips a listener
    between LISTEN and CLOSE while the test inserts and deletes it; inserts may
    fail only with EOPNOTSUPP, deletes only with EINVAL / ENOENT."""
    async with open_runtime():
        m = make()
        listener = await open_listener()
        stop = threading.Event()

        def flip() -> None:
            while not stop.is_set():
                listener.socket.listen(1)
                listener.socket.shutdown(stdsocket.SHUT_RD)

        update_errs: set[int | None] = set()
        delete_errs: set[int | None] = set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, flip)
            with trio.move_on_after(0.3):
                while True:
                    try:
                        m.update(key(m, 0), listener)
                    except OSError as exc:
                        update_errs.add(exc.errno)
                    try:
                        m.delete(key(m, 0))
                    except OSError as exc:
                        delete_errs.add(exc.errno)
                    await trio.sleep(0)
            stop.set()
        assert update_errs <= {errno.EOPNOTSUPP}
        assert delete_errs <= {errno.EINVAL, errno.ENOENT}
        await listener.aclose()
        m.close()


@pytest.mark.parametrize(("make", "err"), MAPS_AND_MISSING, ids=MAP_IDS)
async def test_case_51_listener_leaving_listen_leaves_the_map(
    make: Callable[[], sk.SockMapBase], err: int
) -> None:
    """One step of the race at a time. When the socket leaves LISTEN the kernel
    unhashes it (``tcp_set_state(TCP_CLOSE)`` → ``sock_map_unhash``), so its
    entry vanishes and delete fails EINVAL / ENOENT; while it is not listening
    an insert fails EOPNOTSUPP (``sock_map_sk_state_allowed``); once it listens
    again it may go back in."""
    async with open_runtime():
        m = make()
        async with await open_listener() as listener:
            m.update(key(m, 0), listener)
            leave_listen(listener)
            with raises(err):
                m.delete(key(m, 0))
            with raises(errno.EOPNOTSUPP):
                m.update(key(m, 0), listener)
            listener.socket.listen(1)
            m.update(key(m, 0), listener)
            assert m.get(key(m, 0)) is listener.sk
        m.close()


# -- case 57: reuseport selection with real listeners -------------------------------------------


async def test_case_57_reuseport_select_from_sockmap() -> None:
    """sockmap_listen "select listening": an SK_REUSEPORT program does
    ``bpf_sk_select_reuseport(reuse, sockmap, 0, 0)`` and passes on success,
    drops on error. Real SO_REUSEPORT listeners l1, l2 share a port (one group);
    ``foreign`` listens elsewhere (another group).

    What mirrors what: the kernel runs the program on the SYN and the client
    sees ECONNREFUSED on a drop. skmsg's ``ReuseportGroup.select`` is that
    decision (``None`` = refused); the OS still routes real SYNs among
    SO_REUSEPORT listeners by its own hash (skmsg_tcp has no hook that makes a
    real connection follow the selection yet), so the checks are on the
    decision, the helper's errno and the counters, with real sockets in the map.

    - key 0 = l2 (listening, same group) ⇒ selected, pass count 1;
    - key 0 = an established socket ⇒ -EINVAL, refused, drop count 1;
    - key 0 = a listener of another group ⇒ -EXDEV, refused, drop count 2.
    """
    async with open_runtime():
        l1 = await open_listener(reuseport=True)
        l2 = await open_listener(reuseport=True, port=port_of(l1))
        foreign = await open_listener(reuseport=True)
        group = sk.ReuseportGroup(stdsocket.AF_INET)
        other = sk.ReuseportGroup(stdsocket.AF_INET)
        group.add(l1.sk)
        group.add(l2.sk)
        other.add(foreign.sk)
        m = sk.SockMap(max_entries=1)
        errs: list[int] = []

        def select(reuse: sk.ReuseportMd) -> int:
            err = sk.sk_select_reuseport(reuse, m, 0, 0)
            errs.append(err)
            return sk.SK_DROP if err else sk.SK_PASS

        prog = group.attach(select)
        m.update(0, l2)
        assert group.select(hash=12345) is l2.sk
        assert (errs[-1], prog.passed, prog.dropped) == (0, 1, 0)

        plain = await open_listener()
        client, server = await tcp_pair(plain)  # the server side is established
        await plain.aclose()
        m.update(0, server)
        assert group.select(hash=12345) is None
        assert (errs[-1], prog.dropped) == (-errno.EINVAL, 1)

        m.update(0, foreign)
        assert group.select(hash=12345) is None
        assert (errs[-1], prog.dropped, group.refused, group.selected) == (-errno.EXDEV, 2, 2, 1)
        for resource in (client, server, l1, l2, foreign):
            await resource.aclose()
        m.close()


# -- cases 66, 68 ---------------------------------------------------------------------------------


async def test_case_66_one_tcp_socket_in_many_entries_and_maps() -> None:
    """One established TCP socket at four sockmap keys (one by fd), replacing
    itself, and at two sockhash keys: every BPF_ANY update succeeds, every
    delete succeeds; after ``close`` deleting its remaining keys fails
    (EINVAL / ENOENT). While in maps without programs the stream works as ever."""
    async with open_runtime():
        c, p = await tcp_stream_pair()
        m1, m2 = sk.SockMap(max_entries=4), sk.SockHash(max_entries=4)
        for k in range(3):
            m1.update(k, c)
        m1.update(3, c.fileno())
        m1.update(0, c)  # replacing itself
        m2.update("x", c)
        m2.update("y", c.fileno())
        assert c.sk.psock is not None and len(c.sk.psock.links) == 6
        await c.send_all(b"still a stream")
        assert await read_exact(p, 14) == b"still a stream"
        m1.delete(0)
        m2.delete("x")
        assert len(c.sk.psock.links) == 4
        await c.aclose()
        with raises(errno.EINVAL):
            m1.delete(1)
        with raises(errno.ENOENT):
            m2.delete("y")
        assert len(m1) == len(m2) == 0
        await p.aclose()
        m1.close()
        m2.close()


async def test_case_68_create_update_free() -> None:
    """A sockmap (key 4, value 4, max 1), one established TCP socket inserted with
    BPF_NOEXIST; close the map, then the socket: no error, and in between the
    stream is a plain stream again."""
    async with open_runtime():
        c, p = await tcp_stream_pair()
        m = sk.SockMap(max_entries=1, value_size=4)
        m.update(0, c, sk.BPF_NOEXIST)
        m.close()
        assert c.sk.psock is None
        await c.send_all(b"x")
        assert await read_exact(p, 1) == b"x"
        await c.aclose()
        await p.aclose()
