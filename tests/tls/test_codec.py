"""The record codec's invariants: round trips in any split, every corruption
rejected without releasing a byte of it, clear errors for bad input."""

from __future__ import annotations

import errno
import itertools
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from skmsg_tls import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_CIPHER_AES_GCM_128,
    TLS_CIPHER_AES_GCM_256,
    TLS_CIPHER_CHACHA20_POLY1305,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RECORD_TYPE_HANDSHAKE,
    RecordOpener,
    RecordSealer,
    TlsCryptoInfo,
    TlsRecordError,
    key_update_message,
)

KEY_SIZE = {TLS_CIPHER_AES_GCM_128: 16, TLS_CIPHER_AES_GCM_256: 32,
            TLS_CIPHER_CHACHA20_POLY1305: 32}
COMBOS = [(v, c) for v in (TLS_1_2_VERSION, TLS_1_3_VERSION) for c in KEY_SIZE]
MAX_SEQ = (1 << 64) - 1


def make_info(version: int, cipher: int, seq: int = 0, fill: int = 7) -> TlsCryptoInfo:
    chacha = cipher == TLS_CIPHER_CHACHA20_POLY1305
    return TlsCryptoInfo(
        version=version,
        cipher_type=cipher,
        key=bytes((fill + i) % 256 for i in range(KEY_SIZE[cipher])),
        iv=bytes((fill * 3 + i) % 256 for i in range(12 if chacha else 8)),
        salt=b"" if chacha else bytes((fill * 5 + i) % 256 for i in range(4)),
        rec_seq=seq.to_bytes(8, "big"),
    )


@st.composite
def infos(draw: st.DrawFn) -> TlsCryptoInfo:
    version, cipher = draw(st.sampled_from(COMBOS))
    seq = draw(st.one_of(st.integers(0, 10), st.integers(0, MAX_SEQ - 64)))
    return make_info(version, cipher, seq, draw(st.integers(0, 255)))


def drain(opener: RecordOpener, into: list[tuple[int, bytes]] | None = None) -> list[
    tuple[int, bytes]
]:
    """Take every whole record; ``into`` keeps those taken before an error."""
    out = [] if into is None else into
    while (rec := opener.next_record()) is not None:
        out.append(rec)
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- round trips -------------------------------------------------------------


@given(
    info=infos(),
    data=st.binary(max_size=40_000),
    sizes=st.lists(st.integers(0, TLS_MAX_PAYLOAD_SIZE), min_size=1, max_size=8),
    types=st.lists(st.integers(20, 23), min_size=1),
    pads=st.lists(st.integers(0, 300), min_size=1),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
)
def test_any_plaintext_split_into_any_records_round_trips(  # noqa: PLR0917
    info: TlsCryptoInfo,
    data: bytes,
    sizes: list[int],
    types: list[int],
    pads: list[int],
    cuts: list[int],
) -> None:
    tls13 = info.version == TLS_1_3_VERSION
    sealer = RecordSealer(info)
    wire = bytearray()
    sent: list[tuple[int, bytes]] = []
    if not any(sizes):
        sizes.append(1)  # progress; empty records still occur in between
    pos = i = 0
    while pos < len(data) or not sent:
        n = sizes[i % len(sizes)]
        chunk = data[pos : pos + n]
        ctype = types[i % len(types)]
        pad = min(pads[i % len(pads)], TLS_MAX_PAYLOAD_SIZE - len(chunk)) if tls13 else 0
        buf = (bytes, bytearray, memoryview)[i % 3](chunk)  # every accepted input type
        before = len(wire)
        added = sealer.seal_into(wire, buf, ctype, padding=pad)
        assert added == len(wire) - before
        sent.append((ctype, chunk))
        pos += len(chunk)
        i += 1
    assert b"".join(chunk for _, chunk in sent) == data
    assert sealer.seq == info.seq + len(sent)

    opener = RecordOpener(info)
    got: list[tuple[int, bytes]] = []
    for piece in split_at(bytes(wire), cuts):
        opener.feed(piece)
        got += drain(opener)
    assert got == sent
    assert opener.seq == info.seq + len(sent)
    assert opener.buffered == 0
    assert not opener.has_partial()
    opener.eof()


