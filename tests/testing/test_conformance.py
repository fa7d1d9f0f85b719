"""check_protocol_plugin: skmsg_tcp passes it; broken plugins fail it, by name."""

from __future__ import annotations

import errno
import socket as stdsocket
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import skmsg_core as sk
import skmsg_tcp
from skmsg_core.runtime import Runtime, current_runtime
from skmsg_core.testing import check_protocol_plugin
from skmsg_tcp.testing import clog_tcp_pair, tcp_stream_pair

Pair = tuple[Any, Any]


async def connected_sockets() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    listener = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return client, server


def skstreams_with(proto: Any) -> Callable[[], Awaitable[Pair]]:
    """A pair maker of SkStreams whose protocol table is ``proto``."""

    async def make() -> Pair:
        client, server = await connected_sockets()
        return skmsg_tcp.SkStream(client, proto=proto), skmsg_tcp.SkStream(server, proto=proto)

    return make


# -- the built-in TCP plugin passes ----------------------------------------------------------


async def test_skmsg_tcp_passes_the_conformance_check_with_clogged_streams_too() -> None:
    assert current_runtime() is None  # the check opens its own runtime
    await check_protocol_plugin(tcp_stream_pair, proto=skmsg_tcp.TCP_PROTO, clog=clog_tcp_pair)
    assert current_runtime() is None


async def test_skmsg_tcp_passes_under_the_callers_runtime(skmsg_runtime: Runtime) -> None:
    await check_protocol_plugin(tcp_stream_pair)
    assert current_runtime() is skmsg_runtime


async def test_the_datagram_check_refuses_stream_sockets_by_name() -> None:
    """kind="datagram" holds a plugin to datagram I/O (send/receive one datagram,
    tests/udp runs it on skmsg_udp): TCP streams fail it, naming the step."""
    with pytest.raises(AssertionError, match=r"protocol plugin 'tcp': .*no send\(data\)"):
        await check_protocol_plugin(tcp_stream_pair, kind="datagram")


async def test_an_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        await check_protocol_plugin(tcp_stream_pair, kind="seqpacket")  # type: ignore[arg-type]


async def test_the_check_closes_every_stream_it_made() -> None:
    made: list[Any] = []

    async def tracked() -> Pair:
        pair = await tcp_stream_pair()
        made.extend(pair)
        return pair

    await check_protocol_plugin(tracked)
    assert len(made) > 10
    assert all(s.sk.dead and s.socket.fileno() == -1 for s in made)


async def test_a_clogger_that_does_not_clog_fails_trios_clogged_tests() -> None:
    async def no_clog(left: Any, right: Any) -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(AssertionError, match="check_half_closeable_stream on a plain stream"):
        await check_protocol_plugin(tcp_stream_pair, clog=no_clog)


# -- broken plugins fail, naming what is wrong ---------------------------------------------


class NeverRestores(skmsg_tcp.TcpProto):
    """Installs its operations but ignores restore=True."""

    name = "tcp-never-restores"

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        if restore:
            return 0
        return super().psock_update_sk_prot(s, psock, restore)


class NeverRestoresOwnTable:
    """The same bug in a table that does not build on SkProtoBase: only the
    stream's behaviour can show it."""

    name = "tcp-own-table"

    def __init__(self) -> None:
        self.tcp = skmsg_tcp.TcpProto()

    def sk_state_allowed(self, s: sk.Sock) -> bool:
        return self.tcp.sk_state_allowed(s)

    def redirect_allowed(self, s: sk.Sock) -> bool:
        return self.tcp.redirect_allowed(s)

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        return 0 if restore else self.tcp.psock_update_sk_prot(s, psock, restore)


class NeverInstalls(skmsg_tcp.TcpProto):
    """Keeps the core's bookkeeping but never swaps the stream's operations."""

    name = "tcp-never-installs"

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        return sk.SkProtoBase.psock_update_sk_prot(self, s, psock, restore)


class RefusesRedirects(skmsg_tcp.TcpProto):
    name = "tcp-no-redirects"

    def redirect_allowed(self, s: sk.Sock) -> bool:
        return False


class ReturnsOne(skmsg_tcp.TcpProto):
    name = "tcp-returns-one"

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        super().psock_update_sk_prot(s, psock, restore)
        return 1


class Unregistered(skmsg_tcp.TcpProto):
    """Correct in every way, but no plugin serves it."""

    name = "tcp-unregistered"


async def test_a_table_that_never_restores_fails_at_the_seam() -> None:
    with pytest.raises(AssertionError) as info:
        await check_protocol_plugin(skstreams_with(NeverRestores()))
    message = str(info.value)
    assert "'tcp-never-restores'" in message
    assert "the seam" in message
    assert "restore=True) did not restore" in message


async def test_receive_processing_stops_with_the_psock_even_if_the_table_never_restores() -> None:
    """A table that never restores leaves the stream's receive processing
    registered; the runtime still stops reading once the psock is gone (a burst
    ends without re-arming), so plain reads get the bytes and the seam step
    passes. Only the registration step fails: the table is not a plugin's."""
    with pytest.raises(AssertionError) as info:
        await check_protocol_plugin(skstreams_with(NeverRestoresOwnTable()), timeout=0.5)
    message = str(info.value)
    assert "'tcp-own-table': registration through the 'skmsg' entry-point group" in message
    assert "the seam" not in message


