"""``TlsInfo``: what a connection's handshake agreed on, readable by programs.

Theory of operation
-------------------
The kernel's TLS ULP reports its version and cipher through the ULP's
``get_info`` (``tls_get_info``: ``TLS_INFO_VERSION``, ``TLS_INFO_CIPHER``
under ``INET_DIAG_ULP_INFO``) to ``ss``, not to BPF programs. skmsg goes
further (beyond the kernel: ``docs/kernel-differences.md``): L7 policy on a
TLS connection wants to choose by server name, ALPN protocol or client
certificate, so the plugin publishes one frozen :class:`TlsInfo` per
connection on its socket once the handshake is done (``sk.ulp_info``,
read by a program as ``skb.sk.tls`` / ``msg.sk.tls``; ``None`` before).

Everything here is read from the handshake, never from the peer's later
bytes: the server name from the ClientHello bytes the hand-off kept (what
the client sent, on both sides), the rest from OpenSSL's ``SSLObject``
(version, suite, ALPN, the peer's certificate, parsed with ``cryptography``).

This module also holds the ULP's registration (:data:`TLS_ULP`, the
kernel's ``tcp_ulp_ops`` named ``"tls"``) through which the core learns
that ``sk.tls`` is a name programs may read.
"""

from __future__ import annotations

import ssl
from typing import Final

import attrs
from cryptography import x509
from cryptography.x509.oid import NameOID

from ._codec import TLS_1_2_VERSION, TLS_1_3_VERSION, cipher_name

__all__ = ["TLS_ULP", "TlsInfo", "TlsUlpOps"]

_VERSION_NAMES: Final = {TLS_1_2_VERSION: "TLSv1.2", TLS_1_3_VERSION: "TLSv1.3"}
#: Under TLS 1.3 the AEAD fixes the suite (RFC 8446 B.4).
_TLS13_SUITE_NAMES: Final = {
    51: "TLS_AES_128_GCM_SHA256",
    52: "TLS_AES_256_GCM_SHA384",
    54: "TLS_CHACHA20_POLY1305_SHA256",
}


@attrs.frozen
class TlsUlpOps:
    """``struct tcp_ulp_ops``: a ULP's registration with the core
    (``skmsg_ulps``). ``name`` is what ``sk.ulp`` says and what programs
    read the ULP's :class:`TlsInfo` under (``sk.tls``)."""

    name: str


#: The TLS ULP (``tls_ulp_ops``, ``tcp_register_ulp``).
TLS_ULP: Final = TlsUlpOps("tls")


@attrs.frozen
class TlsInfo:
    """What one TLS connection's handshake agreed on: ``sk.tls`` in programs,
    :attr:`TlsSocket.info <skmsg_tls.TlsSocket.info>` in the application.

    Attributes:
        version: the protocol version by name, as ``ssl.SSLObject.version()``
            and ``trio.SSLStream.version()`` give it: ``"TLSv1.3"``,
            ``"TLSv1.2"``.
        cipher: the cipher suite by OpenSSL's name, as
            ``ssl.SSLObject.cipher()[0]`` gives it: ``"TLS_AES_128_GCM_SHA256"``,
            ``"ECDHE-RSA-AES128-GCM-SHA256"``. With keys from
            :func:`~skmsg_tls.enable_tls` (no handshake here) it is the name
            the cipher fixes under TLS 1.3, and the kernel's cipher name
            (``"AES_GCM_128"``) under TLS 1.2, where the key exchange is unknown.
        version_number: the version as the kernel numbers it
            (``TLS_1_3_VERSION`` = ``0x0304``; ``TLS_INFO_VERSION``).
        cipher_type: the kernel's cipher (``TLS_CIPHER_AES_GCM_128`` ...;
            ``TLS_INFO_CIPHER``).
        server_side: this end's role (``None``: unknown, keys from ``enable_tls``).
        server_name: the server name (SNI) the client sent in its ClientHello,
            on both ends: on a client what it asked for, on a server what the
            client asked it for; lower-cased (DNS names compare case-blind),
            bytes that are not ASCII as ``\\xNN``; ``None`` when the client
            sent none (``server_hostname`` an IP address, or no name).
        alpn_protocol: the ALPN protocol both agreed on (``"h2"``), ``None``
            when none was.
        peer_subject: the peer certificate's subject as an RFC 4514 string
            (``"CN=client,O=Example"``), ``None`` when the peer sent no
            certificate (a client the server did not ask for one).
        peer_issuer: its issuer, the same way.
        peer_common_name: the subject's first common name (CN), if it has one.
        peer_verified: OpenSSL verified the peer's certificate chain against
            this end's trust store (the context's ``verify_mode`` was not
            ``CERT_NONE``); the host name check is the context's
            ``check_hostname``. A policy that trusts ``peer_subject`` checks
            this first.
    """

    version: str
    cipher: str
    version_number: int
    cipher_type: int
    server_side: bool | None = None
    server_name: str | None = None
    alpn_protocol: str | None = None
    peer_subject: str | None = None
    peer_issuer: str | None = None
    peer_common_name: str | None = None
    peer_verified: bool = False

    @classmethod
    def from_crypto(cls, version: int, cipher_type: int, server_side: bool | None) -> TlsInfo:
        """What keys from elsewhere (:func:`~skmsg_tls.enable_tls`) tell: the
        version and cipher, nothing of the handshake."""
        return cls(
            _VERSION_NAMES.get(version, f"{version:#06x}"),
            _TLS13_SUITE_NAMES.get(cipher_type, cipher_name(cipher_type))
            if version == TLS_1_3_VERSION
            else cipher_name(cipher_type),
            version,
            cipher_type,
            server_side,
        )

    @classmethod
    def from_handshake(
        cls,
        sslobj: ssl.SSLObject,
        *,
        version: int,
        cipher_type: int,
        server_side: bool,
        server_name: str | None,
    ) -> TlsInfo:
        """What a finished handshake in ``sslobj`` agreed on; ``server_name``
        as read from the ClientHello.

        Raises:
            ValueError: the peer's certificate does not parse (the message
                says why).
        """
        cipher = sslobj.cipher()
        subject = issuer = common_name = None
        der = sslobj.getpeercert(binary_form=True)
        if der:
            try:
                cert = x509.load_der_x509_certificate(der)
                subject = cert.subject.rfc4514_string()
                issuer = cert.issuer.rfc4514_string()
                cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            except ValueError as exc:
                raise ValueError(f"the peer certificate does not parse: {exc}") from exc
            if cns:
                value = cns[0].value
                common_name = value if isinstance(value, str) else value.decode("latin-1")
        return cls(
            sslobj.version() or _VERSION_NAMES.get(version, f"{version:#06x}"),
            cipher[0] if cipher else cipher_name(cipher_type),
            version,
            cipher_type,
            server_side,
            server_name,
            sslobj.selected_alpn_protocol(),
            subject,
            issuer,
            common_name,
            bool(der) and sslobj.context.verify_mode != ssl.CERT_NONE,
        )


def host_name(raw: bytes) -> str:
    """A ``HostName`` from the ``server_name`` extension as a ``str``:
    lower-cased ASCII, other bytes as ``\\xNN``."""
    return raw.decode("ascii", "backslashreplace").lower()
