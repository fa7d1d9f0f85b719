"""The TLS ULP's RX side on real loopback: records opened, the verdict per
record, control records, close_notify, KeyUpdate, and bad records (nothing of a
bad record released), with and without a receive pump."""

from __future__ import annotations

import errno
from typing import Any

import pytest
import trio
import trio.testing

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_tcp import SkStream

from ._ulp_helpers import make_keys, read_exactly, read_records

Pair = tuple[SkStream, SkStream]


async def raw_to_tls(b: SkStream) -> tuple[tls.TlsSocket, tls.RecordSealer, tls.RecordOpener]:
    """TLS on ``b`` only; the test seals what the raw peer sends (and opens replies)."""
    keys = make_keys()
    tb = await tls.enable_tls(
        b, keys.b2a, keys.a2b, tx_secret=keys.b2a_secret, rx_secret=keys.a2b_secret
    )
    return tb, tls.RecordSealer(keys.a2b), tls.RecordOpener(keys.b2a)


def pump_verdict(smap: sk.SockMap, stream: SkStream, prog: object) -> None:
    smap.attach(prog, sk.SK_SKB_STREAM_VERDICT)
    smap.update(0, stream)


@pytest.fixture(params=["no-program", "verdict"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def setup(
    mode: str, pair: Pair, smap: sk.SockMap
) -> tuple[tls.TlsSocket, tls.RecordSealer, tls.RecordOpener]:
    _, b = pair
    if mode == "verdict":
        pump_verdict(smap, b, lambda skb: sk.SK_PASS)
    return await raw_to_tls(b)


async def test_verdict_runs_once_per_record_and_drops_whole_records(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    seen: list[bytes] = []

    def verdict(skb: sk.SkBuff) -> int:
        seen.append(bytes(skb.data))
        return sk.SK_DROP if b"forbidden" in bytes(skb.data) else sk.SK_PASS

    parser_runs: list[int] = []

    def parser(skb: sk.SkBuff) -> int:
        parser_runs.append(skb.len)
        return skb.len

    sockmap.attach(parser, sk.SK_SKB_STREAM_PARSER)
    pump_verdict(sockmap, b, verdict)
    tb, sealer, _ = await raw_to_tls(b)
    wire = b"".join(sealer.seal(p) for p in (b"one ", b"a forbidden one ", b"two"))
    await a.send_all(wire)
    assert await read_exactly(b, 7) == b"one two"
    assert seen == [b"one ", b"a forbidden one ", b"two"]
    assert parser_runs == []  # kTLS frames the records itself: no parser program
    stats = tb.statistics()
    assert (stats.rx_records, stats.rx_bytes) == (3, 23)
    assert b.sk.psock is not None and b.sk.psock.rx_dropped_bytes == 16


async def test_records_split_anywhere_on_the_wire(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    _, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    wire = b"".join(sealer.seal(bytes([i]) * (i * 100 + 1)) for i in range(1, 6))
    for i in range(0, len(wire), 7):
        await a.send_all(wire[i : i + 7])
    want = b"".join(bytes([i]) * (i * 100 + 1) for i in range(1, 6))
    assert await read_exactly(b, len(want)) == want


@pytest.mark.parametrize("where", ["header", "body", "tag"])
async def test_a_flipped_bit_is_ebadmsg_and_nothing_of_it_is_released(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str, where: str
) -> None:
    a, b = tcp_stream_pair
    tb, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    before = tls.tls_stat()["TlsDecryptError"]
    good = sealer.seal(b"good bytes")
    bad = bytearray(sealer.seal(b"EVIL" * 100))
    bad[{"header": 4, "body": 50, "tag": -1}[where]] ^= 0x01
    await a.send_all(good + bytes(bad) + sealer.seal(b"after"))
    assert await read_exactly(b, 10) == b"good bytes"
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    cause = info.value.__cause__
    assert isinstance(cause, OSError)
    # a changed length is a framing error; everything else fails authentication
    allowed = (errno.EBADMSG, errno.EMSGSIZE) if where == "header" else (errno.EBADMSG,)
    assert cause.errno in allowed
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()  # the stream stays in error
    if cause.errno == errno.EBADMSG:
        assert tls.tls_stat()["TlsDecryptError"] == before + 1
        assert tb.statistics().decrypt_errors == 1
    assert tb.statistics().rx_bytes == 10


async def test_oversized_and_bad_version_records_are_clear_errors(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    await setup(mode, tcp_stream_pair, sockmap)
    await a.send_all(b"\x17\x03\x03\x50\x00" + b"\0" * 100)  # 20480 > 2^14 + 256
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EMSGSIZE
    assert "exceeds" in str(info.value)


async def test_bad_version_is_einval(tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str) -> None:
    a, b = tcp_stream_pair
    await setup(mode, tcp_stream_pair, sockmap)
    await a.send_all(b"\x17\x03\x01\x00\x20" + b"\0" * 32)
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EINVAL


async def test_close_notify_is_eof_and_later_records_are_ignored(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    tb, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    await a.send_all(
        sealer.seal(b"last words")
        + sealer.seal(b"\x01\x00", tls.TLS_RECORD_TYPE_ALERT)
        + sealer.seal(b"ignored")
    )
    assert await read_exactly(b, 10) == b"last words"
    assert await b.receive_some() == b""
    assert await b.receive_some() == b""
    assert await tb.receive_control() == tls.ControlRecord(21, b"\x01\x00")
    with pytest.raises(trio.EndOfChannel):
        await tb.receive_control()
    # bytes still read after the end go nowhere: not into the opener's buffer
    held = tb._ulp.rx.opener.buffered  # what came after close_notify in its read
    await a.send_all(sealer.seal(b"more ignored"))
    assert b._raw is not None
    with trio.fail_after(5):
        while True:
            try:
                if tb._ulp.rx_fill(b._raw.recv_into, 65536):
                    break
            except BlockingIOError:
                await trio.sleep(0.01)
    assert tb._ulp.rx.opener.buffered == held
    assert await b.receive_some() == b""


async def test_a_fatal_alert_fails_the_stream_after_the_data_before_it(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    tb, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    await a.send_all(sealer.seal(b"data") + sealer.seal(b"\x02\x50", tls.TLS_RECORD_TYPE_ALERT))
    assert await read_exactly(b, 4) == b"data"
    with pytest.raises(trio.BrokenResourceError, match="internal_error") as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.ECONNRESET
    assert tb.receive_control_nowait() == tls.ControlRecord(21, b"\x02\x50")


async def test_control_records_are_readable_and_do_not_disturb_data(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    tb, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    ticket = b"\x04\x00\x00\x04abcd"  # a NewSessionTicket-shaped handshake message
    await a.send_all(
        sealer.seal(b"he")
        + sealer.seal(ticket, tls.TLS_RECORD_TYPE_HANDSHAKE)
        + sealer.seal(b"llo")
    )
    assert await read_exactly(b, 5) == b"hello"
    rec = await tb.receive_control()
    assert (rec.content_type, rec.data) == (tls.TLS_RECORD_TYPE_HANDSHAKE, ticket)
    with pytest.raises(trio.WouldBlock):
        tb.receive_control_nowait()


async def test_receive_control_reads_the_socket_itself_without_a_pump(
    tcp_stream_pair: Pair,
) -> None:
    a, b = tcp_stream_pair
    tb, sealer, _ = await raw_to_tls(b)
    await a.send_all(sealer.seal(b"data first") + sealer.seal(b"\x01\x5a", 21))
    assert await tb.receive_control() == tls.ControlRecord(21, b"\x01\x5a")
    assert await b.receive_some() == b"data first"  # kept for receive_some


async def test_send_control_and_bad_types(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    tb, _, opener = await raw_to_tls(b)
    await b.send_all(b"open", more=True)
    await tb.send_control(tls.TLS_RECORD_TYPE_ALERT, b"\x01\x5a")
    recs = await read_records(a, opener, 2)
    assert recs == [(23, b"open"), (21, b"\x01\x5a")]  # the open record went first
    with pytest.raises(ValueError, match="send_all"):
        await tb.send_control(tls.TLS_RECORD_TYPE_DATA, b"x")
    with pytest.raises(ValueError, match="exceed"):
        await tb.send_control(tls.TLS_RECORD_TYPE_HANDSHAKE, bytes(16385))
    assert tb.statistics().tx_control_records == 1


async def test_eof_inside_a_record_is_an_error(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    await setup(mode, tcp_stream_pair, sockmap)
    await a.send_all(b"\x17\x03\x03\x00\x40" + b"\0" * 10)
    await a.send_eof()
    with pytest.raises(trio.BrokenResourceError, match="inside a record"):
        await b.receive_some()


async def test_peer_key_update_requested_is_answered_before_our_next_record(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    keys = make_keys()
    if mode == "verdict":
        pump_verdict(sockmap, b, lambda skb: sk.SK_PASS)
    tb = await tls.enable_tls(
        b, keys.b2a, keys.a2b, tx_secret=keys.b2a_secret, rx_secret=keys.a2b_secret
    )
    sealer, opener = tls.RecordSealer(keys.a2b), tls.RecordOpener(keys.b2a)
    wire = sealer.seal(tls.key_update_message(True), tls.TLS_RECORD_TYPE_HANDSHAKE)
    assert keys.a2b_secret is not None and keys.b2a_secret is not None
    next_a2b = tls.tls13_next_secret(keys.a2b_secret, keys.a2b.cipher_type)
    sealer.rekey(tls.tls13_crypto_info(next_a2b, keys.a2b.cipher_type))
    await a.send_all(wire + sealer.seal(b"under the new key"))
    assert await read_exactly(b, 17) == b"under the new key"
    await b.send_all(b"reply")
    ku, = await read_records(a, opener, 1)
    assert ku == (tls.TLS_RECORD_TYPE_HANDSHAKE, tls.key_update_message(False))
    next_b2a = tls.tls13_next_secret(keys.b2a_secret, keys.b2a.cipher_type)
    opener.rekey(tls.tls13_crypto_info(next_b2a, keys.b2a.cipher_type))
    assert await read_records(a, opener, 1) == [(23, b"reply")]
    s = tb.statistics()
    assert (s.rx_rekeys, s.tx_rekeys, s.rx_key_updates_received) == (1, 1, 1)


async def test_a_key_update_not_ending_its_record_is_eproto(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    a, b = tcp_stream_pair
    _, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    msg = tls.key_update_message(False) + b"\x04\x00\x00\x00"
    await a.send_all(sealer.seal(msg, tls.TLS_RECORD_TYPE_HANDSHAKE))
    with pytest.raises(trio.BrokenResourceError, match="KeyUpdate") as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EPROTO


async def test_key_update_is_refused_on_tls12(tcp_stream_pair: Pair) -> None:
    a, _ = tcp_stream_pair
    keys = make_keys(tls.TLS_1_2_VERSION)
    ta = await tls.enable_tls(a, keys.a2b, keys.b2a)
    with pytest.raises(OSError, match=r"TLS 1\.3") as info:
        await ta.update_keys()
    assert info.value.errno == errno.EINVAL


async def test_strparser_option_frames_the_plaintext_into_messages(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    seen: list[bytes] = []

    def verdict(skb: sk.SkBuff) -> int:
        seen.append(bytes(skb.data))
        return sk.SK_PASS

    sockmap.attach(sk.LengthPrefixParser(1), sk.SK_SKB_STREAM_PARSER)
    pump_verdict(sockmap, b, verdict)
    keys = make_keys()
    await tls.enable_tls(b, keys.b2a, keys.a2b, strparser=True)
    sealer = tls.RecordSealer(keys.a2b)
    # three messages over two records, the second message cut between them
    await a.send_all(sealer.seal(b"\x02hi\x05wor") + sealer.seal(b"ld\x01!"))
    assert await read_exactly(b, 11) == b"\x02hi\x05world\x01!"
    assert seen == [b"\x02hi", b"\x05world", b"\x01!"]


async def test_receive_verdict_redirects_plaintext_out_of_another_socket(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    from skmsg_core.testing import aclose_all
    from skmsg_tcp.testing import tcp_stream_pair

    a, b = await tcp_stream_pair()
    c, c_peer = await tcp_stream_pair()
    try:
        sockmap.update(1, c)  # plain TCP: the decrypted bytes leave in clear

        def verdict(skb: sk.SkBuff) -> int:
            return sk.sk_redirect_map(skb, sockmap, 1, 0)

        sockmap.attach(verdict, sk.SK_SKB_STREAM_VERDICT)
        sockmap.update(0, b)
        _, sealer, _ = await raw_to_tls(b)
        await a.send_all(sealer.seal(b"decrypted, then ") + sealer.seal(b"redirected"))
        a_done = trio.Event()

        async def reader() -> None:  # as kTLS: the verdict runs when b is read
            with trio.move_on_after(10):
                await b.receive_some()
            a_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await read_exactly(c_peer, 26) == b"decrypted, then redirected"
            nursery.cancel_scope.cancel()
        assert b.sk.psock is not None and b.sk.psock.rx_redirected_bytes == 26
    finally:
        await aclose_all((a, b, c, c_peer))


async def test_bytes_redirected_into_a_tls_socket_with_ingress_are_read_as_plaintext(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    from skmsg_core.testing import aclose_all
    from skmsg_tcp.testing import tcp_stream_pair

    a, b = await tcp_stream_pair()
    x, _x_peer = await tcp_stream_pair()
    try:
        sockmap.update(1, b)

        def egress(msg: sk.SkMsg) -> int:
            return sk.msg_redirect_map(msg, sockmap, 1, sk.BPF_F_INGRESS)

        sockmap.attach(egress, sk.SK_MSG_VERDICT)
        sockmap.update(0, x)
        _, sealer, _ = await raw_to_tls(b)
        await x.send_all(b"from x, into b's receive queue")
        assert await read_exactly(b, 30) == b"from x, into b's receive queue"
        await a.send_all(sealer.seal(b"and a record"))
        assert await read_exactly(b, 12) == b"and a record"
    finally:
        await aclose_all((a, b, x, _x_peer))


async def test_receive_control_stops_reading_while_much_data_waits(tcp_stream_pair: Pair) -> None:
    from trio.testing import wait_all_tasks_blocked

    from skmsg_tls._ulp import PLAIN_LIMIT

    a, b = tcp_stream_pair
    tb, sealer, _ = await raw_to_tls(b)
    data = bytes(range(256)) * (PLAIN_LIMIT * 2 // 256)
    wire = b"".join(sealer.seal(data[i : i + 16384]) for i in range(0, len(data), 16384))
    wire += sealer.seal(b"\x01\x5a", tls.TLS_RECORD_TYPE_ALERT)
    got: list[tls.ControlRecord] = []

    async def control() -> None:
        got.append(await tb.receive_control())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, wire)
        nursery.start_soon(control)
        await wait_all_tasks_blocked(0.05)
        assert got == []  # the alert sits behind data nobody has read
        assert PLAIN_LIMIT <= tb._ulp.plain_bytes < len(data)  # bounded: it stopped reading
        assert await read_exactly(b, len(data)) == data
    assert got == [tls.ControlRecord(21, b"\x01\x5a")]


async def test_a_short_read_is_not_followed_by_a_read_that_finds_nothing(
    tcp_stream_pair: Pair, sockmap: sk.SockMap, mode: str
) -> None:
    """The reader hands the ULP what one read brought. A read shorter than
    asked took all the socket had: when it gave no plaintext (half a record
    here), the reader waits for more instead of asking the socket again only
    to hear EAGAIN."""
    a, b = tcp_stream_pair
    _, sealer, _ = await setup(mode, tcp_stream_pair, sockmap)
    ulp = b._ulp
    assert ulp is not None
    outcomes: list[int | str] = []
    fill = ulp.rx_fill

    def counted(recv_into: Any, max_bytes: int) -> int:
        try:
            n = fill(recv_into, max_bytes)
        except BlockingIOError:
            outcomes.append("EAGAIN")
            raise
        outcomes.append(n)
        return n

    ulp.rx_fill = counted  # type: ignore[method-assign]
    record = sealer.seal(b"x" * 1000)
    await a.send_all(record[:500])
    got: list[bytes] = []

    async def reader() -> None:
        got.append(await read_exactly(b, 1000))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # the first half read, no plaintext
        await a.send_all(record[500:])
    assert got == [b"x" * 1000]
    assert outcomes == [500, len(record) - 500]  # never a read that found nothing
