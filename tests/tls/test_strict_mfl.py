"""``max_fragment_length`` (RFC 6066 §4): a client that negotiates it (``openssl
s_client -maxfraglen``) gets records no larger than it from our server, and a
record larger than it is refused with ``record_overflow``; the hand-off reads
the limit from the ServerHello (TLS 1.2) or the EncryptedExtensions (TLS 1.3,
opened with the server's handshake secret)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import ssl
from pathlib import Path

import pytest
import trio

import skmsg_tls as tls
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair

from . import _openssl
from ._cli import connect, one_connection, receive_until, s_client, s_server
from ._peers import Pki, client_context, make_pki, server_context
from ._ulp_helpers import make_keys, read_records

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def record_lengths(msgfile: Path, direction: str) -> list[int]:
    """The lengths of the records ``-msg`` shows OpenSSL sent (``>>>``) or
    received (``<<<``): each RecordHeader line is followed by the header's
    hex bytes."""
    lines = msgfile.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.startswith(f"{direction} ") and "RecordHeader" in line and i + 1 < len(lines):
            header = bytes.fromhex(lines[i + 1].strip())
            out.append(int.from_bytes(header[3:5], "big"))
    return out


async def echo(stream: SkStream, n: int) -> bytes:
    """Echo what comes until ``n`` bytes came; return them."""
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
        await stream.send_all(chunk)
    return bytes(got)


@pytest.mark.parametrize("maxfraglen", [512, 1024, 4096])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_s_client_maxfraglen_is_honoured_both_ways(
    pki: Pki, tmp_path: Path, version: str, maxfraglen: int
) -> None:
    # lines of printable text, 3x the limit and more, so s_client both sends
    # several records and prints what comes back
    line = (hashlib.sha256(os.urandom(8)).hexdigest() * 200)[: maxfraglen * 3 + 77]
    payload = (line + "\n").encode()
    sctx = server_context(pki, VERSIONS[version], tickets=True)
    msgfile = tmp_path / "msg.txt"
    async with one_connection() as (port, accepted), s_client(
        pki, port, f"-tls{version.replace('.', '_')}", "-maxfraglen", str(maxfraglen),
        "-msg", "-msgfile", str(msgfile),
    ) as client:
        with trio.fail_after(15):
            stream = await accepted.receive()
            try:
                t = await tls.start_tls(stream, sctx, server_side=True)
                assert t.record_size_limit == maxfraglen
                await client.send(payload)
                assert await echo(stream, len(payload)) == payload
                await client.wait_for(f"^{line}$")  # s_client printed the echo
                await client.close_stdin()  # s_client: close_notify at end of input
                assert await stream.receive_some() == b""
                await client.wait()
            finally:
                await aclose_all([stream])
    out = client.output + msgfile.read_text()
    assert "record_overflow" not in out and "error" not in out.lower(), out
    overhead = 8 + 16 if version == "1.2" else 1 + 16  # explicit nonce / inner type, tag
    sent = record_lengths(msgfile, ">>>")
    received = record_lengths(msgfile, "<<<")
    # after the handshake every record is within the limit, both ways, and
    # the payload took several of them each way
    assert sum(1 for n in received if n == maxfraglen + overhead) >= 3
    assert sum(1 for n in sent if n == maxfraglen + overhead) >= 3
    assert max(received[-8:]) <= maxfraglen + overhead
    s = t.statistics()
    assert s.rx_bytes == s.tx_bytes == len(payload)
    assert s.rx_records >= 4 and s.tx_records >= 4


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_without_maxfraglen_records_are_full_size(
    pki: Pki, tmp_path: Path, version: str
) -> None:
    """The contrast: the same echo with no limit negotiated seals 16 KiB records."""
    line = ("z" * 40000) + "\n"
    sctx = server_context(pki, VERSIONS[version], tickets=False)
    msgfile = tmp_path / "msg.txt"
    async with one_connection() as (port, accepted), s_client(
        pki, port, f"-tls{version.replace('.', '_')}", "-msg", "-msgfile", str(msgfile)
    ) as client:
        with trio.fail_after(15):
            stream = await accepted.receive()
            try:
                t = await tls.start_tls(stream, sctx, server_side=True)
                assert t.record_size_limit == tls.TLS_MAX_PAYLOAD_SIZE
                await client.send(line.encode())
                await echo(stream, len(line))
                await client.close_stdin()
                assert await stream.receive_some() == b""
            finally:
                await aclose_all([stream])
    overhead = 8 + 16 if version == "1.2" else 1 + 16
    assert tls.TLS_MAX_PAYLOAD_SIZE + overhead in record_lengths(msgfile, "<<<")


async def test_a_record_over_the_limit_is_record_overflow(
    tcp_stream_pair: tuple[SkStream, SkStream],
) -> None:
    """Keys installed with a 512-byte limit: a 513-byte record from the peer
    fails receiving (``EMSGSIZE``) and is answered with the fatal
    ``record_overflow`` alert; sending ends."""
    a, b = tcp_stream_pair
    keys = make_keys()
    tb = await tls.enable_tls(
        b, keys.b2a, keys.a2b, tx_secret=keys.b2a_secret, rx_secret=keys.a2b_secret,
        record_size_limit=512,
    )
    sealer, opener = tls.RecordSealer(keys.a2b), tls.RecordOpener(keys.b2a)
    await a.send_all(sealer.seal(b"x" * 512) + sealer.seal(b"y" * 513))
    got = await b.receive_some()
    assert got == b"x" * 512
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    cause = info.value.__cause__
    assert isinstance(cause, tls.TlsRxError) and cause.errno == errno.EMSGSIZE
    assert "record size limit 512" in str(cause)
    assert await read_records(a, opener, 1) == [(21, b"\x02\x16")]  # fatal record_overflow
    with pytest.raises(trio.BrokenResourceError, match="record_overflow"):
        await b.send_all(b"more")
    assert tb.statistics().rx_bytes == 512


async def test_sending_with_a_limit_cuts_records_at_it() -> None:
    a, b = await tcp_stream_pair()
    try:
        keys = make_keys(tls.TLS_1_2_VERSION)
        ta = await tls.enable_tls(a, keys.a2b, keys.b2a, record_size_limit=1024)
        opener = tls.RecordOpener(keys.a2b)
        await a.send_all(b"q" * 5000)
        recs = await read_records(b, opener, 5)
        assert [len(d) for _, d in recs] == [1024] * 4 + [904]
        with pytest.raises(ValueError, match="negotiated record size limit"):
            await ta.send_control(tls.TLS_RECORD_TYPE_HANDSHAKE, bytes(1025))
        with pytest.raises(ValueError, match="64"):
            await tls.enable_tls(b, keys.b2a, keys.a2b, record_size_limit=10)
    finally:
        await aclose_all([a, b])


@pytest.mark.parametrize("program", ["pass", "apply", "push"])
async def test_an_sk_msg_program_sees_records_cut_at_the_limit(program: str) -> None:
    """Under an SK_MSG program the verdict unit is the record, at most the
    negotiated limit: the bulk path, the engine (apply splits), and a push
    that grows a record past the limit (sealed as more records)."""
    import skmsg_core as sk

    a, b = await tcp_stream_pair()
    m = sk.SockMap(1)
    sizes: list[int] = []

    def prog(msg: sk.SkMsg) -> int:
        sizes.append(msg.size)
        if program == "apply":
            sk.msg_apply_bytes(msg, 300)
        elif program == "push":
            sk.msg_push_data(msg, 0, 10, 0)
        return sk.SK_PASS

    try:
        m.attach(prog, sk.SK_MSG_VERDICT)
        m.update(0, a)
        keys = make_keys(tls.TLS_1_2_VERSION)
        await tls.enable_tls(a, keys.a2b, keys.b2a, record_size_limit=1024)
        opener = tls.RecordOpener(keys.a2b)
        data = os.urandom(5000)
        await a.send_all(data)
        # 5 records of at most 1024 bytes; apply cuts each into 300-byte ones;
        # a push of 10 makes the four full ones 1034 bytes: 1024 + 10 each
        want = {"pass": 5, "apply": 4 * 4 + 4, "push": 4 * 2 + 1}[program]
        with trio.fail_after(10):
            recs = await read_records(b, opener, want)
        assert max(len(d) for _, d in recs) <= 1024
        assert max(sizes) <= 1024
        plain = b"".join(d for _, d in recs)
        if program == "push":
            chunks = [data[i : i + 1024] for i in range(0, len(data), 1024)]
            assert plain == b"".join(bytes(10) + c for c in chunks)
        else:
            assert plain == data
    finally:
        await aclose_all([a, b])
        m.close()


_set_max_fragment_length = _openssl._lib.SSL_CTX_set_tlsext_max_fragment_length
_set_max_fragment_length.argtypes = [ctypes.c_void_p, ctypes.c_uint8]
_set_max_fragment_length.restype = ctypes.c_int


def ask_max_fragment_length(ctx: ssl.SSLContext, size: int) -> None:
    """``SSL_CTX_set_tlsext_max_fragment_length``: the client offers it (Python's
    ``ssl`` has no API for it)."""
    mode = {512: 1, 1024: 2, 2048: 3, 4096: 4}[size]
    ptr = ctypes.c_void_p.from_address(id(ctx) + _openssl._HEAD).value
    assert _set_max_fragment_length(ptr, mode) == 1


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_our_client_asking_for_maxfraglen_from_s_server(
    pki: Pki, tmp_path: Path, version: str
) -> None:
    """The client side of the hand-off reads the limit from what the server
    sent (the ServerHello, or the EncryptedExtensions it opens)."""
    ctx = client_context(pki, VERSIONS[version])
    ask_max_fragment_length(ctx, 1024)
    up = b"u" * 5000 + b"\n"
    down = b"d" * 3000 + b"\n"
    msgfile = tmp_path / "msg.txt"
    async with s_server(
        pki, f"-tls{version.replace('.', '_')}", "-msg", "-msgfile", str(msgfile)
    ) as (server, port):
        stream = await connect(port)
        try:
            with trio.fail_after(10):
                t = await tls.start_tls(stream, ctx, server_hostname="localhost")
                assert t.record_size_limit == 1024
                await stream.send_all(up)
                await server.wait_for(f"^{up.decode().strip()}$")
                await server.send(down)
                assert await receive_until(stream, down) == down
                await stream.send_eof()
                assert await stream.receive_some() == b""
                await server.wait()
        finally:
            await aclose_all([stream])
    overhead = 8 + 16 if version == "1.2" else 1 + 16
    got = record_lengths(msgfile, "<<<")
    sent = record_lengths(msgfile, ">>>")
    # 5001 bytes up: 4 full records and 905 bytes; 3001 down: 2 and 953
    assert got.count(1024 + overhead) == 4 and 905 + overhead in got
    assert sent.count(1024 + overhead) == 2 and 953 + overhead in sent
    assert "record_overflow" not in server.output + msgfile.read_text()