@given(info=infos(), data=st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_seal_equals_seal_into(info: TlsCryptoInfo, data: list[bytes]) -> None:
    a, b = RecordSealer(info), RecordSealer(info)
    out = bytearray(b"prefix")
    for d in data:
        rec = a.seal(d)
        n = b.seal_into(out, d)
        assert n == len(rec)
        assert out.endswith(rec)
    assert a.seq == b.seq


@pytest.mark.parametrize("into", [True, False], ids=["encrypt_into", "encrypt"])
@given(
    info=infos(),
    data=st.lists(st.binary(max_size=300), max_size=5),
    ctype=st.integers(1, 255),
    big=st.booleans(),
)
def test_seal_batch_equals_seal_per_record(
    into: bool, info: TlsCryptoInfo, data: list[bytes], ctype: int, big: bool
) -> None:
    """seal_batch (straight into one buffer; also the path for cryptography
    without encrypt_into) makes byte for byte the records seal makes."""
    if big:
        data.append(bytes(range(256)) * 64)  # one full 16 KiB record
    a, b = RecordSealer(info), RecordSealer(info)
    b._into = into
    views = [(bytes, bytearray, memoryview)[i % 3](d) for i, d in enumerate(data)]
    out = b.seal_batch(views, ctype)
    assert isinstance(out, memoryview) and isinstance(out.obj, bytearray)
    assert out == b"".join(a.seal(d, ctype) for d in data)
    assert a.seq == b.seq == info.seq + len(data)
    # and the stream goes on from where the batch left it (TLS 1.2 explicit nonce too)
    assert b.seal(b"after") == a.seal(b"after")
    opener = RecordOpener(info)
    opener.feed(bytes(out))
    assert [(t, bytes(p)) for t, p in drain(opener)] == [(ctype, d) for d in data]


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_seal_batch_into_a_scratch_buffer_reuses_it_whatever_it_held(
    version: int, cipher: int
) -> None:
    """A scratch buffer is grown when too short and otherwise sealed into as it
    is: what it held before (here 0xff everywhere) never shows in a record."""
    info = make_info(version, cipher)
    plain, reused = RecordSealer(info), RecordSealer(info)
    scratch = bytearray(b"\xff" * 10)
    longest = 0
    for batch in ([b"a" * 100, b"b" * 3000], [b"c" * 7], [bytes(range(256)) * 64] * 2, [b"d"]):
        want = bytes(plain.seal_batch(batch))
        longest = max(longest, len(want))
        got = reused.seal_batch(batch, scratch=scratch)
        assert got.obj is scratch and got == want
        del got
        scratch[:] = b"\xff" * len(scratch)  # whatever it holds, nothing leaks
    assert len(scratch) == longest  # grown to the longest batch, never shrunk
    assert plain.seq == reused.seq


def test_seal_batch_into_a_scratch_in_use_fails_before_sealing() -> None:
    """Growing a scratch buffer a view still holds is a BufferError, raised
    before anything is sealed (the sequence number does not move)."""
    sealer = RecordSealer(make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128))
    scratch = bytearray()
    held = sealer.seal_batch([b"x"], scratch=scratch)
    with pytest.raises(BufferError):
        sealer.seal_batch([b"y" * 100], scratch=scratch)
    assert sealer.seq == 1
    held.release()
    assert sealer.seal_batch([b"y" * 100], scratch=scratch).obj is scratch


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_seal_batch_refuses_bad_input_and_seals_nothing(version: int, cipher: int) -> None:
    sealer = RecordSealer(make_info(version, cipher))
    too_long = bytes(TLS_MAX_PAYLOAD_SIZE + 1)
    with pytest.raises(ValueError, match="16385 bytes of plaintext exceed"):
        sealer.seal_batch([b"ok", too_long])
    for bad in (0, 256):
        with pytest.raises(ValueError, match=f"content type {bad} is not"):
            sealer.seal_batch([b"ok"], bad)
    assert sealer.seq == 0
    assert sealer.seal_batch([]) == bytearray()
    assert sealer.seq == 0
    # two records left: a batch of three seals none of them
    late = RecordSealer(make_info(version, cipher, seq=MAX_SEQ - 1))
    with pytest.raises(TlsRecordError, match="sequence numbers exhausted") as exc:
        late.seal_batch([b"a", b"b", b"c"])
    assert exc.value.errno == errno.EBADMSG
    assert late.seq == MAX_SEQ - 1
    assert len(late.seal_batch([b"a", b"b"])) > 0
    assert late.seq == 1 << 64


