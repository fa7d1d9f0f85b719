"""The runtime's own contract: its block, its current-ness, pump failures."""

from __future__ import annotations

import pytest
import trio

from skmsg_core.runtime import current_runtime, open_runtime


async def test_body_errors_come_out_unwrapped() -> None:
    with pytest.raises(KeyError, match="x"):
        async with open_runtime():
            raise KeyError("x")


async def test_current_runtime_is_scoped_to_the_block() -> None:
    assert current_runtime() is None
    async with open_runtime() as rt:
        assert current_runtime() is rt
    assert current_runtime() is None


async def test_runtime_task_failure_surfaces_as_a_group() -> None:
    async def boom() -> None:
        raise RuntimeError("runtime task failed")

    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="runtime task")):
        async with open_runtime() as rt:
            rt.nursery.start_soon(boom)
            await trio.sleep_forever()


async def test_outer_cancellation_passes_through() -> None:
    with trio.move_on_after(0.01) as scope:
        async with open_runtime():
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_processing_restarts_after_a_psock_went_without_restore() -> None:
    """With a table whose seam never restores, the pump outlives the psock; the
    next burst finds the psock gone and stops for good, so inserting the stream
    again starts receive processing afresh."""
    import skmsg_core as sk
    import skmsg_tcp
    from skmsg_tcp.testing import tcp_stream_pair

    class NeverRestores(skmsg_tcp.TcpProto):
        def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
            return 0 if restore else super().psock_update_sk_prot(s, psock, restore)

    async with open_runtime() as rt:
        a, b = await tcp_stream_pair()
        b.sk.sk_prot = NeverRestores()
        m = sk.SockMap(max_entries=1)
        seen: list[bytes] = []

        def verdict(skb: sk.SkBuff) -> int:
            seen.append(bytes(skb.data))
            return sk.SK_PASS

        m.attach(verdict, sk.SK_SKB_VERDICT)
        m.update(0, b)
        m.delete(0)  # the psock goes; the seam does not stop the pump
        assert b.sk.psock is None and rt.pumping(b)
        await a.send_all(b"1")
        with trio.fail_after(5):
            while rt.pumping(b):  # the burst finds no psock and stops the pump
                await trio.sleep(0.001)
            assert await b.receive_some(10) == b"1"  # a plain read: nothing was taken
        m.update(0, b)
        assert rt.pumping(b)
        await a.send_all(b"2")
        with trio.fail_after(5):
            assert await b.receive_some(10) == b"2"
        assert seen == [b"2"]
        await a.aclose()
        await b.aclose()


async def test_a_burst_waiting_on_a_full_target_stalls_no_other_socket() -> None:
    """Twenty sockets' bursts wait on targets whose readers do not read; a
    twenty-first socket's bytes still go through at once. When the targets are
    read, every byte arrives in order and the waiting bursts end."""
    import socket

    import skmsg_core as sk
    from skmsg_tcp.testing import tcp_stream_pair

    n, size = 20, 1 << 18
    async with open_runtime() as rt:
        sources = [await tcp_stream_pair() for _ in range(n + 1)]
        targets = [await tcp_stream_pair() for _ in range(n + 1)]
        out = sk.SockMap(max_entries=n + 1)
        into = sk.SockMap(max_entries=n + 1)
        for i, (t, reader) in enumerate(targets):
            t.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            out.update(i, t)
        index = {s.sk.cookie: i for i, (_, s) in enumerate(sources)}

        def verdict(skb: sk.SkBuff) -> int:
            assert skb.sk is not None
            return sk.sk_redirect_map(skb, out, index[skb.sk.cookie], 0)

        into.attach(verdict, sk.SK_SKB_VERDICT)
        for i, (_, s) in enumerate(sources):
            into.update(i, s)
        payload = [bytes([i]) * size for i in range(n + 1)]

        def bursts() -> int:
            return sum(t.name.endswith("._burst") for t in rt.nursery.child_tasks)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(sources[i][0].send_all, payload[i])
            with trio.fail_after(30):
                while bursts() < n:  # each of the twenty waits on its full target
                    await trio.sleep(0.01)
                await sources[n][0].send_all(b"through")
                got = b""
                while len(got) < len(b"through"):
                    got += await targets[n][1].receive_some()
            assert got == b"through"
            received = [bytearray() for _ in range(n)]

            async def drain(i: int) -> None:
                while len(received[i]) < size:
                    received[i] += await targets[i][1].receive_some(1 << 20)

            with trio.fail_after(60):
                for i in range(n):
                    nursery.start_soon(drain, i)
        assert all(bytes(r) == payload[i] for i, r in enumerate(received))
        assert rt.redirect_errors == 0
        with trio.fail_after(10):
            while bursts():
                await trio.sleep(0.01)
        for a, b in sources + targets:
            await a.aclose()
            await b.aclose()


async def test_a_short_read_ends_the_burst_and_what_comes_next_is_still_read() -> None:
    """A stream that declares ``short_read_drains`` is read once per burst when
    the read comes back short (no second read to find it empty); the re-armed
    watch sees the next bytes and the EOF all the same."""
    import skmsg_core as sk
    from skmsg_tcp.testing import tcp_stream_pair

    async with open_runtime():
        a, b = await tcp_stream_pair()
        assert type(b).short_read_drains is True
        reads: list[bytes | None] = []
        recv = b.transport_recv_nowait

        def counted(max_bytes: int) -> bytes | None:
            data = recv(max_bytes)
            reads.append(data)
            return data

        b.transport_recv_nowait = counted  # type: ignore[method-assign]
        m = sk.SockMap(max_entries=1)
        m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_VERDICT)
        m.update(0, b)
        with trio.fail_after(5):
            for word in (b"one", b"two"):
                await a.send_all(word)
                assert await b.receive_some(10) == word
            await a.send_eof()
            assert await b.receive_some(10) == b""
        assert reads == [b"one", b"two", b""]  # never a read that found nothing
        m.close()
        await a.aclose()
        await b.aclose()
