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
