"""The key schedule against the reference: secrets to keys to the same records."""

from __future__ import annotations

import errno

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
    TlsRecordError,
    cipher_for_suite,
    hkdf_expand_label,
    key_update_message,
    tls12_crypto_infos,
    tls12_prf,
    tls13_crypto_info,
    tls13_next_secret,
)

from . import _vectors as v
from .test_vectors import CIPHER


@pytest.mark.parametrize("secret", list(v.RFC8448_KEYS), ids=lambda s: s[:4].hex())
def test_rfc8448_traffic_keys(secret: bytes) -> None:
    key, iv = v.RFC8448_KEYS[secret]
    info = tls13_crypto_info(secret, TLS_CIPHER_AES_GCM_128)
    assert (info.key, info.salt + info.iv, info.seq) == (key, iv, 0)
    assert info.version == TLS_1_3_VERSION


def test_hkdf_expand_label_rfc8448_derived() -> None:
    """RFC 8448 §3 "derive secret for handshake tls13 derived": PRK (early
    secret), context = SHA-256(""), 32 bytes."""
    early = v.h("33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a")
    empty_hash = v.h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert hkdf_expand_label(early, b"derived", empty_hash, 32, "sha256") == v.h(
        "6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba"
    )


@pytest.mark.parametrize("rec", v.RFC8448_RECORDS, ids=lambda r: r.name)
def test_rfc8448_records_from_secrets(rec: v.Record) -> None:
    info = tls13_crypto_info(rec.secret, TLS_CIPHER_AES_GCM_128, rec.seq)
    assert RecordSealer(info).seal(rec.plaintext, rec.content_type) == rec.record
    opener = RecordOpener(info)
    opener.feed(rec.record)
    assert opener.next_record() == (rec.content_type, rec.plaintext)


def test_rfc8448_next_application_secrets() -> None:
    assert tls13_next_secret(v.C_AP_TRAFFIC, TLS_CIPHER_AES_GCM_128) == v.C_AP_TRAFFIC_1
    assert tls13_next_secret(v.S_AP_TRAFFIC, TLS_CIPHER_AES_GCM_128) == v.S_AP_TRAFFIC_1


@pytest.mark.parametrize("cipher", ["chacha", "aes256", "aes128"])
def test_s2a_keys_and_records_from_secret(cipher: str) -> None:
    secret = v.SECRET_6B_48 if cipher == "aes256" else v.SECRET_6B_32
    info = tls13_crypto_info(secret, CIPHER[cipher])
    key, iv = v.S2A_KEYS[cipher]
    assert (info.key, info.salt + info.iv) == (key, iv)
    for rec in v.S2A_RECORDS[cipher]:
        sealer = RecordSealer(info.with_seq(rec.seq))
        assert sealer.seal(rec.plaintext, rec.content_type, padding=rec.padding) == rec.record


@pytest.mark.parametrize("cipher", ["aes128", "chacha"])
def test_key_update_both_directions(cipher: str) -> None:
    """Sender: seal KeyUpdate under the old key, rekey, seal at seq 0 of the new
    key. Receiver: the KeyUpdate record comes out, reads answer EKEYEXPIRED
    until rekey, then the next record opens (byte-for-byte the vector)."""
    cipher_type = CIPHER[cipher]
    old = tls13_crypto_info(v.SECRET_6B_32, cipher_type)
    nxt_secret = tls13_next_secret(v.SECRET_6B_32, cipher_type)
    assert nxt_secret == v.KEY_UPDATE_NEXT_SECRET
    new = tls13_crypto_info(nxt_secret, cipher_type)
    if cipher == "aes128":
        assert (new.key, new.salt + new.iv) == (v.KEY_UPDATE_NEXT_KEY_AES128, v.KEY_UPDATE_NEXT_IV)
    else:
        assert new.key.hex().startswith("18b61f93") and new.key.hex().endswith("e30878")
    ku_record, data_record = v.KEY_UPDATE[cipher]

    sealer = RecordSealer(old)
    assert sealer.seal(key_update_message(False), TLS_RECORD_TYPE_HANDSHAKE, padding=10) == (
        ku_record
    )
    sealer.rekey(new)
    assert sealer.seq == 0
    assert sealer.seal(b"123456") == data_record

    opener = RecordOpener(old)
    opener.feed(ku_record + data_record)
    assert opener.next_record() == (TLS_RECORD_TYPE_HANDSHAKE, v.KEY_UPDATE_MESSAGE)
    assert opener.key_expired
    for _ in range(2):  # not poisoning: it repeats until the key arrives
        with pytest.raises(TlsRecordError) as exc:
            opener.next_record()
        assert exc.value.errno == errno.EKEYEXPIRED
    assert opener.buffered == len(data_record)
    opener.rekey(new)
    assert not opener.key_expired
    assert opener.next_record() == (23, b"123456")
    assert opener.seq == 1