@given(
    info=infos().map(lambda i: i.with_seq(min(i.seq, MAX_SEQ - 10_000))),
    sizes=st.lists(
        st.one_of(
            st.integers(0, 3 * TLS_MAX_PAYLOAD_SIZE),
            st.sampled_from([TLS_MAX_PAYLOAD_SIZE, 2 * TLS_MAX_PAYLOAD_SIZE]),  # aligned
        ),
        max_size=6,
    ),
    limit=st.sampled_from([TLS_MAX_PAYLOAD_SIZE, 4096, 512, 64]),
    ctype=st.integers(1, 255),
    into=st.booleans(),
)
def test_seal_pieces_equals_seal_batch_of_the_joined_bytes(
    info: TlsCryptoInfo, sizes: list[int], limit: int, ctype: int, into: bool
) -> None:
    """seal_pieces makes byte for byte the records seal_batch makes of the
    pieces joined and cut every record_size_limit bytes, whether the piece
    boundaries fall on record boundaries or inside records (many pieces to one
    record, one piece to many), and the stream goes on from there."""
    data = bytes(i * 7 % 251 for i in range(sum(sizes)))
    pieces: list[bytes | bytearray | memoryview] = []
    pos = 0
    for i, n in enumerate(sizes):
        pieces.append((bytes, bytearray, memoryview)[i % 3](data[pos : pos + n]))
        pos += n
    a, b = RecordSealer(info), RecordSealer(info)
    a.record_size_limit = b.record_size_limit = limit
    b._into = into
    want = a.seal_batch([data[i : i + limit] for i in range(0, len(data), limit)], ctype)
    out = b.seal_pieces(pieces, ctype)
    assert isinstance(out, memoryview) and out == want
    assert a.seq == b.seq == info.seq + -(-len(data) // limit)
    assert b.seal(b"after") == a.seal(b"after")
    opener = RecordOpener(info)
    opener.record_size_limit = limit
    opener.feed(bytes(out))
    records = drain(opener)
    assert all(len(p) == limit for _, p in records[:-1])
    assert b"".join(bytes(p) for _, p in records) == data
    assert {t for t, _ in records} <= {ctype}


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_seal_pieces_into_a_scratch_and_from_other_formats(version: int, cipher: int) -> None:
    """Pieces viewed as other formats are sealed as their bytes; a scratch
    buffer is sealed into as seal_batch's is."""
    info = make_info(version, cipher)
    a, b = RecordSealer(info), RecordSealer(info)
    raw = bytes(range(256)) * 200  # 51,200 bytes: 3 full records and a short one
    pieces = [memoryview(raw[:1000]).cast("c"), memoryview(raw[1000:33768]).cast("I"), raw[33768:]]
    scratch = bytearray(b"\xff" * 7)
    out = b.seal_pieces(pieces, scratch=scratch)
    assert out.obj is scratch
    step = TLS_MAX_PAYLOAD_SIZE
    assert out == a.seal_batch([raw[i : i + step] for i in range(0, len(raw), step)])


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_seal_pieces_refuses_bad_input_and_seals_nothing(version: int, cipher: int) -> None:
    sealer = RecordSealer(make_info(version, cipher))
    for bad in (0, 256):
        with pytest.raises(ValueError, match=f"content type {bad} is not"):
            sealer.seal_pieces([b"ok", b"more"], bad)
    assert sealer.seq == 0
    assert sealer.seal_pieces([]) == bytearray()
    assert sealer.seal_pieces([b"", memoryview(b"")]) == bytearray()
    assert sealer.seq == 0
    # two records left: 3 records' worth of pieces seals none of them
    late = RecordSealer(make_info(version, cipher, seq=MAX_SEQ - 1))
    with pytest.raises(TlsRecordError, match="sequence numbers exhausted") as exc:
        late.seal_pieces([bytes(TLS_MAX_PAYLOAD_SIZE + 1), bytes(TLS_MAX_PAYLOAD_SIZE)])
    assert exc.value.errno == errno.EBADMSG
    assert late.seq == MAX_SEQ - 1


def test_max_size_record_and_one_byte_more() -> None:
    for version, cipher in COMBOS:
        sealer = RecordSealer(make_info(version, cipher))
        rec = sealer.seal(bytes(TLS_MAX_PAYLOAD_SIZE))
        opener = RecordOpener(make_info(version, cipher))
        opener.feed(rec)
        assert opener.next_record() == (23, bytes(TLS_MAX_PAYLOAD_SIZE))
        with pytest.raises(ValueError, match="TLS_MAX_PAYLOAD_SIZE"):
            sealer.seal(bytes(TLS_MAX_PAYLOAD_SIZE + 1))
        assert sealer.seq == 1


# --- corruption ----------------------------------------------------------------


@given(
    info=infos(),
    payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=3),
    where=st.integers(0, 1 << 30),
    bit=st.integers(0, 7),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=4),
)
def test_a_flipped_bit_anywhere_is_rejected(
    info: TlsCryptoInfo, payloads: list[bytes], where: int, bit: int, cuts: list[int]
) -> None:
    """No record containing the flipped bit comes out; records before it do;
    the error is EBADMSG/EINVAL/EMSGSIZE at once, or EPROTO at EOF when the
    flip made the length longer than the stream."""
    sealer = RecordSealer(info)
    records = [sealer.seal(p) for p in payloads]
    wire = bytearray(b"".join(records))
    pos = where % len(wire)
    wire[pos] ^= 1 << bit
    bad_index = next(
        i for i in range(len(records)) if pos < sum(len(r) for r in records[: i + 1])
    )
    opener = RecordOpener(info)
    got: list[tuple[int, bytes]] = []
    with pytest.raises(TlsRecordError) as exc:
        for piece in split_at(bytes(wire), cuts):
            opener.feed(piece)
            drain(opener, got)
        opener.eof()
    assert exc.value.errno in {errno.EBADMSG, errno.EINVAL, errno.EMSGSIZE, errno.EPROTO}
    assert got == [(23, p) for p in payloads[:bad_index]]
    if exc.value.errno != errno.EPROTO:
        # poisoned: the same error again, from every entry point
        for call in (opener.next_record, lambda: opener.feed(b"x"), opener.eof):
            with pytest.raises(TlsRecordError) as again:
                call()
            assert (again.value.errno, str(again.value)) == (exc.value.errno, str(exc.value))
        assert opener.error is not None


