"""Key schedule: traffic secrets to record-layer crypto infos.

What OpenSSL's ``ktls_configure_crypto`` does before ``setsockopt(TLS_TX/RX)``,
from the secrets a key log carries:

- TLS 1.3 (RFC 8446 §7.1, §7.3): ``key = HKDF-Expand-Label(secret, "key", "",
  key_length)``, ``iv = HKDF-Expand-Label(secret, "iv", "", 12)`` with the
  suite's hash; the 12-byte IV is split ``salt = iv[:4]``, ``iv = iv[4:]`` for
  AES-GCM and kept whole for ChaCha20-Poly1305. KeyUpdate (§7.2): the next
  secret is ``HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)``.
- TLS 1.2 (RFC 5246 §6.3, RFC 5288, RFC 7905): ``key_block = PRF(master_secret,
  "key expansion", server_random || client_random)`` split into client key,
  server key, client IV, server IV (AEAD suites have no MAC keys); the PRF hash
  is SHA-384 for the AES-256-GCM suites, else SHA-256.
"""

from __future__ import annotations

import hmac
import re
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ._codec import (
    _CIPHERS,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_CIPHER_AES_GCM_128,
    TLS_CIPHER_AES_GCM_256,
    TLS_CIPHER_CHACHA20_POLY1305,
    TlsCryptoInfo,
    cipher_name,
)

__all__ = [
    "cipher_for_suite",
    "cipher_hash",
    "hkdf_expand_label",
    "tls12_crypto_infos",
    "tls12_prf",
    "tls13_crypto_info",
    "tls13_next_secret",
]

_HASHES: Final = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}
_HASH_SIZE: Final = {"sha256": 32, "sha384": 48}

#: The hash of each cipher's suites (TLS 1.3 HKDF and TLS 1.2 PRF alike).
_CIPHER_HASH: Final = {
    TLS_CIPHER_AES_GCM_128: "sha256",
    TLS_CIPHER_AES_GCM_256: "sha384",
    TLS_CIPHER_CHACHA20_POLY1305: "sha256",
}

_TLS13_SUITES: Final = {
    "TLS_AES_128_GCM_SHA256": TLS_CIPHER_AES_GCM_128,
    "TLS_AES_256_GCM_SHA384": TLS_CIPHER_AES_GCM_256,
    "TLS_CHACHA20_POLY1305_SHA256": TLS_CIPHER_CHACHA20_POLY1305,
}
# OpenSSL names of the TLS 1.2 AEAD suites: [kx-[auth-]]CIPHER-HASH
_TLS12_SUITE: Final = re.compile(
    r"^(?:(?:ECDHE|DHE)-(?:ECDSA|RSA)-)?"
    r"(?:(?P<a128>AES128-GCM-SHA256)|(?P<a256>AES256-GCM-SHA384)|(?P<chacha>CHACHA20-POLY1305))$"
)


def cipher_hash(cipher_type: int) -> str:
    """The hash name (``"sha256"`` or ``"sha384"``) of ``cipher_type``'s suites.

    Raises:
        ValueError: not a supported ``TLS_CIPHER_*``.
    """
    try:
        return _CIPHER_HASH[cipher_type]
    except KeyError:
        raise ValueError(f"cipher_type {cipher_type} is not supported") from None


def cipher_for_suite(suite: str, version: int) -> int:
    """The ``TLS_CIPHER_*`` for an OpenSSL cipher suite name negotiated at ``version``.

    Raises:
        ValueError: the suite or version has no record layer here; the message
            names it.
    """
    if version == TLS_1_3_VERSION:
        cipher = _TLS13_SUITES.get(suite)
    elif version == TLS_1_2_VERSION:
        m = _TLS12_SUITE.match(suite)
        cipher = None
        if m is not None:
            cipher = (
                TLS_CIPHER_AES_GCM_128
                if m["a128"]
                else TLS_CIPHER_AES_GCM_256
                if m["a256"]
                else TLS_CIPHER_CHACHA20_POLY1305
            )
    else:
        raise ValueError(f"TLS version {version:#06x} is not supported (only TLS 1.2 and 1.3)")
    if cipher is None:
        raise ValueError(
            f"cipher suite {suite} is not supported: the record layer does AES-128-GCM, "
            "AES-256-GCM and ChaCha20-Poly1305 only"
        )
    return cipher


