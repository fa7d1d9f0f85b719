"""``SkStream.send_file``: the kernel's sendpage on real sockets.

The SK_MSG program sees a message whose data window is empty until it pulls;
bytes it does not pull go out with ``sendfile(2)``, never read into Python;
pass, drop and redirect act on the file's bytes as on any send's.
"""

from __future__ import annotations

import errno
import os
import pathlib

import pytest
import trio

import skmsg_core as sk
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair
from tests.tls._ulp_helpers import enable_both, read_exactly

Pair = tuple[SkStream, SkStream]


@pytest.fixture
def data_file(tmp_path: pathlib.Path) -> tuple[pathlib.Path, bytes]:
    content = os.urandom(3 * sk.FILE_MSG_BYTES + 12345)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    return path, content


class Recorder:
    """An SK_MSG program that notes what it could see and pulls on request."""

    def __init__(self, pull: tuple[int, int] | None = None, verdict: object = None) -> None:
        self.windows: list[tuple[int, int]] = []  # (size, len(data)) before any pull
        self.pulled: list[bytes] = []
        self.pull = pull
        self.verdict = verdict

    def __call__(self, msg: sk.SkMsg) -> object:
        self.windows.append((msg.size, len(msg.data)))
        if self.pull is not None and sk.msg_pull_data(msg, *self.pull, 0) == 0:
            self.pulled.append(bytes(msg.data))
        return sk.SK_PASS if self.verdict is None else self.verdict


async def test_without_a_program_the_file_goes_whole(
    tcp_stream_pair: Pair, data_file: tuple[pathlib.Path, bytes]
) -> None:
    a, b = tcp_stream_pair
    path, content = data_file
    with path.open("rb") as f:
        async with trio.open_nursery() as n:
            n.start_soon(a.send_file, f)
            assert await read_exactly(b, len(content)) == content
        assert f.tell() == 0  # the file's own position is not used


async def test_the_window_is_empty_until_a_pull(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, data_file: tuple[pathlib.Path, bytes]
) -> None:
    a, b = tcp_stream_pair
    path, content = data_file
    prog = Recorder(pull=(0, 8))
    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with path.open("rb") as f:
        async with trio.open_nursery() as n:
            n.start_soon(a.send_file, f.fileno())
            got = await read_exactly(b, len(content))
    assert got == content
    # one message per FILE_MSG_BYTES of the file, each first seen with no window
    assert [size for size, _ in prog.windows] == [sk.FILE_MSG_BYTES] * 3 + [12345]
    assert {window for _, window in prog.windows} == {0}
    step = sk.FILE_MSG_BYTES
    assert prog.pulled == [content[i * step : i * step + 8] for i in range(4)]


async def test_unpulled_bytes_are_never_read_into_python(
    tcp_stream_pair: Pair,
    sockmap: sk.SockMap,
    data_file: tuple[pathlib.Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = tcp_stream_pair
    path, content = data_file
    reads: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, pos: int) -> bytes:
        reads.append(n)
        return real(fd, n, pos)

    monkeypatch.setattr(os, "pread", counting)
    sockmap.attach(Recorder(pull=(100, 104)), sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with path.open("rb") as f:
        async with trio.open_nursery() as n:
            n.start_soon(a.send_file, f, 0, None)
            assert await read_exactly(b, len(content)) == content
    # only the page that holds what the program pulled, in each message
    assert sum(reads) == 4 * 4096


async def test_offset_and_count(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, data_file: tuple[pathlib.Path, bytes]
) -> None:
    a, b = tcp_stream_pair
    path, content = data_file
    sockmap.attach(Recorder(), sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with path.open("rb") as f:
        assert await a.send_file(f, 1000, 5000) == 5000
        assert await read_exactly(b, 5000) == content[1000:6000]
        # past the end: what there is; at the end: nothing
        assert await a.send_file(f, len(content) - 10, 1000) == 10
        assert await read_exactly(b, 10) == content[-10:]
        assert await a.send_file(f, len(content) + 5) == 0


async def test_drop_fails_the_send_and_nothing_of_that_message_leaves(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, data_file: tuple[pathlib.Path, bytes]
) -> None:
    a, b = tcp_stream_pair
    path, content = data_file
    pulled: list[bytes] = []

    def drop_second(msg: sk.SkMsg) -> int:
        assert sk.msg_pull_data(msg, 0, 4, 0) == 0
        pulled.append(bytes(msg.data))
        return sk.SK_DROP if len(pulled) == 2 else sk.SK_PASS

    sockmap.attach(drop_second, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    received = bytearray()

    async def reader() -> None:
        while True:
            chunk = await b.receive_some()
            if not chunk:
                return
            received.extend(chunk)

    with path.open("rb") as f:
        async with trio.open_nursery() as n:
            n.start_soon(reader)
            with pytest.raises(PermissionError) as info:
                await a.send_file(f)
            assert info.value.errno == errno.EACCES
            assert info.value.accepted == sk.FILE_MSG_BYTES  # type: ignore[attr-defined]
            await a.send_eof()
    assert bytes(received) == content[: sk.FILE_MSG_BYTES]
    assert pulled == [content[0:4], content[sk.FILE_MSG_BYTES : sk.FILE_MSG_BYTES + 4]]


async def test_redirect_of_a_file_to_another_socket(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, data_file: tuple[pathlib.Path, bytes]
) -> None:
    a, _ = tcp_stream_pair
    c, d = await tcp_stream_pair_()
    path, content = data_file
    try:
        sockmap.update(1, c)
        sockmap.attach(lambda msg: sk.msg_redirect_map(msg, sockmap, 1, 0), sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        with path.open("rb") as f:
            async with trio.open_nursery() as n:
                n.start_soon(a.send_file, f)
                assert await read_exactly(d, len(content)) == content
    finally:
        await aclose_all([c, d])


async def tcp_stream_pair_() -> Pair:
    return await tcp_stream_pair()


async def test_tls_seals_the_file_through_the_record_verdicts(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, data_file: tuple[pathlib.Path, bytes]
) -> None:
    a, b = tcp_stream_pair
    path, content = data_file
    sizes: list[int] = []
    sockmap.attach(lambda msg: sizes.append(msg.size) or sk.SK_PASS, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    await enable_both(a, b)
    with path.open("rb") as f:
        async with trio.open_nursery() as n:
            n.start_soon(a.send_file, f)
            assert await read_exactly(b, len(content)) == content
    assert max(sizes) <= sk.TLS_MAX_PAYLOAD_SIZE and sum(sizes) == len(content)


async def test_bad_arguments(tcp_stream_pair: Pair, tmp_path: pathlib.Path) -> None:
    a, _ = tcp_stream_pair
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="regular file"):
            await a.send_file(r)
    finally:
        os.close(r)
        os.close(w)
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with path.open("rb") as f:
        with pytest.raises(ValueError, match="offset"):
            await a.send_file(f, -1)
        with pytest.raises(ValueError, match="count"):
            await a.send_file(f, 0, -5)


async def test_a_file_that_shrinks_under_the_send_fails_it_with_eio(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, tmp_path: pathlib.Path
) -> None:
    a, _ = tcp_stream_pair
    path = tmp_path / "shrinks"
    path.write_bytes(b"y" * 100_000)

    def shrink_then_pass(msg: sk.SkMsg) -> int:
        os.truncate(path, 10)
        return sk.SK_PASS

    sockmap.attach(shrink_then_pass, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with path.open("rb") as f, pytest.raises(OSError) as info:
        await a.send_file(f)
    assert info.value.errno == errno.EIO