def test_error_messages_name_the_fault() -> None:
    info = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128)
    good = RecordSealer(info).seal(b"hello")

    def fails(wire: bytes, err: int, match: str) -> RecordOpener:
        opener = RecordOpener(info)
        opener.feed(wire)
        with pytest.raises(TlsRecordError, match=match) as exc:
            opener.next_record()
        assert exc.value.errno == err
        assert isinstance(exc.value, OSError)
        return opener

    fails(b"\x17\x03\x01" + good[3:], errno.EINVAL, "legacy record version 0x0301")
    fails(b"\x16" + good[1:], errno.EINVAL, "outer content type 22")
    # too long is caught from the header alone, before the body arrives
    limit = TLS_MAX_PAYLOAD_SIZE + 16 + 1
    fails(b"\x17\x03\x03" + (limit + 1).to_bytes(2, "big"), errno.EMSGSIZE,
          f"record length {limit + 1} exceeds the maximum {limit}")
    fails(b"\x17\x03\x03\x00\x0f" + bytes(15), errno.EBADMSG, "below the cipher overhead 16")
    fails(good[:-1] + bytes((good[-1] ^ 1,)), errno.EBADMSG, "TLS record seq 0: authentication")


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_length_limits_per_version_and_cipher(version: int, cipher: int) -> None:
    """tls_rx_msg_size: max = 2^14 + overhead (+1 inner type for TLS 1.3),
    min = the overhead (tag, + 8-byte explicit nonce for TLS 1.2 GCM)."""
    overhead = 16 + (8 if version == TLS_1_2_VERSION and cipher != 54 else 0)
    limit = TLS_MAX_PAYLOAD_SIZE + overhead + (1 if version == TLS_1_3_VERSION else 0)
    for length, err in ((limit + 1, errno.EMSGSIZE), (overhead - 1, errno.EBADMSG)):
        opener = RecordOpener(make_info(version, cipher))
        opener.feed(b"\x17\x03\x03" + length.to_bytes(2, "big"))
        with pytest.raises(TlsRecordError) as exc:
            opener.next_record()
        assert exc.value.errno == err
    opener = RecordOpener(make_info(version, cipher))
    opener.feed(b"\x17\x03\x03" + limit.to_bytes(2, "big"))
    assert opener.next_record() is None  # legal length: waits for the body
    assert opener.has_partial()


def test_tls13_all_zero_plaintext_is_ebadmsg() -> None:
    """A TLS 1.3 record whose plaintext is only zeros has no content type."""
    info = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128)
    inner = bytes(5)
    header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
    nonce = (int.from_bytes(info.salt + info.iv, "big") ^ 0).to_bytes(12, "big")
    wire = header + AESGCM(info.key).encrypt(nonce, inner, header)
    opener = RecordOpener(info)
    opener.feed(wire)
    with pytest.raises(TlsRecordError, match="all zeros") as exc:
        opener.next_record()
    assert exc.value.errno == errno.EBADMSG
    assert opener.buffered == len(wire)  # nothing of it released


def test_tls12_type_zero_is_rejected() -> None:
    info = make_info(TLS_1_2_VERSION, TLS_CIPHER_CHACHA20_POLY1305)
    aad = bytes(8) + b"\x00\x03\x03\x00\x01"
    nonce = info.iv
    wire = b"\x00\x03\x03\x00\x11" + ChaCha20Poly1305(info.key).encrypt(nonce, b"x", aad)
    opener = RecordOpener(info)
    opener.feed(wire)
    with pytest.raises(TlsRecordError, match="content type 0") as exc:
        opener.next_record()
    assert exc.value.errno == errno.EINVAL


