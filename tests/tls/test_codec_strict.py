"""The record codec's strict parts: each receive error names the fatal alert
TLS answers it with, and a negotiated record size limit caps what is sealed
and what is opened (sans-I/O, synchronous)."""

from __future__ import annotations

import errno

import pytest

import skmsg_tls as tls

from ._ulp_helpers import make_keys

V13, V12 = tls.TLS_1_3_VERSION, tls.TLS_1_2_VERSION


def pair(version: int, limit: int | None = None) -> tuple[tls.RecordSealer, tls.RecordOpener]:
    keys = make_keys(version)
    sealer, opener = tls.RecordSealer(keys.a2b), tls.RecordOpener(keys.a2b)
    if limit is not None:
        sealer.record_size_limit = opener.record_size_limit = limit
    return sealer, opener


def open_error(opener: tls.RecordOpener, wire: bytes) -> tls.TlsRecordError:
    opener.feed(wire)
    with pytest.raises(tls.TlsRecordError) as info:
        opener.next_record()
    return info.value


@pytest.mark.parametrize("version", [V13, V12])
def test_a_failed_tag_is_bad_record_mac(version: int) -> None:
    sealer, opener = pair(version)
    wire = bytearray(sealer.seal(b"payload"))
    wire[-1] ^= 1
    err = open_error(opener, bytes(wire))
    assert (err.errno, err.alert) == (errno.EBADMSG, 20)


@pytest.mark.parametrize("version", [V13, V12])
def test_a_too_long_header_is_record_overflow(version: int) -> None:
    _, opener = pair(version)
    err = open_error(opener, b"\x17\x03\x03\x48\x00")
    assert (err.errno, err.alert) == (errno.EMSGSIZE, 22)


@pytest.mark.parametrize(("version", "alert"), [(V13, 50), (V12, 70)])
def test_a_wrong_legacy_version_is_decode_error_or_protocol_version(
    version: int, alert: int
) -> None:
    """As OpenSSL answers it: decode_error under TLS 1.3, protocol_version under 1.2."""
    _, opener = pair(version)
    err = open_error(opener, b"\x17\x03\x01\x00\x20" + bytes(32))
    assert (err.errno, err.alert) == (errno.EINVAL, alert)


def test_tls13_outer_type_and_tls12_type_0_are_unexpected_message() -> None:
    _, opener = pair(V13)
    assert open_error(opener, b"\x16\x03\x03\x00\x20" + bytes(32)).alert == 10
    _, opener = pair(V12)
    assert open_error(opener, b"\x00\x03\x03\x00\x20" + bytes(32)).alert == 10


def test_a_record_shorter_than_the_overhead_is_bad_record_mac() -> None:
    _, opener = pair(V13)
    err = open_error(opener, b"\x17\x03\x03\x00\x05" + bytes(5))
    assert (err.errno, err.alert) == (errno.EBADMSG, 20)


def test_the_end_inside_a_record_is_decode_error() -> None:
    sealer, opener = pair(V13)
    opener.feed(sealer.seal(b"cut")[:-2])
    with pytest.raises(tls.TlsRecordError) as info:
        opener.eof()
    assert (info.value.errno, info.value.alert) == (errno.EPROTO, 50)


@pytest.mark.parametrize("version", [V13, V12])
def test_the_limit_caps_sealing(version: int) -> None:
    sealer, _ = pair(version, 512)
    assert sealer.record_size_limit == 512
    sealer.seal(b"x" * 512)
    with pytest.raises(ValueError, match="negotiated record size limit"):
        sealer.seal(b"x" * 513)
    with pytest.raises(ValueError, match="negotiated record size limit"):
        sealer.seal_batch([b"x" * 100, b"x" * 513])
    seq = sealer.seq
    with pytest.raises(ValueError):
        sealer.seal_into(bytearray(), b"x" * 600)
    assert sealer.seq == seq  # nothing sealed


@pytest.mark.parametrize("version", [V13, V12])
def test_the_limit_caps_opening_and_the_record_is_record_overflow(version: int) -> None:
    sealer, opener = pair(version)
    opener.record_size_limit = 1024
    opener.feed(sealer.seal(b"a" * 1024) + sealer.seal(b"b" * 1025))
    assert opener.next_record() == (23, b"a" * 1024)
    with pytest.raises(tls.TlsRecordError) as info:
        opener.next_record()
    assert (info.value.errno, info.value.alert) == (errno.EMSGSIZE, 22)
    assert "record size limit 1024" in str(info.value)
    with pytest.raises(tls.TlsRecordError):  # poisoned
        opener.next_record()


def test_the_batch_opener_stops_at_a_record_over_the_limit() -> None:
    sealer, opener = pair(V13)
    opener.record_size_limit = 100
    opener.feed(b"".join(sealer.seal(b"k" * n) for n in (100, 50, 101, 10)))
    units: list[memoryview] = []
    with pytest.raises(tls.TlsRecordError) as info:
        opener.next_records(units)
    assert [bytes(u) for u in units] == [b"k" * 100, b"k" * 50]
    assert info.value.alert == 22


def test_tls13_padding_does_not_count_against_the_limit() -> None:
    """As OpenSSL checks it: the content after the padding is removed."""
    sealer, opener = pair(V13)
    opener.record_size_limit = 512
    opener.feed(sealer.seal(b"p" * 512, padding=1000))
    assert opener.next_record() == (23, b"p" * 512)


def test_the_limit_survives_a_key_update() -> None:
    keys = make_keys(V13)
    opener = tls.RecordOpener(keys.a2b)
    opener.record_size_limit = 2048
    assert keys.a2b_secret is not None
    nxt = tls.tls13_next_secret(keys.a2b_secret, keys.a2b.cipher_type)
    opener.rekey(tls.tls13_crypto_info(nxt, keys.a2b.cipher_type))
    assert opener.record_size_limit == 2048
    sealer = tls.RecordSealer(tls.tls13_crypto_info(nxt, keys.a2b.cipher_type))
    opener.feed(sealer.seal(b"z" * 2049))
    with pytest.raises(tls.TlsRecordError, match="2048"):
        opener.next_record()


@pytest.mark.parametrize("bad", [0, 63, 16385, -1])
def test_a_limit_out_of_range_is_refused(bad: int) -> None:
    sealer, _ = pair(V13)
    with pytest.raises(ValueError, match="record_size_limit"):
        sealer.record_size_limit = bad
    assert sealer.record_size_limit == tls.TLS_MAX_PAYLOAD_SIZE
