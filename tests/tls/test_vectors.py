"""Every record vector of the reference sealed and opened byte for byte.

Keys here are the ones printed by the sources (RFC 8448, s2a-go, tlslite-ng);
test_keys.py checks that our key schedule derives the same keys from the
secrets, and seals the same records from the secrets alone.
"""

from __future__ import annotations

import pytest

from skmsg_tls import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_CIPHER_AES_GCM_128,
    TLS_CIPHER_AES_GCM_256,
    TLS_CIPHER_CHACHA20_POLY1305,
    TLS_RECORD_TYPE_HANDSHAKE,
    RecordOpener,
    RecordSealer,
    TlsCryptoInfo,
    key_update_message,
)

from . import _vectors as v

CIPHER = {
    "aes128": TLS_CIPHER_AES_GCM_128,
    "aes256": TLS_CIPHER_AES_GCM_256,
    "chacha": TLS_CIPHER_CHACHA20_POLY1305,
}


def tls13_info(cipher_type: int, key: bytes, iv: bytes, seq: int) -> TlsCryptoInfo:
    """Split a 12-byte TLS 1.3 write IV the way OpenSSL's ktls_configure_crypto does."""
    rec_seq = seq.to_bytes(8, "big")
    if cipher_type == TLS_CIPHER_CHACHA20_POLY1305:
        return TlsCryptoInfo(TLS_1_3_VERSION, cipher_type, key, iv, b"", rec_seq)
    return TlsCryptoInfo(TLS_1_3_VERSION, cipher_type, key, iv[4:], iv[:4], rec_seq)


def check_record(info: TlsCryptoInfo, rec: v.Record) -> None:
    sealer = RecordSealer(info)
    assert sealer.seq == rec.seq
    assert sealer.seal(rec.plaintext, rec.content_type, padding=rec.padding) == rec.record
    assert sealer.seq == rec.seq + 1
    opener = RecordOpener(info)
    opener.feed(rec.record)
    assert opener.next_record() == (rec.content_type, rec.plaintext)
    assert opener.seq == rec.seq + 1
    assert opener.buffered == 0
    assert opener.next_record() is None


@pytest.mark.parametrize("rec", v.RFC8448_RECORDS, ids=lambda r: r.name)
def test_rfc8448_records(rec: v.Record) -> None:
    key, iv = v.RFC8448_KEYS[rec.secret]
    check_record(tls13_info(TLS_CIPHER_AES_GCM_128, key, iv, rec.seq), rec)


def test_rfc8448_server_stream_in_order() -> None:
    """The server's application records as one stream: the ticket at seq 0, the
    data at 1, close_notify at 2, opened by one opener from seq 0."""
    key, iv = v.RFC8448_KEYS[v.S_AP_TRAFFIC]
    recs = [r for r in v.RFC8448_RECORDS if r.secret == v.S_AP_TRAFFIC]
    assert [r.seq for r in recs] == [0, 1, 2]
    info = tls13_info(TLS_CIPHER_AES_GCM_128, key, iv, 0)
    sealer = RecordSealer(info)
    out = bytearray()
    for r in recs:
        assert sealer.seal_into(out, r.plaintext, r.content_type) == len(r.record)
    assert bytes(out) == b"".join(r.record for r in recs)
    opener = RecordOpener(info)
    opener.feed(out)
    assert [opener.next_record() for _ in recs] == [(r.content_type, r.plaintext) for r in recs]


def test_rfc8448_early_data_record() -> None:
    info = tls13_info(TLS_CIPHER_AES_GCM_128, v.RFC8448_EARLY_KEY, v.RFC8448_EARLY_IV, 0)
    rec = v.Record("0-RTT", b"", 0, 23, b"ABCDEF", v.RFC8448_EARLY_RECORD)
    check_record(info, rec)


@pytest.mark.parametrize(
    "rec,cipher",
    [(r, c) for c, recs in v.S2A_RECORDS.items() for r in recs],
    ids=lambda x: x.name if isinstance(x, v.Record) else x,
)
def test_s2a_records(rec: v.Record, cipher: str) -> None:
    key, iv = v.S2A_KEYS[cipher]
    check_record(tls13_info(CIPHER[cipher], key, iv, rec.seq), rec)


@pytest.mark.parametrize("cipher", ["aes128", "chacha"])
def test_key_update_vector_records(cipher: str) -> None:
    """The KeyUpdate is sealed under the old key; the next record under the new
    key at seq 0 (the AES-128 new key/iv come from the source; ChaCha's are
    derived in test_keys.py)."""
    key, iv = v.S2A_KEYS[cipher]
    ku_record, data_record = v.KEY_UPDATE[cipher]
    old = tls13_info(CIPHER[cipher], key, iv, 0)
    ku = v.Record("KeyUpdate", b"", 0, TLS_RECORD_TYPE_HANDSHAKE, key_update_message(False),
                  ku_record, padding=10)
    assert key_update_message(False) == v.KEY_UPDATE_MESSAGE
    check_record(old, ku)
    if cipher == "aes128":
        new = tls13_info(CIPHER[cipher], v.KEY_UPDATE_NEXT_KEY_AES128, v.KEY_UPDATE_NEXT_IV, 0)
        check_record(new, v.Record("after", b"", 0, 23, b"123456", data_record))


def test_tls12_aes128_gcm_vector() -> None:
    t = v.TLS12_AES128
    info = TlsCryptoInfo(
        TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128, t["client_key"], bytes(8), t["client_salt"],
        bytes(8),
    )
    check_record(info, v.Record("tls12", b"", 0, 23, v.TLS12_PLAINTEXT, t["record"]))