@given(info=infos(), payload=st.binary(max_size=100), cut=st.integers(1, 1 << 16))
def test_truncated_record_waits_then_eof_is_eproto(
    info: TlsCryptoInfo, payload: bytes, cut: int
) -> None:
    rec = RecordSealer(info).seal(payload)
    keep = cut % len(rec)
    opener = RecordOpener(info)
    opener.feed(rec[:keep])
    assert opener.next_record() is None
    assert opener.buffered == keep
    assert opener.has_partial() == (keep > 0)
    if keep:
        with pytest.raises(TlsRecordError, match="stream ended inside a record") as exc:
            opener.eof()
        assert exc.value.errno == errno.EPROTO
    # the rest arrives after all: the record is whole again
    opener.feed(rec[keep:])
    assert opener.next_record() == (23, payload)


def test_buffered_and_has_partial() -> None:
    info = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256)
    sealer = RecordSealer(info)
    a, b = sealer.seal(b"a"), sealer.seal(b"bb")
    opener = RecordOpener(info)
    opener.feed(a + b[:3])
    assert (opener.buffered, opener.has_partial()) == (len(a) + 3, True)
    opener.feed(b[3:])
    assert (opener.buffered, opener.has_partial()) == (len(a + b), False)
    assert opener.next_record() == (23, b"a")
    assert opener.buffered == len(b)
    assert drain(opener) == [(23, b"bb")]


# --- sealing rules -------------------------------------------------------------


def test_seal_rejects_bad_arguments_and_keeps_state() -> None:
    sealer = RecordSealer(make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128))
    out = bytearray(b"keep")
    for kwargs, match in (
        ({"content_type": 0}, "content type 0"),
        ({"content_type": 256}, "content type 256"),
        ({"padding": TLS_MAX_PAYLOAD_SIZE}, "padding exceed"),
        ({"padding": -1}, "negative padding"),
    ):
        with pytest.raises(ValueError, match=match):
            sealer.seal_into(out, b"x", **kwargs)
    assert out == b"keep"
    assert sealer.seq == 0
    tls12 = RecordSealer(make_info(TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128))
    with pytest.raises(ValueError, match=r"padding exists only in TLS 1\.3"):
        tls12.seal(b"x", padding=1)
    assert tls12.seq == 0


def test_tls12_explicit_nonce_counts_from_info_iv() -> None:
    """As tls_sw TX: the explicit nonce starts at the configured iv and steps by
    one per record; the AAD carries the sequence number."""
    info = make_info(TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128, seq=5)
    start = int.from_bytes(info.iv, "big")
    sealer = RecordSealer(info)
    opener = RecordOpener(info)
    for i in range(3):
        rec = sealer.seal(b"data %d" % i)
        assert rec[5:13] == (start + i).to_bytes(8, "big")
        opener.feed(rec)
        assert opener.next_record() == (23, b"data %d" % i)
    # the same record at the wrong sequence number does not authenticate
    late = RecordOpener(make_info(TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128, seq=6))
    late.feed(RecordSealer(info).seal(b"x"))
    with pytest.raises(TlsRecordError) as exc:
        late.next_record()
    assert exc.value.errno == errno.EBADMSG


def test_explicit_nonce_counter_wraps_like_the_kernel_without_reuse() -> None:
    info = make_info(TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128)
    info = TlsCryptoInfo(info.version, info.cipher_type, info.key, b"\xff" * 8, info.salt,
                         info.rec_seq)
    sealer = RecordSealer(info)
    assert sealer.seal(b"a")[5:13] == b"\xff" * 8
    assert sealer.seal(b"b")[5:13] == bytes(8)


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_sequence_numbers_never_wrap(version: int, cipher: int) -> None:
    last = make_info(version, cipher, seq=MAX_SEQ)
    sealer = RecordSealer(last)
    rec = sealer.seal(b"last one")
    assert sealer.seq == 1 << 64
    out = bytearray()
    for _ in range(2):
        with pytest.raises(TlsRecordError, match="sequence numbers exhausted") as exc:
            sealer.seal_into(out, b"one more")
        assert exc.value.errno == errno.EBADMSG
    assert out == b""
    opener = RecordOpener(last)
    opener.feed(rec + rec)
    assert opener.next_record() == (23, b"last one")
    with pytest.raises(TlsRecordError, match="RX sequence numbers exhausted") as exc:
        opener.next_record()
    assert exc.value.errno == errno.EBADMSG
    if version == TLS_1_3_VERSION:  # a rekey starts a fresh sequence
        sealer.rekey(make_info(version, cipher, fill=99))
        assert sealer.seq == 0
        sealer.seal(b"fresh")


# --- rekey -------------------------------------------------------------------


