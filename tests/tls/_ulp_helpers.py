"""Shared set-up for the ULP tests: matching keys on a real loopback pair."""

from __future__ import annotations

import os

import attrs

import skmsg_tls as tls
from skmsg_tcp import SkStream


@attrs.frozen
class Keys:
    """One connection's keys: ``a2b`` seals what A sends (B opens it), ``b2a`` back."""

    a2b: tls.TlsCryptoInfo
    b2a: tls.TlsCryptoInfo
    a2b_secret: bytes | None
    b2a_secret: bytes | None


def make_keys(
    version: int = tls.TLS_1_3_VERSION, cipher: int = tls.TLS_CIPHER_AES_GCM_128
) -> Keys:
    """Fresh random keys for both directions (TLS 1.3 from traffic secrets)."""
    if version == tls.TLS_1_3_VERSION:
        hlen = 48 if cipher == tls.TLS_CIPHER_AES_GCM_256 else 32
        s1, s2 = os.urandom(hlen), os.urandom(hlen)
        return Keys(tls.tls13_crypto_info(s1, cipher), tls.tls13_crypto_info(s2, cipher), s1, s2)
    if cipher == tls.TLS_CIPHER_CHACHA20_POLY1305:
        sizes = (32, 12, 0)
    else:
        sizes = (16 if cipher == tls.TLS_CIPHER_AES_GCM_128 else 32, 8, 4)

    def one() -> tls.TlsCryptoInfo:
        key, iv, salt = (os.urandom(n) for n in sizes)
        return tls.TlsCryptoInfo(version, cipher, key, iv, salt, bytes(8))

    return Keys(one(), one(), None, None)


async def enable_both(
    a: SkStream, b: SkStream, keys: Keys | None = None
) -> tuple[tls.TlsSocket, tls.TlsSocket]:
    """Install the TLS ULP on both ends of a pair with matching keys."""
    k = keys or make_keys()
    ta = await tls.enable_tls(a, k.a2b, k.b2a, tx_secret=k.a2b_secret, rx_secret=k.b2a_secret)
    tb = await tls.enable_tls(b, k.b2a, k.a2b, tx_secret=k.b2a_secret, rx_secret=k.a2b_secret)
    return ta, tb


async def read_exactly(stream: SkStream, n: int) -> bytes:
    """``receive_some`` until ``n`` bytes came.

    Raises:
        AssertionError: EOF first.
    """
    got = bytearray()
    while len(got) < n:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def read_records(
    stream: SkStream, opener: tls.RecordOpener, n: int
) -> list[tuple[int, bytes]]:
    """Read raw bytes from a stream without TLS and open ``n`` records."""
    out: list[tuple[int, bytes]] = []
    while len(out) < n:
        rec = opener.next_record()
        if rec is not None:
            out.append(rec)
            continue
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {len(out)} of {n} records"
        opener.feed(chunk)
    return out
