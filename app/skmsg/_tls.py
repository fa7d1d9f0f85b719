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

Policies on TLS clients read what each client's handshake agreed on from
the socket they are given: ``skb.sk.tls`` (a :class:`skmsg_tls.TlsInfo`:
``server_name`` the client asked for, ``alpn_protocol``, ``version``,
``cipher``, the client certificate's ``peer_subject``), set once the
handshake is done, so every message a client sends is verdicted with it
(``examples/tls_sni_route.py`` routes on it). ``--alpn`` offers ALPN
protocols to clients (none by default, so ``alpn_protocol`` is None); a
client certificate is asked for only by a ``--cert`` context configured to.

With ``--tls`` and no ``--cert``/``--key``, a self-signed certificate is made
at start-up (:func:`self_signed_certificate`, with ``cryptography``: an
ECDSA P-256 key, valid for a day, for ``localhost``, ``127.0.0.1`` and
``::1`` and the listening host) and its PEM path is printed so a client can
trust it.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import skmsg_tls
from skmsg_core.runtime import RateLimitedLog

if TYPE_CHECKING:
    from skmsg_tcp import SkStream

__all__ = [
    "TlsOptions",
    "add_tls_arguments",
    "client_context",
    "self_signed_certificate",
    "server_context",
    "terminate",
    "tls_options",
    "write_self_signed",
]

log = logging.getLogger("skmsg")
#: One event per kind of handshake failure every few seconds, however many clients fail.
limited_log = RateLimitedLog(log)


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
    now = datetime.datetime.now(datetime.UTC)
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


def server_context(
    cert_path: str, key_path: str | None = None, *, alpn: Sequence[str] = ()
) -> ssl.SSLContext:
    """A server context with the certificate chain at ``cert_path`` (and its key).

    A client that closes TCP without ``close_notify`` (many HTTP clients do)
    ends its connection as a close would (``OP_IGNORE_UNEXPECTED_EOF``, what
    ``trio.SSLStream(https_compatible=True)`` does), not as a TLS error.
    ``alpn``: the ALPN protocols offered, in the server's order of preference
    (a client offering none of them gets none: ``alpn_protocol`` None).

    Raises:
        OSError, ssl.SSLError: the files cannot be read or do not match.
        ValueError: an ALPN protocol name is empty, not ASCII or longer than
            255 bytes (RFC 7301 §3.1).
    """
    for proto in alpn:
        if not proto or not proto.isascii() or len(proto) > 255:
            raise ValueError(
                f"ALPN protocol {proto!r} must be 1 to 255 ASCII characters (RFC 7301)"
            )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(cafile: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context: trust ``cafile`` (else the system's CAs); ``verify=False``
    checks neither the chain nor the name (for test backends only).

    A backend that closes TCP without ``close_notify`` between records (many
    servers answer the proxy's ``close_notify`` so) ends its connection as a
    close would (``OP_IGNORE_UNEXPECTED_EOF``), not as a failure held against
    its health: a reply it owed is still known lost by the reply count, and
    the client told (``backend_lost``), as with a plain TCP backend's EOF."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- the command line ---------------------------------------------------------------------------


def add_tls_arguments(proxy: argparse.ArgumentParser) -> None:
    """Add ``skmsg proxy``'s TLS options to its argument parser."""
    group = proxy.add_argument_group(
        "TLS (the kTLS-style record layer: the policy sees plaintext either way)"
    )
    group.add_argument(
        "--tls", action="store_true",
        help="terminate TLS from clients (a self-signed certificate for the listen "
        "host and localhost is made at start-up unless --cert is given; its path is printed)",
    )
    group.add_argument(
        "--cert", metavar="PEM", default=None,
        help="with --tls: the server certificate chain (PEM); its key too unless --key",
    )
    group.add_argument("--key", metavar="PEM", default=None, help="with --cert: the private key")
    group.add_argument(
        "--alpn", metavar="PROTO[,PROTO...]", default=None,
        help="with --tls: the ALPN protocols offered to clients, preferred first "
        "(a policy reads the one agreed as skb.sk.tls.alpn_protocol)",
    )
    group.add_argument(
        "--backend-tls", action="store_true", help="originate TLS to every --backend"
    )
    group.add_argument(
        "--backend-ca", metavar="PEM", default=None,
        help="with --backend-tls: trust these CA certificates (default: the system's)",
    )
    group.add_argument(
        "--backend-hostname", metavar="NAME", default=None,
        help="with --backend-tls: the name to send (SNI) and check in backend "
        "certificates (default: each backend's host)",
    )
    group.add_argument(
        "--backend-insecure", action="store_true",
        help="with --backend-tls: do not verify backend certificates (testing only)",
    )


def tls_options(args: argparse.Namespace, listen_host: str, *, have_backends: bool) -> (
    TlsOptions | None
):
    """The :class:`TlsOptions` the parsed arguments ask for (``None``: no TLS).

    Raises:
        ValueError: an option without the one it needs (``--cert`` without
            ``--tls``, ``--backend-ca`` without ``--backend-tls``, ``--backend-tls``
            with the embedded echo backends, ``--alpn`` without ``--tls``), an
            ``--alpn`` name that is not 1 to 255 ASCII characters, or a
            certificate, key or CA file that cannot be read or used; the
            message names the option.
    """
    if (args.cert or args.key) and not args.tls:
        raise ValueError("--cert/--key need --tls")
    alpn = _alpn(args.alpn)
    if alpn and not args.tls:
        raise ValueError("--alpn needs --tls")
    if args.key and not args.cert:
        raise ValueError("--key needs --cert")
    if (args.backend_ca or args.backend_hostname or args.backend_insecure) and (
        not args.backend_tls
    ):
        raise ValueError("--backend-ca/--backend-hostname/--backend-insecure need --backend-tls")
    if args.backend_tls and not have_backends:
        raise ValueError("--backend-tls needs --backend (the embedded echo backends are plain)")
    if not args.tls and not args.backend_tls:
        return None
    server = None
    cert_path = None
    if args.tls:
        made = args.cert is None
        cert, key = (args.cert, args.key) if not made else write_self_signed([listen_host])
        try:
            server = server_context(cert, key, alpn=alpn)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--cert {cert}: cannot use it: {exc}") from exc
        cert_path = cert if made else None
    client = None
    if args.backend_tls:
        try:
            client = client_context(args.backend_ca, verify=not args.backend_insecure)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--backend-ca {args.backend_ca}: cannot use it: {exc}") from exc
    return TlsOptions(server, client, args.backend_hostname, cert_path)


def _alpn(value: str | None) -> tuple[str, ...]:
    """``--alpn``'s comma-separated protocol names.

    Raises:
        ValueError: an empty name, or one not of 1 to 255 ASCII characters.
    """
    if value is None:
        return ()
    names = tuple(p.strip() for p in value.split(","))
    for name in names:
        if not name or not name.isascii() or len(name) > 255:
            raise ValueError(
                f"--alpn {value!r}: {name!r} is not a protocol name "
                "(1 to 255 ASCII characters, comma-separated)"
            )
    return names


# -- the proxy's two hops -----------------------------------------------------------------------


async def terminate(client: SkStream, options: TlsOptions, timeout: float) -> str | None:
    """Run the server-side handshake on a client already in its map, for at most
    ``timeout`` seconds. ``None`` when it completed; else (and a rate-limited
    ``tls_handshake_failed`` event) why it did not, ``"timeout"`` or
    ``"failed"``: the client is then to be closed."""
    assert options.server is not None
    try:
        with trio.fail_after(timeout):
            # the proxy's policy is per message: frame the plaintext with its parser
            await skmsg_tls.start_tls(client, options.server, server_side=True, strparser=True)
    except trio.TooSlowError:
        limited_log.event(("handshake", "timeout"), "tls_handshake_failed",
                          client=_peer(client), error="timeout", seconds=timeout,
                          limit="--handshake-timeout")
        return "timeout"
    except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        limited_log.event(("handshake", "failed"), "tls_handshake_failed",
                          client=_peer(client), error=_reason(exc))
        return "failed"
    return None


def _peer(stream: SkStream) -> str:
    addr = stream.sk.remote_addr
    return f"{addr[0]}:{addr[1]}" if addr and len(addr) > 1 else "?"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer (timed out)"
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    return str(cause or exc) or type(exc).__name__