@pytest.mark.parametrize("cipher", list(KEY_SIZE))
def test_rekey_rules(cipher: int) -> None:
    old = make_info(TLS_1_3_VERSION, cipher)
    sealer = RecordSealer(old)
    opener = RecordOpener(old)
    sealer.seal(b"x")
    other = next(c for c in KEY_SIZE if c != cipher)
    for bad, match in (
        (make_info(TLS_1_3_VERSION, other), "differs from the current"),
        (make_info(TLS_1_2_VERSION, cipher), "version 0x0303 differs"),
    ):
        for obj in (sealer, opener):
            with pytest.raises(ValueError, match=match):
                obj.rekey(bad)
    with pytest.raises(TypeError):
        sealer.rekey(b"not an info")  # type: ignore[arg-type]
    # nothing changed: still the old key at seq 1
    assert sealer.seq == 1
    opener.feed(RecordSealer(old).seal(b"x"))
    assert opener.next_record() == (23, b"x")
    new = make_info(TLS_1_3_VERSION, cipher, seq=3, fill=50)
    sealer.rekey(new)
    opener.rekey(new)
    assert sealer.seq == opener.seq == 3
    opener.feed(sealer.seal(b"after"))
    assert opener.next_record() == (23, b"after")


@pytest.mark.parametrize("cipher", list(KEY_SIZE))
def test_tls12_cannot_rekey(cipher: int) -> None:
    info = make_info(TLS_1_2_VERSION, cipher)
    for obj in (RecordSealer(info), RecordOpener(info)):
        with pytest.raises(ValueError, match=r"only TLS 1\.3 can rekey"):
            obj.rekey(make_info(TLS_1_2_VERSION, cipher, fill=3))


def test_poisoned_opener_refuses_rekey() -> None:
    info = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128)
    opener = RecordOpener(info)
    opener.feed(b"\x17\x03\x04\x00\x20")
    with pytest.raises(TlsRecordError):
        opener.next_record()
    with pytest.raises(TlsRecordError) as exc:
        opener.rekey(make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128, fill=1))
    assert exc.value.errno == errno.EINVAL


# --- crypto info validation ----------------------------------------------------


def test_crypto_info_fields_are_checked() -> None:
    good = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128)
    fields = {k: getattr(good, k) for k in ("version", "cipher_type", "key", "iv", "salt",
                                            "rec_seq")}
    cases = [
        ({"version": 0x0302}, "TlsCryptoInfo.version: 0x0302"),
        ({"cipher_type": 53}, "TlsCryptoInfo.cipher_type: 53"),
        ({"key": bytes(32)}, "TlsCryptoInfo.key: 32 bytes, AES_GCM_128 needs 16"),
        ({"iv": bytes(12)}, "TlsCryptoInfo.iv: 12 bytes, AES_GCM_128 needs 8"),
        ({"salt": b""}, "TlsCryptoInfo.salt: 0 bytes, AES_GCM_128 needs 4"),
        ({"rec_seq": bytes(4)}, "TlsCryptoInfo.rec_seq: 4 bytes, AES_GCM_128 needs 8"),
        ({"cipher_type": 54}, "TlsCryptoInfo.key: 16 bytes, CHACHA20_POLY1305 needs 32"),
        ({"cipher_type": 52}, "TlsCryptoInfo.key: 16 bytes, AES_GCM_256 needs 32"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            TlsCryptoInfo(**{**fields, **change})
    with pytest.raises(TypeError, match="expected bytes, got int"):
        TlsCryptoInfo(**{**fields, "key": 16})
    # bytes-likes are accepted and stored as bytes
    info = TlsCryptoInfo(**{**fields, "key": bytearray(fields["key"])})
    assert type(info.key) is bytes and info == good
    # the key material stays out of repr
    assert fields["key"].hex() not in repr(good) and "key=" not in repr(good)
    assert good.with_seq(9).seq == 9
    with pytest.raises(ValueError, match="rec_seq"):
        good.with_seq(1 << 64)
    with pytest.raises(TypeError):
        RecordSealer(fields)  # type: ignore[arg-type]


# --- next_records: the batch opener ---------------------------------------------

_STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("data"),
            st.integers(0, 300) | st.sampled_from([4000, TLS_MAX_PAYLOAD_SIZE]),
            st.integers(0, 40) | st.just(0),
        ),
        st.tuples(st.just("ctl"), st.sampled_from([20, 21, 22, 24, 255]), st.integers(0, 40)),
        st.tuples(st.just("keyupdate"), st.just(0), st.just(0)),
        st.tuples(st.just("zeros"), st.integers(0, 40), st.just(0)),
    ),
    min_size=1,
    max_size=10,
)


