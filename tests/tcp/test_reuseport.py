"""Reuseport groups over real sockets: the program picks the listener (case 57)."""

from __future__ import annotations

import errno

import trio

import skmsg_core as sk
import skmsg_tcp


async def connect_and_ping(port: int) -> bytes:
    stream = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"ping")
        return await stream.receive_some(10)


async def test_case_57_program_selects_the_listener_from_a_map() -> None:
    async with skmsg_tcp.open_reuseport_group(0, count=2) as rg:
        l0, l1 = rg.listeners
        m = sk.SockMap(max_entries=1)
        errs: list[int] = []

        def select(reuse: sk.ReuseportMd) -> int:
            err = sk.sk_select_reuseport(reuse, m, 0, 0)
            errs.append(err)
            return sk.SK_DROP if err else sk.SK_PASS

        prog = rg.attach(select)
        for chosen in (l1, l0, l1):
            m.update(0, chosen)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connect_and_ping, rg.port)
                with trio.fail_after(5):
                    server = await chosen.accept()
                async with server:
                    assert await server.receive_some(10) == b"ping"
        assert prog.passed == 3 and errs == [0, 0, 0] and rg.accepted == 3


async def refused(port: int) -> bool:
    """Connect and read: True when the group refused the connection. The reset
    can beat the client's connect (loopback is fast), so either the connect
    fails or the first read sees ECONNRESET or EOF."""
    try:
        client = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    async with client:
        with trio.fail_after(5):
            try:
                return await client.receive_some(10) == b""
            except trio.BrokenResourceError as exc:
                cause = exc.__cause__
                return isinstance(cause, OSError) and cause.errno == errno.ECONNRESET


async def test_case_57_empty_key_and_established_socket_refuse_connections() -> None:
    async with skmsg_tcp.open_reuseport_group(0, count=2) as rg:
        m = sk.SockMap(max_entries=1)
        errs: list[int] = []

        def select(reuse: sk.ReuseportMd) -> int:
            errs.append(sk.sk_select_reuseport(reuse, m, 0))
            return sk.SK_DROP if errs[-1] else sk.SK_PASS

        prog = rg.attach(select)
        assert await refused(rg.port)  # empty key: -ENOENT
        server_side = await skmsg_tcp.open_tcp_listeners(0, host="127.0.0.1")
        async with server_side[0]:
            port = server_side[0].socket.getsockname()[1]
            established = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
            async with established:
                m.update(0, established)  # not a listener of the group: -EINVAL
                assert await refused(rg.port)
        assert errs == [-errno.ENOENT, -errno.EINVAL]
        assert prog.dropped == 2 and rg.refused == 2 and rg.accepted == 0


async def test_no_program_spreads_by_flow_hash() -> None:
    async with skmsg_tcp.open_reuseport_group(0, count=2) as rg:
        got: list[skmsg_tcp.SkListener] = []

        async def take(listener: skmsg_tcp.SkListener) -> None:
            while True:
                stream = await listener.accept()
                got.append(listener)
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            for listener in rg.listeners:
                nursery.start_soon(take, listener)
            clients = [await skmsg_tcp.open_tcp_stream("127.0.0.1", rg.port) for _ in range(20)]
            with trio.fail_after(5):
                while len(got) < 20:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        for c in clients:
            await c.aclose()
        assert set(got) == set(rg.listeners)  # both listeners got connections
