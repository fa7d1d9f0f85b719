"""The TLS ULP's TX side on real loopback: the verdict per record, apply, cork,
drop, redirect, and the records on the wire (opened by the codec on a raw peer)."""

from __future__ import annotations

import errno
import os

import pytest
import trio

import skmsg_core as sk
import skmsg_tls as tls
from skmsg_tcp import SendError, SkStream

from ._ulp_helpers import enable_both, make_keys, read_exactly, read_records

Pair = tuple[SkStream, SkStream]


async def tls_to_raw(a: SkStream) -> tuple[tls.TlsSocket, tls.RecordOpener]:
    """TLS on ``a`` only; the test opens what it sends with its own opener."""
    keys = make_keys()
    ta = await tls.enable_tls(a, keys.a2b, keys.b2a)
    return ta, tls.RecordOpener(keys.a2b)


async def sizes_seen(sockmap: sk.SockMap, a: SkStream) -> tuple[list[int], tls.RecordOpener]:
    """A pass program on ``a`` that notes each record's size (it never looks
    at the bytes), then TLS on ``a`` as :func:`tls_to_raw`."""
    seen: list[int] = []

    def prog(msg: sk.SkMsg) -> int:
        seen.append(msg.size)
        return sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    _, opener = await tls_to_raw(a)
    return seen, opener


def recording(sizes: list[bytes], verdict: object = sk.SK_PASS):
    def prog(msg: sk.SkMsg) -> object:
        sizes.append(bytes(msg.data))
        return verdict

    return prog