def _wire_of(info: TlsCryptoInfo, steps: list[tuple[str, int, int]]) -> tuple[
    bytes, list[TlsCryptoInfo]
]:
    """Seal ``steps``: data records of n bytes with padding (TLS 1.3), control
    records, KeyUpdates (the sealer rekeys after each; the next RX infos are
    returned), TLS 1.3 records of zeros only; a record sealed past the last
    sequence number is the previous record again (a replay the opener must
    refuse as exhausted)."""
    tls13 = info.version == TLS_1_3_VERSION
    sealer = RecordSealer(info)
    wire = bytearray()
    rekeys: list[TlsCryptoInfo] = []
    last = b""
    for i, (kind, n, extra) in enumerate(steps):
        try:
            if kind == "data":
                pad = extra if tls13 and n + extra <= TLS_MAX_PAYLOAD_SIZE else 0
                rec = sealer.seal(bytes([i % 251]) * n, padding=pad)
            elif kind == "ctl":
                rec = sealer.seal(bytes([n]) * extra, n)
            elif kind == "keyupdate" and tls13:
                rec = sealer.seal(key_update_message(bool(i % 2)), TLS_RECORD_TYPE_HANDSHAKE)
                rekeys.append(make_info(info.version, info.cipher_type, fill=100 + i))
                sealer.rekey(rekeys[-1])
            elif kind == "zeros" and tls13 and sealer.seq <= MAX_SEQ:
                header = b"\x17\x03\x03" + (n + 16).to_bytes(2, "big")
                nonce = (sealer._iv ^ sealer.seq).to_bytes(12, "big")
                rec = header + sealer._aead.encrypt(nonce, bytes(n), header)
                sealer._seq += 1
            else:
                rec = sealer.seal(b"tls 1.2 step %d" % i)
        except TlsRecordError:
            rec = last
        wire += rec
        last = rec
    return bytes(wire), rekeys


def _recv_into(piece: bytes) -> Callable[[memoryview], int]:
    """A socket's ``recv_into`` that has ``piece`` to give."""

    def recv_into(view: memoryview) -> int:
        n = min(len(piece), view.nbytes)
        view[:n] = piece[:n]
        return n

    return recv_into


def _open_all(
    opener: RecordOpener, pieces: list[bytes], rekeys: list[TlsCryptoInfo], *, batch: bool
) -> tuple[list[object], tuple[int | None, str] | None]:
    """Feed ``pieces``, taking records with next_records (``batch``; the odd
    pieces then come through fill, as a socket's recv_into into a room larger
    than the piece) or next_record; rekey on EKEYEXPIRED. The events (data
    records without the empty ones, other records, rekeys) and the error that
    ended it."""
    events: list[object] = []
    k = 0
    for i, piece in enumerate(pieces):
        try:
            if batch and i % 2:
                assert opener.fill(_recv_into(piece), len(piece) + 100) == len(piece)
            else:
                opener.feed(piece)
        except TlsRecordError as exc:
            return events, (exc.errno, str(exc))
        while True:
            units: list[memoryview] = []
            try:
                rec = opener.next_records(units) if batch else opener.next_record()
            except TlsRecordError as exc:
                events += [(23, bytes(u)) for u in units]
                if exc.errno == errno.EKEYEXPIRED and k < len(rekeys):
                    opener.rekey(rekeys[k])
                    k += 1
                    events.append("rekey")
                    continue
                return events, (exc.errno, str(exc))
            for u in units:
                assert type(u) is memoryview and u.readonly and u.nbytes
                events.append((23, bytes(u)))
            if rec is None:
                break
            if rec[0] != 23 or len(rec[1]):
                events.append((rec[0], bytes(rec[1])))
    return events, None


@given(
    info=infos(),
    near_end=st.sampled_from([None, 0, 1, 3]),
    steps=_STEPS,
    flip=st.none() | st.tuples(st.integers(0, 1 << 30), st.integers(0, 7)),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=6),
)
def test_next_records_is_next_record_until_a_control_record(
    info: TlsCryptoInfo,
    near_end: int | None,
    steps: list[tuple[str, int, int]],
    flip: tuple[int, int] | None,
    cuts: list[int],
) -> None:
    """The batch opener takes exactly the records next_record takes, in the same
    order, stops at the same non-data records, and fails with the same error at
    the same place (every kind: bad header, bad tag, zeros only, too long, too
    short, exhausted sequence, KeyUpdate not yet rekeyed), leaving the same
    state; any input split, with or without a flipped bit."""
    if near_end is not None:
        info = info.with_seq(MAX_SEQ - near_end)
    wire, rekeys = _wire_of(info, steps)
    if flip is not None:
        pos = flip[0] % len(wire)
        wire = wire[:pos] + bytes((wire[pos] ^ (1 << flip[1]),)) + wire[pos + 1 :]
    pieces = split_at(wire, cuts)
    ref, batch = RecordOpener(info), RecordOpener(info)
    want = _open_all(ref, pieces, rekeys, batch=False)
    assert _open_all(batch, pieces, rekeys, batch=True) == want
    assert (batch.seq, batch.buffered, batch.has_partial(), batch.key_expired) == (
        ref.seq, ref.buffered, ref.has_partial(), ref.key_expired
    )
    assert str(batch.error) == str(ref.error)


