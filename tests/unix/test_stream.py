"""UnixStream, UnixListener, open_unix_stream and serve_unix: what a trio user expects,
with the kernel's errors, and the SK_MSG engine on a Unix stream."""

from __future__ import annotations

import errno
import os
import socket as stdsocket
from pathlib import Path

import pytest
import trio

import skmsg_core as sk
import skmsg_unix
from skmsg_core.runtime import Runtime

from ._support import TIMEOUT, aclose_all, receive_exactly


async def _echo(stream: skmsg_unix.UnixStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


@pytest.mark.parametrize("kind", ["path", "abstract"])
async def test_serve_unix_and_open_unix_stream(kind: str, tmp_path: Path) -> None:
    address: str | bytes = (
        str(tmp_path / "echo.sock") if kind == "path"
        else skmsg_unix.abstract(f"skmsg-test-{os.getpid()}")
    )
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(skmsg_unix.serve_unix, _echo, address)
        assert listeners[0].sk.state == sk.TcpState.LISTEN
        stream = await skmsg_unix.open_unix_stream(address)
        assert stream.getpeername() == address
        await stream.send_all(b"ping")
        assert await receive_exactly(stream, 4) == b"ping"
        await stream.aclose()
        nursery.cancel_scope.cancel()
    if kind == "path":
        assert not os.path.exists(address)  # the listener removed its path


async def test_a_path_that_exists_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.write_text("someone's file")
    with pytest.raises(OSError) as info:
        await skmsg_unix.open_unix_listeners(str(path))
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_text() == "someone's file"


async def test_the_listener_removes_only_its_own_path(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sock")
    [listener] = await skmsg_unix.open_unix_listeners(path, mode=0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.unlink(path)
    Path(path).write_text("replaced")  # someone else's file now
    await listener.aclose()
    await listener.aclose()  # idempotent
    assert Path(path).read_text() == "replaced"


@pytest.mark.parametrize(
    ("address", "exc", "err"),
    [
        (1234, TypeError, None),
        ("x" * 200, OSError, errno.EINVAL),
        ("/nonexistent-dir/skmsg.sock", OSError, errno.ENOENT),
        (b"\0skmsg-nobody-listens-here", OSError, errno.ECONNREFUSED),
    ],
    ids=["not-an-address", "too-long", "no-such-path", "nobody-listens"],
)
async def test_connect_errors_are_the_kernel_s(
    address: object, exc: type[Exception], err: int | None
) -> None:
    with pytest.raises(exc) as info:
        await skmsg_unix.open_unix_stream(address)  # type: ignore[arg-type]
    if err is not None:
        assert isinstance(info.value, OSError) and info.value.errno == err
    if exc is TypeError:
        assert "AF_UNIX address" in str(info.value)


def test_the_constructor_refuses_what_is_not_a_connected_unix_stream() -> None:
    with (
        stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM) as fresh,
        pytest.raises(ValueError, match="not connected"),
    ):
        skmsg_unix.UnixStream(fresh)
    with (
        stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM) as tcp,
        pytest.raises(ValueError, match="AF_UNIX SOCK_STREAM"),
    ):
        skmsg_unix.UnixStream(tcp)
    with pytest.raises(TypeError, match="socket object"):
        skmsg_unix.UnixStream(3)  # type: ignore[arg-type]


async def test_peer_credentials_and_addresses() -> None:
    a, b = await skmsg_unix.unix_stream_pair()
    assert a.getpeercred() == (os.getpid(), os.getuid(), os.getgid())
    assert (a.getsockname(), a.getpeername(), a.sk.local_addr, a.sk.remote_addr) == ("",) * 4
    assert a.sk.family == stdsocket.AF_UNIX and not a.sk.is_tcp
    await aclose_all(a, b)


async def test_sending_to_a_closed_peer_is_a_broken_stream() -> None:
    a, b = await skmsg_unix.unix_stream_pair()
    await b.aclose()
    with pytest.raises(trio.BrokenResourceError) as info:
        await a.send_all(b"anyone?")
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EPIPE
    await a.aclose()


# -- SK_MSG on a Unix stream: the TCP engine, beyond the kernel ------------------------------


async def test_an_sk_msg_drop_is_eacces_and_sticks_as_on_tcp() -> None:
    a, b = await skmsg_unix.unix_stream_pair()
    m = sk.SockMap(1)
    prog = m.attach(
        lambda msg: sk.SK_DROP if bytes(msg.data[:1]) == b"x" else sk.SK_PASS, sk.SK_MSG_VERDICT
    )
    m.update(0, a)
    await a.send_all(b"ok ")
    with pytest.raises(skmsg_unix.SendError) as info:
        await a.send_all(b"xy")
    assert info.value.errno == errno.EACCES and info.value.accepted == 0
    with pytest.raises(PermissionError):
        await a.send_all(b"fine")  # the DROP sticks (tcp_bpf_send_verdict)
    assert prog.run_cnt == 2
    m.delete(0)
    await a.send_all(b"after")
    assert await receive_exactly(b, 8) == b"ok after"
    m.close()
    await aclose_all(a, b)


async def test_apply_then_drop_returns_the_kernel_s_count() -> None:
    """As on TCP (checked live for TCP): pass 3 bytes, then drop: the peer
    gets 3, the send reports what ``sendmsg`` would have counted."""
    a, b = await skmsg_unix.unix_stream_pair()
    m = sk.SockMap(1)
    runs = []

    def prog(msg: sk.SkMsg) -> int:
        runs.append(msg.size)
        if len(runs) == 1:
            sk.msg_apply_bytes(msg, 3)
            return sk.SK_PASS
        return sk.SK_DROP

    m.attach(prog, sk.SK_MSG_VERDICT)
    m.update(0, a)
    with pytest.raises(skmsg_unix.SendError) as info:
        await a.send_all(b"0123456789")
    assert (info.value.accepted, info.value.sent) == (3, 7)
    assert await receive_exactly(b, 3) == b"012"
    assert runs == [10, 7]
    m.close()
    await aclose_all(a, b)


# -- receiving through a verdict -----------------------------------------------------------


async def test_bytes_a_verdict_passed_then_eof(rt: Runtime) -> None:
    """The peer sends, then half-closes: the reader gets every passed byte,
    then EOF (the kernel's Unix stream loses them on SHUT_WR:
    docs/kernel-differences.md)."""
    a, b = await skmsg_unix.unix_stream_pair()
    m = sk.SockMap(1)
    m.attach(lambda skb: sk.SK_PASS, sk.SK_SKB_STREAM_VERDICT)
    m.update(0, b)
    await a.send_all(b"half")
    await a.send_eof()
    assert await receive_exactly(b, 4) == b"half"
    with trio.fail_after(TIMEOUT):
        assert await b.receive_some() == b""
    await b.send_all(b"back")  # the other way is still open
    assert await receive_exactly(a, 4) == b"back"
    st = b.statistics()
    assert st.psock is not None and st.psock.rx_passed_bytes == 4 and st.bytes_received == 4
    m.close()
    await aclose_all(a, b)


async def test_a_dropped_message_never_reaches_the_reader(rt: Runtime) -> None:
    a, b = await skmsg_unix.unix_stream_pair()
    m = sk.SockMap(1)
    prog = m.attach(
        lambda skb: sk.SK_DROP if bytes(skb.data).startswith(b"secret") else sk.SK_PASS,
        sk.SK_SKB_VERDICT,
    )
    m.update(0, b)
    await a.send_all(b"secret plans")
    with trio.fail_after(TIMEOUT):
        while prog.run_cnt < 1:
            await trio.sleep(0.001)
    await a.send_all(b"public")
    assert await receive_exactly(b, 6) == b"public"
    m.close()
    await aclose_all(a, b)