def test_key_update_split_across_records_is_seen() -> None:
    """A KeyUpdate whose 5 bytes arrive in two handshake records still expires
    the key after the second; a ticket alone does not."""
    info = tls13_crypto_info(v.SECRET_6B_32, TLS_CIPHER_AES_GCM_128)
    sealer = RecordSealer(info)
    msg = key_update_message(True)
    wire = sealer.seal(msg[:2], 22) + sealer.seal(msg[2:], 22)
    opener = RecordOpener(info)
    opener.feed(wire)
    assert opener.next_record() == (22, msg[:2])
    assert not opener.key_expired
    assert opener.next_record() == (22, msg[2:])
    assert opener.key_expired


def test_tls12_key_expansion_vector() -> None:
    t = v.TLS12_AES128
    client, server = tls12_crypto_infos(
        v.TLS12_MASTER_SECRET, v.TLS12_CLIENT_RANDOM, v.TLS12_SERVER_RANDOM,
        TLS_CIPHER_AES_GCM_128, client_seq=0, server_seq=0,
    )
    assert (client.key, client.salt) == (t["client_key"], t["client_salt"])
    assert (server.key, server.salt) == (t["server_key"], t["server_salt"])
    assert client.version == server.version == TLS_1_2_VERSION
    assert RecordSealer(client).seal(v.TLS12_PLAINTEXT) == t["record"]
    opener = RecordOpener(client)
    opener.feed(t["record"])
    assert opener.next_record() == (23, v.TLS12_PLAINTEXT)


def test_tls12_aes256_twin_vector() -> None:
    client, _ = tls12_crypto_infos(
        v.TLS12_MASTER_SECRET, v.TLS12_CLIENT_RANDOM, v.TLS12_SERVER_RANDOM,
        TLS_CIPHER_AES_GCM_256, client_seq=0, server_seq=0,
    )
    record = RecordSealer(client).seal(v.TLS12_PLAINTEXT)
    assert record[:13] == v.h("170303001c") + bytes(8)
    assert record[13:] == v.TLS12_AES256_SEALED


def test_tls12_explicit_nonce_follows_seq() -> None:
    client, server = tls12_crypto_infos(
        bytes(48), bytes(32), bytes(32), TLS_CIPHER_AES_GCM_128, client_seq=1, server_seq=7
    )
    assert client.iv == client.rec_seq == (1).to_bytes(8, "big")
    assert server.iv == server.rec_seq == (7).to_bytes(8, "big")
    sealer = RecordSealer(server)
    for seq in range(7, 10):
        assert sealer.seal(b"x")[5:13] == seq.to_bytes(8, "big")


def test_tls12_chacha_key_block() -> None:
    """ChaCha20-Poly1305 (RFC 7905): 32-byte keys and 12-byte IVs from the
    SHA-256 PRF, in the order client key, server key, client IV, server IV."""
    ms, cr, sr = bytes(range(48)), bytes(range(32)), bytes(range(32, 64))
    client, server = tls12_crypto_infos(
        ms, cr, sr, TLS_CIPHER_CHACHA20_POLY1305, client_seq=1, server_seq=1
    )
    block = tls12_prf(ms, b"key expansion", sr + cr, 88, "sha256")
    assert (client.key, server.key) == (block[:32], block[32:64])
    assert (client.iv, server.iv, client.salt) == (block[64:76], block[76:88], b"")