def _hash(hash_name: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[hash_name]()
    except KeyError:
        raise ValueError(f"hash {hash_name!r} is not sha256 or sha384") from None


def hkdf_expand_label(
    secret: bytes, label: bytes, context: bytes, length: int, hash_name: str
) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1): ``label`` without the ``"tls13 "`` prefix.

    Raises:
        ValueError: unknown hash, label or context too long, or a length HKDF
            cannot produce.
    """
    full = b"tls13 " + label
    if len(full) > 255 or len(context) > 255:
        raise ValueError("hkdf_expand_label: label or context longer than 255 bytes")
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context
    return HKDFExpand(_hash(hash_name), length, info).derive(secret)


def _check_secret(secret: bytes, cipher_type: int) -> str:
    hash_name = cipher_hash(cipher_type)
    if len(secret) != _HASH_SIZE[hash_name]:
        raise ValueError(
            f"traffic secret of {len(secret)} bytes; {cipher_name(cipher_type)} suites use "
            f"{hash_name} ({_HASH_SIZE[hash_name]} bytes)"
        )
    return hash_name


def tls13_crypto_info(secret: bytes, cipher_type: int, rec_seq: int = 0) -> TlsCryptoInfo:
    """The TLS 1.3 crypto info of a traffic secret, starting at record ``rec_seq``.

    Raises:
        ValueError: unsupported cipher, a secret whose length is not the suite's
            hash length, or ``rec_seq`` outside 0..2^64-1.
    """
    hash_name = _check_secret(secret, cipher_type)
    spec = _CIPHERS[cipher_type]
    key = hkdf_expand_label(secret, b"key", b"", spec.key_size, hash_name)
    iv = hkdf_expand_label(secret, b"iv", b"", 12, hash_name)
    if not 0 <= rec_seq < 1 << 64:
        raise ValueError(f"rec_seq {rec_seq} does not fit 64 bits")
    salt_size = spec.salt_size
    return TlsCryptoInfo(
        version=TLS_1_3_VERSION,
        cipher_type=cipher_type,
        key=key,
        iv=iv[salt_size:],
        salt=iv[:salt_size],
        rec_seq=rec_seq.to_bytes(8, "big"),
    )


def tls13_next_secret(secret: bytes, cipher_type: int) -> bytes:
    """``application_traffic_secret_N+1`` (RFC 8446 §7.2, label "traffic upd").

    Raises:
        ValueError: unsupported cipher or a secret of the wrong length.
    """
    hash_name = _check_secret(secret, cipher_type)
    return hkdf_expand_label(secret, b"traffic upd", b"", _HASH_SIZE[hash_name], hash_name)


def tls12_prf(secret: bytes, label: bytes, seed: bytes, length: int, hash_name: str) -> bytes:
    """The TLS 1.2 PRF (RFC 5246 §5): ``P_hash(secret, label || seed)``."""
    digest = _hash(hash_name).name
    full_seed = label + seed
    out = bytearray()
    a = full_seed
    while len(out) < length:
        a = hmac.digest(secret, a, digest)
        out += hmac.digest(secret, a + full_seed, digest)
    return bytes(out[:length])


def tls12_crypto_infos(
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    cipher_type: int,
    *,
    client_seq: int,
    server_seq: int,
) -> tuple[TlsCryptoInfo, TlsCryptoInfo]:
    """``(client_write, server_write)`` crypto infos of a TLS 1.2 session.

    ``client_seq``/``server_seq`` are the sequence numbers of the next record
    each side sends (1 right after the handshake: the Finished took 0). For
    AES-GCM the first explicit nonce (``iv``) is the sequence number, so the
    explicit nonce equals the sequence number record after record (unique per
    key, as RFC 5288 requires); a receiver takes it from the wire anyway.

    Raises:
        ValueError: unsupported cipher, a master secret not 48 bytes, randoms
            not 32 bytes, or a sequence number outside 0..2^64-1.
    """
    hash_name = cipher_hash(cipher_type)
    if len(master_secret) != 48:
        raise ValueError(f"master_secret of {len(master_secret)} bytes, TLS 1.2 uses 48")
    for name, rnd in (("client_random", client_random), ("server_random", server_random)):
        if len(rnd) != 32:
            raise ValueError(f"{name} of {len(rnd)} bytes, TLS uses 32")
    for name, seq in (("client_seq", client_seq), ("server_seq", server_seq)):
        if not 0 <= seq < 1 << 64:
            raise ValueError(f"{name} {seq} does not fit 64 bits")
    spec = _CIPHERS[cipher_type]
    iv_len = 12 if cipher_type == TLS_CIPHER_CHACHA20_POLY1305 else spec.salt_size
    block = tls12_prf(
        master_secret,
        b"key expansion",
        server_random + client_random,
        2 * spec.key_size + 2 * iv_len,
        hash_name,
    )
    k = spec.key_size
    keys = (block[:k], block[k : 2 * k])
    ivs = (block[2 * k : 2 * k + iv_len], block[2 * k + iv_len : 2 * k + 2 * iv_len])
    infos = []
    for key, fixed_iv, seq in zip(keys, ivs, (client_seq, server_seq), strict=True):
        rec_seq = seq.to_bytes(8, "big")
        if cipher_type == TLS_CIPHER_CHACHA20_POLY1305:
            info = TlsCryptoInfo(TLS_1_2_VERSION, cipher_type, key, fixed_iv, b"", rec_seq)
        else:
            info = TlsCryptoInfo(TLS_1_2_VERSION, cipher_type, key, rec_seq, fixed_iv, rec_seq)
        infos.append(info)
    return infos[0], infos[1]