@pytest.mark.parametrize("version,cipher", COMBOS)
def test_next_records_over_the_compaction_threshold(version: int, cipher: int) -> None:
    """Whole 16 KiB records by the megabyte with a partial one behind them: every
    record comes out once and intact whatever the buffer does underneath."""
    info = make_info(version, cipher)
    sealer = RecordSealer(info)
    payloads = [bytes([i]) * TLS_MAX_PAYLOAD_SIZE for i in range(70)]
    wire = b"".join(sealer.seal(p) for p in payloads)
    opener = RecordOpener(info)
    got: list[bytes] = []
    for lo, hi in itertools.pairwise([0, 300_000, 310_000, 700_000, len(wire)]):
        opener.feed(wire[lo:hi])
        units: list[memoryview] = []
        assert opener.next_records(units) is None
        got += [bytes(u) for u in units]
        assert opener.buffered < 16_500
    assert got == payloads
    assert opener.seq == 70 and opener.buffered == 0


def test_fill_reads_into_the_buffer_and_a_failed_read_adds_nothing() -> None:
    """fill gives recv_into a room of the size asked for and keeps what it
    wrote; a recv_into that raises (BlockingIOError, a reset) adds nothing."""
    info = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256)
    wire = RecordSealer(info).seal(b"x" * 1000) * 1  # one record, 1022 bytes
    opener = RecordOpener(info)
    rooms: list[int] = []

    def recv_into(view: memoryview) -> int:
        rooms.append(view.nbytes)
        view[:600] = wire[:600]
        return 600

    def would_block(view: memoryview) -> int:
        raise BlockingIOError

    assert opener.fill(recv_into, 4096) == 600
    with pytest.raises(BlockingIOError):
        opener.fill(would_block, 4096)
    assert opener.buffered == 600 and opener.next_record() is None
    opener.feed(wire[600:])
    assert opener.next_record() == (23, b"x" * 1000)
    assert rooms == [4096] and opener.buffered == 0


def test_openers_sharing_receive_buffers_keep_their_own_bytes() -> None:
    """An opener that holds nothing gives its buffer back for another to use;
    two openers taking turns, each often holding part of a record, each get
    exactly their own records, whatever the other left in a buffer."""
    keys = [make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256, fill=f) for f in (1, 2)]
    payloads = [[bytes([k + 10 * i]) * (5000 + 37 * k) for k in range(40)] for i in range(2)]
    sealers = [RecordSealer(info) for info in keys]
    wires = [b"".join(map(sealers[i].seal, payloads[i])) for i in (0, 1)]
    openers = [RecordOpener(info) for info in keys]
    got: list[list[bytes]] = [[], []]
    step = [4099, 20_000]  # one reads odd pieces, the other reads whole-ish records
    pos = [0, 0]
    while pos[0] < len(wires[0]) or pos[1] < len(wires[1]):
        for i in (0, 1):
            piece = wires[i][pos[i] : pos[i] + step[i]]
            pos[i] += len(piece)
            if piece:
                openers[i].fill(_recv_into(piece), len(piece))
            units: list[memoryview] = []
            assert openers[i].next_records(units) is None
            got[i] += [bytes(u) for u in units]
    assert got == payloads
    assert [o.buffered for o in openers] == [0, 0]


def test_next_records_stops_at_a_control_record_and_keeps_the_rest() -> None:
    info = make_info(TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256)
    sealer = RecordSealer(info)
    wire = (
        sealer.seal(b"one") + sealer.seal(b"two", padding=7) + sealer.seal(b"")
        + sealer.seal(b"\x01\x00", 21) + sealer.seal(b"three")
    )
    opener = RecordOpener(info)
    opener.feed(wire)
    units: list[memoryview] = []
    assert opener.next_records(units) == (21, b"\x01\x00")
    assert [bytes(u) for u in units] == [b"one", b"two"]  # the empty record adds nothing
    assert opener.seq == 4
    units.clear()
    assert opener.next_records(units) is None
    assert [bytes(u) for u in units] == [b"three"]
    # an error after good records: they are in units, consumed; the bad one is not
    good = sealer.seal(b"four")
    bad = bytearray(sealer.seal(b"five"))
    bad[-1] ^= 1
    opener.feed(good + bad)
    units.clear()
    with pytest.raises(TlsRecordError, match="seq 6: authentication failed") as exc:
        opener.next_records(units)
    assert exc.value.errno == errno.EBADMSG
    assert [bytes(u) for u in units] == [b"four"]
    assert opener.buffered == len(bad) and opener.seq == 6
    with pytest.raises(TlsRecordError, match="seq 6: authentication failed"):
        opener.next_records([])