async def test_a_table_that_never_installs_receive_processing_fails() -> None:
    with pytest.raises(AssertionError, match="did not install receive processing"):
        await check_protocol_plugin(skstreams_with(NeverInstalls()), timeout=0.5)


async def test_a_table_that_is_not_an_skproto_fails_the_table_step() -> None:
    class Incomplete:
        name = "half-a-table"

        def sk_state_allowed(self, s: sk.Sock) -> bool:
            return True

    with pytest.raises(AssertionError) as info:
        await check_protocol_plugin(skstreams_with(Incomplete()))
    message = str(info.value)
    assert "'half-a-table': the protocol table (SkProto)" in message
    assert "missing ['redirect_allowed', 'psock_update_sk_prot']" in message


async def test_a_table_that_refuses_redirects_fails_the_table_step() -> None:
    with pytest.raises(AssertionError, match=r"protocol table.*redirect_allowed refuses"):
        await check_protocol_plugin(skstreams_with(RefusesRedirects()))


async def test_a_seam_returning_non_zero_on_success_fails() -> None:
    with pytest.raises(AssertionError, match=r"returned \[1, 1, 1\] on success, not 0"):
        await check_protocol_plugin(skstreams_with(ReturnsOne()))


async def test_a_table_missing_from_skmsg_protocols_fails_registration() -> None:
    with pytest.raises(AssertionError) as info:
        await check_protocol_plugin(skstreams_with(Unregistered()))
    message = str(info.value)
    assert "registration through the 'skmsg' entry-point group" in message
    assert "serves None under 'tcp-unregistered'" in message


async def test_a_plugin_registered_by_hand_not_by_entry_point_fails() -> None:
    proto = Unregistered()
    plugin = types.ModuleType("hand_registered_plugin")

    @sk.hookimpl
    def skmsg_protocols() -> tuple[sk.SkProto, ...]:
        return (proto,)

    plugin.skmsg_protocols = skmsg_protocols  # type: ignore[attr-defined]
    sk.plugins().register(plugin, name="hand-registered")
    try:
        assert sk.plugins().protocol("tcp-unregistered") is proto
        with pytest.raises(AssertionError) as info:
            await check_protocol_plugin(skstreams_with(proto))
    finally:
        sk.plugins().unregister(plugin)
    message = str(info.value)
    assert "plugin 'hand-registered'" in message
    assert "was not loaded from the 'skmsg' entry-point group" in message


async def test_streams_without_sk_fail_first() -> None:
    async def plain_trio() -> Pair:
        client, server = await connected_sockets()
        return trio.SocketStream(client), trio.SocketStream(server)

    with pytest.raises(AssertionError, match=r"the socket \(\.sk\).*has no \.sk attribute"):
        await check_protocol_plugin(plain_trio)


async def test_a_cookie_that_is_not_so_cookie_fails() -> None:
    async def wrong_cookie() -> Pair:
        client, server = await tcp_stream_pair()
        client.sk.cookie = sk.next_cookie()
        return client, server

    with pytest.raises(AssertionError, match="the OS's SO_COOKIE is"):
        await check_protocol_plugin(wrong_cookie)


async def test_a_stream_whose_sk_is_not_its_own_fails() -> None:
    async def wrong_owner() -> Pair:
        client, server = await tcp_stream_pair()
        client.sk.owner = server
        return client, server

    with pytest.raises(AssertionError, match=r"sk\.owner is .*, not the stream"):
        await check_protocol_plugin(wrong_owner)


async def test_a_stream_that_forgets_to_close_its_sk_fails() -> None:
    class Leaky(skmsg_tcp.SkStream):
        async def aclose(self) -> None:
            # SkStream.aclose, but forgetting sk.close(): the socket stays in its maps
            self._closed = True
            self.wake_readers()
            self.socket.close()
            await trio.lowlevel.checkpoint()

    async def leaky() -> Pair:
        client, server = await connected_sockets()
        return Leaky(client), Leaky(server)

    with pytest.raises(AssertionError) as info:
        await check_protocol_plugin(leaky)
    assert "closing a stream removes it from every map" in str(info.value)
    assert "still in ['sockmap#" in str(info.value)


async def test_a_drop_that_is_not_eacces_fails() -> None:
    class WrongErrno(skmsg_tcp.SkStream):
        async def send_all(self, data: Any, *, more: bool = False) -> None:
            try:
                await super().send_all(data, more=more)
            except PermissionError as exc:
                raise PermissionError(errno.EPERM, "dropped") from exc

    async def make() -> Pair:
        client, server = await connected_sockets()
        return WrongErrno(client), WrongErrno(server)

    with pytest.raises(AssertionError, match=r"SK_MSG DROP: .*errno 1, not EACCES"):
        await check_protocol_plugin(make)