def test_tls12_prf_rfc_style_vector() -> None:
    """The widely used TLS 1.2 PRF-SHA256 test vector (IETF TLS WG mailing list,
    also in Go's crypto/tls prf_test.go)."""
    secret = v.h("9bbe436ba940f017b17652849a71db35")
    seed = v.h("a0ba9f936cda311827a6f796ffd5198c")
    out = tls12_prf(secret, b"test label", seed, 100, "sha256")
    assert out[:16] == v.h("e3f229ba727be17b8d122620557cd453")


@pytest.mark.parametrize(
    "suite,version,cipher",
    [
        ("TLS_AES_128_GCM_SHA256", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_128),
        ("TLS_AES_256_GCM_SHA384", TLS_1_3_VERSION, TLS_CIPHER_AES_GCM_256),
        ("TLS_CHACHA20_POLY1305_SHA256", TLS_1_3_VERSION, TLS_CIPHER_CHACHA20_POLY1305),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128),
        ("ECDHE-RSA-AES256-GCM-SHA384", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_256),
        ("DHE-RSA-CHACHA20-POLY1305", TLS_1_2_VERSION, TLS_CIPHER_CHACHA20_POLY1305),
        ("AES128-GCM-SHA256", TLS_1_2_VERSION, TLS_CIPHER_AES_GCM_128),
    ],
)
def test_cipher_for_suite(suite: str, version: int, cipher: int) -> None:
    assert cipher_for_suite(suite, version) == cipher


@pytest.mark.parametrize(
    "suite,version",
    [
        ("ECDHE-RSA-AES128-SHA256", TLS_1_2_VERSION),
        ("ECDHE-ECDSA-AES128-CCM", TLS_1_2_VERSION),
        ("ECDHE-ARIA128-GCM-SHA256", TLS_1_2_VERSION),
        ("TLS_AES_128_CCM_SHA256", TLS_1_3_VERSION),
        ("TLS_AES_128_GCM_SHA256", TLS_1_2_VERSION),
    ],
)
def test_cipher_for_suite_refuses_naming_the_suite(suite: str, version: int) -> None:
    with pytest.raises(ValueError, match=suite):
        cipher_for_suite(suite, version)


def test_cipher_for_suite_refuses_old_versions() -> None:
    with pytest.raises(ValueError, match="0x0302"):
        cipher_for_suite("ECDHE-RSA-AES128-SHA", 0x0302)


def test_bad_key_schedule_inputs() -> None:
    with pytest.raises(ValueError, match="48 bytes"):
        tls13_crypto_info(bytes(32), TLS_CIPHER_AES_GCM_256)
    with pytest.raises(ValueError, match="32 bytes"):
        tls13_next_secret(bytes(48), TLS_CIPHER_CHACHA20_POLY1305)
    with pytest.raises(ValueError, match="cipher_type 53"):
        tls13_crypto_info(bytes(32), 53)
    with pytest.raises(ValueError, match="rec_seq"):
        tls13_crypto_info(bytes(32), TLS_CIPHER_AES_GCM_128, 1 << 64)
    with pytest.raises(ValueError, match="sha512"):
        hkdf_expand_label(bytes(32), b"key", b"", 16, "sha512")
    with pytest.raises(ValueError, match="master_secret"):
        tls12_crypto_infos(bytes(47), bytes(32), bytes(32), 51, client_seq=1, server_seq=1)
    with pytest.raises(ValueError, match="server_random"):
        tls12_crypto_infos(bytes(48), bytes(32), bytes(31), 51, client_seq=1, server_seq=1)
    with pytest.raises(ValueError, match="client_seq"):
        tls12_crypto_infos(bytes(48), bytes(32), bytes(32), 51, client_seq=-1, server_seq=1)
