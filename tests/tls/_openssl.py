"""Test-only reach into the OpenSSL under Python's ``ssl``.

Python 3.11 has no API for TLS 1.3 cipher suites (``set_ciphers`` is TLS 1.2
only) nor for ``SSL_key_update``. The interop tests need both, against a
real, unmodified OpenSSL peer, so they call libssl through ctypes on the
pointers CPython's ``_ssl`` objects hold (``PySSLContext.ctx`` and
``PySSLSocket.ssl``, the first fields after the object header / the socket
weakref; stable across CPython 3.8-3.13).
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl

_lib = ctypes.CDLL(_ssl.__file__)
_set_suites = _lib.SSL_CTX_set_ciphersuites
_set_suites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_set_suites.restype = ctypes.c_int
_key_update = _lib.SSL_key_update
_key_update.argtypes = [ctypes.c_void_p, ctypes.c_int]
_key_update.restype = ctypes.c_int

_HEAD = object.__basicsize__
SSL_KEY_UPDATE_NOT_REQUESTED = 0
SSL_KEY_UPDATE_REQUESTED = 1


def set_tls13_suites(ctx: ssl.SSLContext, suites: str) -> None:
    """``SSL_CTX_set_ciphersuites``: restrict the TLS 1.3 suites of ``ctx``.

    Raises:
        ValueError: OpenSSL refused the list.
    """
    ptr = ctypes.c_void_p.from_address(id(ctx) + _HEAD).value
    if not _set_suites(ptr, suites.encode()):
        raise ValueError(f"OpenSSL refused TLS 1.3 suites {suites!r}")
    got = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]
    if got != suites.split(":"):
        raise ValueError(f"TLS 1.3 suites are {got}, not {suites}")


def request_key_update(obj: ssl.SSLObject, requested: bool = True) -> None:
    """``SSL_key_update``: the next write sends a KeyUpdate (asking the peer to
    update too when ``requested``).

    Raises:
        ValueError: OpenSSL refused (not TLS 1.3, or the handshake is not done).
    """
    sslsock = obj._sslobj  # type: ignore[attr-defined]
    ptr = ctypes.c_void_p.from_address(id(sslsock) + _HEAD + ctypes.sizeof(ctypes.c_void_p))
    kind = SSL_KEY_UPDATE_REQUESTED if requested else SSL_KEY_UPDATE_NOT_REQUESTED
    if _key_update(ptr.value, kind) != 1:
        raise ValueError("SSL_key_update refused")


def tls13_suites_offered() -> list[str]:
    """The TLS 1.3 suites the installed OpenSSL enables by default."""
    ctx = ssl.create_default_context()
    return [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"]
