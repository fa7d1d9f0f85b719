"""TLS for ``skmsg proxy``: contexts, a self-signed certificate, and the two hops.

Theory of operation
-------------------
``--tls`` terminates TLS from clients: each accepted client stream enters the
``clients`` map first (the kernel's order), then :func:`skmsg_tls.start_tls`
runs the handshake server-side and the record layer becomes skmsg's, so the
stream parser and verdict see the client's plaintext. ``--backend-tls``
originates TLS to the backends: each backend connection enters its map, then
``start_tls`` runs client-side. A redirect of plaintext to a TLS backend (or
back to a TLS client) is sealed with that connection's own keys (the
kernel's ``MSG_SENDPAGE_NOPOLICY`` path): the policy sees plaintext either way.

With ``--tls`` and no ``--cert``/``--key``, a self-signed certificate is made
at start-up (:func:`self_signed_certificate`, with ``cryptography``: an
ECDSA P-256 key, valid for a day, for ``localhost``, ``127.0.0.1`` and
``::1`` and the listening host) and its PEM path is printed so a client can
trust it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence

import attrs

__all__ = [
    "TlsOptions",
    "client_context",
    "self_signed_certificate",
    "server_context",
    "write_self_signed",
]


@attrs.frozen
class TlsOptions:
    """The proxy's TLS settings: ``server`` terminates client TLS (``None``: plain
    clients), ``client`` originates TLS to backends (``None``: plain backends),
    ``backend_hostname`` the name checked in backend certificates, and
    ``cert_path`` the certificate clients should trust when one was made."""

    server: ssl.SSLContext | None = None
    client: ssl.SSLContext | None = None
    backend_hostname: str | None = None
    cert_path: str | None = None


def self_signed_certificate(hostnames: Sequence[str] = ("localhost",)) -> tuple[bytes, bytes]:
    """A fresh self-signed certificate for ``hostnames`` (names or IP addresses,
    plus ``localhost``, ``127.0.0.1`` and ``::1``): ``(cert_pem, key_pem)``.

    ECDSA P-256, SHA-256, valid from an hour ago for one day; it is its own CA
    (``BasicConstraints(ca=True)``), so a client can trust exactly it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in (*hostnames, "localhost", "127.0.0.1", "::1"):
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skmsg proxy (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def write_self_signed(hostnames: Sequence[str] = ("localhost",)) -> tuple[str, str]:
    """Make a self-signed certificate and write it to a fresh private directory:
    ``(cert_path, key_path)``; the key file is readable by its owner only."""
    cert_pem, key_pem = self_signed_certificate(hostnames)
    folder = tempfile.mkdtemp(prefix="skmsg-tls-")
    cert_path = os.path.join(folder, "cert.pem")
    key_path = os.path.join(folder, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return cert_path, key_path


def server_context(cert_path: str, key_path: str | None = None) -> ssl.SSLContext:
    """A server context with the certificate chain at ``cert_path`` (and its key).

    Raises:
        OSError, ssl.SSLError: the files cannot be read or do not match.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def client_context(cafile: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context: trust ``cafile`` (else the system's CAs); ``verify=False``
    checks neither the chain nor the name (for test backends only)."""
    ctx = ssl.create_default_context(cafile=cafile)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