async def test_no_program_records_are_whole_sends_cut_at_16k(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    _, opener = await tls_to_raw(a)
    await a.send_all(b"x" * 40000)
    await a.send_all(b"tail")
    recs = await read_records(b, opener, 4)
    assert [len(p) for _, p in recs] == [16384, 16384, 7232, 4]
    assert {t for t, _ in recs} == {tls.TLS_RECORD_TYPE_DATA}


async def test_more_holds_the_open_record_until_a_send_without_it(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    _, opener = await tls_to_raw(a)
    await a.send_all(b"GET ", more=True)
    await a.send_all(b"/ HTTP/1.1\r\n", more=True)
    assert a.statistics().ulp.open_record_bytes == 16
    await a.send_all(b"\r\n")
    [(_, plain)] = await read_records(b, opener, 1)
    assert plain == b"GET / HTTP/1.1\r\n\r\n"
    assert a.statistics().ulp.tx_records == 1


async def test_verdict_runs_once_per_record_on_plaintext(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    seen, opener = await sizes_seen(sockmap, a)
    data = os.urandom(40000)
    await a.send_all(data)
    await a.send_all(b"one", more=True)
    await a.send_all(b"two")
    recs = await read_records(b, opener, 4)
    assert seen == [16384, 16384, 7232, 6]  # more=True sends form one verdict unit
    assert b"".join(p for _, p in recs) == data + b"onetwo"


async def test_program_writes_reach_the_wire_never_the_senders_buffer(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """Whole records are sealed from the sender's bytes when the program does
    not look at them, from the record's own copy when it does: a write to
    ``data`` is sent and the sender's buffer is untouched; nothing keeps the
    sender's buffer after send_all (it can be resized)."""
    a, b = tcp_stream_pair

    def prog(msg: sk.SkMsg) -> int:
        if msg.size == 16384 and msg.sk_redir is None and msg.apply_bytes == 0:
            if len(seen) % 2:  # every other record: look, and write
                msg.data[0:4] = b"SEEN"
            seen.append(msg.size)
        return sk.SK_PASS

    seen: list[int] = []
    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    _, opener = await tls_to_raw(a)
    data = bytearray(os.urandom(4 * 16384))
    before = bytes(data)
    await a.send_all(data)
    assert data == before
    data.extend(b"!")  # no export of the sender's buffer is left
    recs = await read_records(b, opener, 4)
    want = [before[i : i + 16384] for i in range(0, len(before), 16384)]
    want[1] = b"SEEN" + want[1][4:]
    want[3] = b"SEEN" + want[3][4:]
    assert [p for _, p in recs] == want
    assert seen == [16384] * 4


async def test_drop_is_eacces_with_accepted_bytes(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair

    def prog(msg: sk.SkMsg) -> int:
        return sk.SK_DROP if b"SECRET" in bytes(msg.data) else sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    _, opener = await tls_to_raw(a)
    await a.send_all(b"hello")
    payload = b"a" * 16384 + b"SECRET plans"
    with pytest.raises(SendError) as info:
        await a.send_all(payload)
    assert info.value.errno == errno.EACCES
    assert info.value.accepted == 16384  # the first record passed, the second dropped
    recs = await read_records(b, opener, 2)
    assert [p for _, p in recs] == [b"hello", b"a" * 16384]
    assert a.statistics().ulp.open_record_bytes == 0
    assert a.sk.psock is not None and a.sk.psock.tx_dropped_bytes == 12


async def test_apply_bytes_splits_the_record_and_reruns_on_the_rest(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    runs: list[bytes] = []

    def prog(msg: sk.SkMsg) -> int:
        runs.append(bytes(msg.data))
        if bytes(msg.data).startswith(b"HDR:"):
            sk.msg_apply_bytes(msg, 4)
        return sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    _, opener = await tls_to_raw(a)
    await a.send_all(b"HDR:body bytes")
    recs = await read_records(b, opener, 2)
    assert [p for _, p in recs] == [b"HDR:", b"body bytes"]
    assert runs == [b"HDR:body bytes", b"body bytes"]


async def test_cork_holds_the_record_until_the_bytes_come(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    a, b = tcp_stream_pair
    runs: list[int] = []

    def prog(msg: sk.SkMsg) -> int:
        runs.append(msg.size)
        if msg.size < 10:
            sk.msg_cork_bytes(msg, 10)
        return sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    ta, opener = await tls_to_raw(a)
    await a.send_all(b"12345")  # corked: the send succeeds, nothing on the wire
    assert ta.statistics().open_record_bytes == 5
    assert ta.statistics().tx_records == 0
    await a.send_all(b"67890")
    [(_, plain)] = await read_records(b, opener, 1)
    assert plain == b"1234567890"
    assert runs == [5, 10]  # the program saw the whole corked record


async def test_redirect_hands_plaintext_to_the_targets_own_tls(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    from skmsg_core.testing import aclose_all
    from skmsg_tcp.testing import tcp_stream_pair

    a, a_peer = await tcp_stream_pair()
    c, c_peer = await tcp_stream_pair()
    try:
        sockmap.update(1, c)

        def prog(msg: sk.SkMsg) -> int:
            return sk.msg_redirect_map(msg, sockmap, 1, 0)

        sockmap.attach(prog, sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        ka, kc = make_keys(), make_keys(cipher=tls.TLS_CIPHER_CHACHA20_POLY1305)
        await tls.enable_tls(a, ka.a2b, ka.b2a)
        tc = await tls.enable_tls(c, kc.a2b, kc.b2a)
        await a.send_all(b"to c, sealed with c's keys")
        [(_, plain)] = await read_records(c_peer, tls.RecordOpener(kc.a2b), 1)
        assert plain == b"to c, sealed with c's keys"
        assert tc.statistics().tx_records == 1
        assert a.statistics().bytes_sent == 0  # nothing left a's own connection
    finally:
        await aclose_all((a, a_peer, c, c_peer))


async def test_send_all_empty_closes_an_open_record(tcp_stream_pair: Pair) -> None:
    a, b = tcp_stream_pair
    _, opener = await tls_to_raw(a)
    await a.send_all(b"held", more=True)
    await a.send_all(b"")
    [(_, plain)] = await read_records(b, opener, 1)
    assert plain == b"held"


@pytest.mark.parametrize(
    ("version", "cipher"),
    [
        (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_128),
        (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_256),
        (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_CHACHA20_POLY1305),
        (tls.TLS_1_2_VERSION, tls.TLS_CIPHER_AES_GCM_128),
        (tls.TLS_1_2_VERSION, tls.TLS_CIPHER_AES_GCM_256),
        (tls.TLS_1_2_VERSION, tls.TLS_CIPHER_CHACHA20_POLY1305),
    ],
)
async def test_both_ways_every_cipher(tcp_stream_pair: Pair, version: int, cipher: int) -> None:
    a, b = tcp_stream_pair
    await enable_both(a, b, make_keys(version, cipher))
    data = os.urandom(100_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, data)
        assert await read_exactly(b, len(data)) == data
    await b.send_all(b"back")
    assert await read_exactly(a, 4) == b"back"


async def test_counters_of_the_bulk_path_and_of_a_send_it_hands_back(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """Whole records that all pass are sealed without iterating the send engine
    (TlsSendOp.take_whole); the counters must come out as if it had iterated,
    and a send where one record is not passed whole (here a DROP of the third)
    must carry on exactly where the bulk path stopped."""
    a, b = tcp_stream_pair
    drop_third = False
    runs = 0

    def prog(msg: sk.SkMsg) -> int:
        nonlocal runs
        runs += 1
        return sk.SK_DROP if drop_third and runs == 3 else sk.SK_PASS

    sockmap.attach(prog, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    _, opener = await tls_to_raw(a)
    psock = a.sk.psock
    assert psock is not None
    program = sockmap.progs["msg_parser"]
    assert program is not None
    data = os.urandom(40000)
    await a.send_all(data)  # 16384 + 16384 + 7232, all passed whole
    st = psock.statistics()
    assert (st.tx_msgs, st.tx_passed_bytes, st.tx_dropped_bytes) == (3, 40000, 0)
    ps = program.statistics()
    assert (ps.run_cnt, ps.passed, ps.dropped) == (3, 3, 0)
    assert [p for _, p in await read_records(b, opener, 3)] == [
        data[:16384],
        data[16384:32768],
        data[32768:],
    ]

    drop_third, runs = True, 0
    with pytest.raises(SendError) as info:
        await a.send_all(data)
    assert info.value.errno == errno.EACCES
    assert info.value.accepted == 32768  # the two records before the dropped one
    st = psock.statistics()
    assert (st.tx_msgs, st.tx_passed_bytes, st.tx_dropped_bytes) == (6, 40000 + 32768, 7232)
    ps = program.statistics()
    assert (ps.run_cnt, ps.passed, ps.dropped) == (6, 5, 1)
    assert [p for _, p in await read_records(b, opener, 2)] == [data[:16384], data[16384:32768]]


async def test_a_bulk_send_with_more_leaves_its_tail_open_for_the_next(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """The bulk path passes the full records of a ``more=True`` send and hands
    the engine the rest, which opens a record the next send completes: one
    verdict per record, counted once each."""
    a, b = tcp_stream_pair
    seen, opener = await sizes_seen(sockmap, a)
    data = os.urandom(40000)
    await a.send_all(data, more=True)
    assert seen == [16384, 16384] and a.statistics().ulp.open_record_bytes == 7232
    await a.send_all(b"end")
    assert seen == [16384, 16384, 7235]
    recs = await read_records(b, opener, 3)
    assert b"".join(p for _, p in recs) == data + b"end"
    psock = a.sk.psock
    assert psock is not None
    st = psock.statistics()
    assert (st.tx_msgs, st.tx_passed_bytes) == (3, 40003)


async def test_sends_waiting_on_full_sockets_at_once_each_seal_their_own_bytes(
    skmsg_runtime: object,
) -> None:
    """Sealing buffers are shared by the process's TLS sockets and held across
    a write that waits: three connections whose peers do not read yet (every
    socket buffer fills, every write waits), some sends below a pass program,
    each still delivers exactly its own bytes once its peer reads."""
    from skmsg_core.testing import aclose_all
    from skmsg_tcp.testing import tcp_stream_pair

    pairs = [await tcp_stream_pair() for _ in range(3)]
    smap = sk.SockMap(max_entries=2)
    smap.attach(lambda msg: sk.SK_PASS, sk.SK_MSG_VERDICT)
    smap.update(0, pairs[0][0])
    payloads = [os.urandom(3 * 1024 * 1024 + i) for i in range(3)]
    try:
        for a, b in pairs:
            await enable_both(a, b, make_keys(cipher=tls.TLS_CIPHER_AES_GCM_256))
        got: list[bytes] = [b""] * 3
        readers_go = trio.Event()

        async def send(i: int) -> None:
            view = memoryview(payloads[i])
            for pos in range(0, len(view), 100_000):
                await pairs[i][0].send_all(view[pos : pos + 100_000])

        async def read(i: int) -> None:
            await readers_go.wait()
            got[i] = await read_exactly(pairs[i][1], len(payloads[i]))

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(send, i)
                nursery.start_soon(read, i)
            await trio.sleep(0.2)  # the senders fill their sockets and wait
            readers_go.set()
        assert got == payloads
    finally:
        await aclose_all([s for pair in pairs for s in pair])


async def test_a_push_past_the_record_limit_is_sealed_as_more_records(
    tcp_stream_pair: Pair, sockmap: sk.SockMap
) -> None:
    """A program that pushes bytes into a full record: no record on the wire
    is longer than TLS allows; the peer gets every byte, pushed ones included."""
    a, b = tcp_stream_pair

    def grow(msg: sk.SkMsg) -> int:
        return sk.SK_PASS if sk.msg_push_data(msg, 0, 100, 0) == 0 else sk.SK_DROP

    sockmap.attach(grow, sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    _, opener = await tls_to_raw(a)
    data = os.urandom(2 * 16384)
    await a.send_all(data)
    recs = await read_records(b, opener, 4)
    assert max(len(p) for _, p in recs) <= 16384
    plain = b"".join(p for _, p in recs)
    assert plain == bytes(100) + data[:16384] + bytes(100) + data[16384:]


async def test_a_rerun_after_a_redirect_window_passes_unless_it_redirects_again(
    skmsg_runtime: object, sockmap: sk.SockMap
) -> None:
    """apply 4 and redirect, then a run on the rest that calls no redirect
    helper: the rest passes on the sender's own connection (as the kernel's
    sk_msg does since the redirect target stopped outliving its window)."""
    from skmsg_core.testing import aclose_all
    from skmsg_tcp.testing import tcp_stream_pair

    a, a_peer = await tcp_stream_pair()
    c, c_peer = await tcp_stream_pair()
    try:
        sockmap.update(1, c)
        runs: list[bytes] = []

        def prog(msg: sk.SkMsg) -> int:
            runs.append(bytes(msg.data))
            if len(runs) == 1:
                sk.msg_apply_bytes(msg, 4)
                return sk.msg_redirect_map(msg, sockmap, 1, 0)
            return sk.SK_PASS

        sockmap.attach(prog, sk.SK_MSG_VERDICT)
        sockmap.update(0, a)
        keys = make_keys()
        await tls.enable_tls(a, keys.a2b, keys.b2a)
        await a.send_all(b"0123456789")
        with trio.fail_after(5):
            assert await read_exactly(c_peer, 4) == b"0123"
            [(_, plain)] = await read_records(a_peer, tls.RecordOpener(keys.a2b), 1)
        assert plain == b"456789"
        assert runs == [b"0123456789", b"456789"]
    finally:
        await aclose_all((a, a_peer, c, c_peer))
