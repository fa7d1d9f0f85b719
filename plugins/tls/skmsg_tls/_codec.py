"""The TLS record layer, sans-I/O: seal plaintext into records, open records.

Mirrors the software record path of Linux kTLS (``net/tls/tls_sw.c``,
``tls_main.c``): a direction is configured with a crypto info shaped like the
kernel's ``tls12_crypto_info_*`` (version, cipher type, key, iv, salt,
record sequence), TX and RX independently, and only the record layer runs
here; the handshake stays in a TLS library.

Rules, as the kernel applies them:

- A record carries at most ``TLS_MAX_PAYLOAD_SIZE`` (2^14) bytes of plaintext,
  or fewer when the handshake negotiated a smaller limit (``max_fragment_length``,
  RFC 6066 §4): :attr:`~_Direction.record_size_limit` then caps what a sealer
  seals and what an opener accepts (a longer record is ``EMSGSIZE``).
- TLS 1.3 (RFC 8446 §5.2): outer type 23, legacy version 0x0303, the header is
  the AAD; the plaintext is ``content || inner type || zero padding``; the
  nonce is ``iv XOR seq``. A plaintext of only zeros (no inner type) is
  ``EBADMSG``.
- TLS 1.2 GCM (RFC 5288): nonce ``salt || explicit``, the 8-byte explicit part
  sent in clear after the header. The sender's explicit nonce is a counter
  that starts at ``info.iv`` and steps by one per record, as the kernel's TX
  does; the receiver takes it from the wire. AAD ``seq || type || version ||
  plaintext length``.
- TLS 1.2 ChaCha20-Poly1305 (RFC 7905): nonce ``iv XOR seq``, no explicit part.
- A sequence number never wraps: after record 2^64-1 a direction is exhausted
  and every further record fails (``EBADMSG``, as ``tls_advance_record_sn``);
  TLS 1.3 may rekey, which restarts the sequence.
- Receive errors follow ``tls_rx_msg_size`` and ``tls_decrypt_sg``: a legacy
  version other than 0x0303 is ``EINVAL``, a record longer than the largest
  allowed is ``EMSGSIZE``, one shorter than the cipher overhead or failing
  authentication is ``EBADMSG``. After an error the opener is poisoned: no
  byte of the bad record is released and every further call raises the same
  error, as a kTLS socket stays in error. Each error also names the fatal
  alert TLS answers it with (:attr:`TlsRecordError.alert`): ``bad_record_mac``
  for a record that fails authentication (RFC 8446 §5.2), ``record_overflow``
  for one too long, ``unexpected_message`` for an outer type TLS 1.3 does not
  allow or a plaintext without an inner type (§5.4), ``decode_error`` (TLS 1.3)
  or ``protocol_version`` (TLS 1.2) for a wrong legacy version, as OpenSSL.
- TLS 1.3 KeyUpdate received: once a record whose last handshake message is a
  KeyUpdate has been returned, reads fail ``EKEYEXPIRED`` (without poisoning)
  until :meth:`RecordOpener.rekey` installs the next key, as newer kernels do.

Theory of operation: :class:`RecordSealer` turns one plaintext into one record
(``bytes`` in, ``bytes`` out); :class:`RecordOpener` takes raw bytes in any
split (:meth:`~RecordOpener.feed`) and hands out whole records in order
(:meth:`~RecordOpener.next_record`). Neither does I/O. The AEAD objects are
built once per key; nonces are built with an int XOR.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from skmsg_core import TLS_MAX_PAYLOAD_SIZE

from ._alerts import (
    ALERT_BAD_RECORD_MAC,
    ALERT_DECODE_ERROR,
    ALERT_INTERNAL_ERROR,
    ALERT_PROTOCOL_VERSION,
    ALERT_RECORD_OVERFLOW,
    ALERT_UNEXPECTED_MESSAGE,
)

__all__ = [
    "TLS_1_2_VERSION",
    "TLS_1_3_VERSION",
    "TLS_CIPHER_AES_GCM_128",
    "TLS_CIPHER_AES_GCM_256",
    "TLS_CIPHER_CHACHA20_POLY1305",
    "TLS_HANDSHAKE_KEY_UPDATE",
    "TLS_MAX_PAYLOAD_SIZE",
    "TLS_MIN_RECORD_SIZE_LIMIT",
    "TLS_RECORD_TYPE_ALERT",
    "TLS_RECORD_TYPE_CHANGE_CIPHER_SPEC",
    "TLS_RECORD_TYPE_DATA",
    "TLS_RECORD_TYPE_HANDSHAKE",
    "RecordOpener",
    "RecordSealer",
    "TlsCryptoInfo",
    "TlsRecordError",
    "key_update_message",
]

# include/uapi/linux/tls.h
TLS_1_2_VERSION: Final = 0x0303
TLS_1_3_VERSION: Final = 0x0304
TLS_CIPHER_AES_GCM_128: Final = 51
TLS_CIPHER_AES_GCM_256: Final = 52
TLS_CIPHER_CHACHA20_POLY1305: Final = 54

# include/net/tls.h
TLS_RECORD_TYPE_CHANGE_CIPHER_SPEC: Final = 20
TLS_RECORD_TYPE_ALERT: Final = 21
TLS_RECORD_TYPE_HANDSHAKE: Final = 22
TLS_RECORD_TYPE_DATA: Final = 23

#: Handshake message type of a TLS 1.3 KeyUpdate (RFC 8446 §4.6.3).
TLS_HANDSHAKE_KEY_UPDATE: Final = 24

#: The smallest record size limit a peer may ask for (RFC 8449 §4; the
#: ``max_fragment_length`` values of RFC 6066 are 512 to 4096).
TLS_MIN_RECORD_SIZE_LIMIT: Final = 64

TLS_HEADER_SIZE: Final = 5
TLS_TAG_SIZE: Final = 16
_LEGACY_VERSION: Final = 0x0303
_MAX_SEQ: Final = (1 << 64) - 1
_MASK64: Final = (1 << 64) - 1

_VERSION_NAMES: Final = {TLS_1_2_VERSION: "TLS 1.2", TLS_1_3_VERSION: "TLS 1.3"}


@attrs.frozen
class _CipherSpec:
    name: str
    key_size: int
    iv_size: int
    salt_size: int
    aead: type[AESGCM] | type[ChaCha20Poly1305]


_CIPHERS: Final[dict[int, _CipherSpec]] = {
    TLS_CIPHER_AES_GCM_128: _CipherSpec("AES_GCM_128", 16, 8, 4, AESGCM),
    TLS_CIPHER_AES_GCM_256: _CipherSpec("AES_GCM_256", 32, 8, 4, AESGCM),
    TLS_CIPHER_CHACHA20_POLY1305: _CipherSpec("CHACHA20_POLY1305", 32, 12, 0, ChaCha20Poly1305),
}
_REC_SEQ_SIZE: Final = 8


def cipher_name(cipher_type: int) -> str:
    """The kernel's name for ``cipher_type`` (``AES_GCM_128``...), or its number."""
    spec = _CIPHERS.get(cipher_type)
    return spec.name if spec is not None else str(cipher_type)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def _check_version(inst: TlsCryptoInfo, attr: attrs.Attribute[int], value: int) -> None:
    if value not in _VERSION_NAMES:
        raise ValueError(
            f"TlsCryptoInfo.version: {value:#06x} is not TLS_1_2_VERSION (0x0303) "
            "or TLS_1_3_VERSION (0x0304)"
        )


def _check_cipher(inst: TlsCryptoInfo, attr: attrs.Attribute[int], value: int) -> None:
    if value not in _CIPHERS:
        raise ValueError(
            f"TlsCryptoInfo.cipher_type: {value} is not one of TLS_CIPHER_AES_GCM_128 (51), "
            "TLS_CIPHER_AES_GCM_256 (52), TLS_CIPHER_CHACHA20_POLY1305 (54)"
        )


def _size_checker(field: str) -> Callable[[TlsCryptoInfo, attrs.Attribute[bytes], bytes], None]:
    def check(inst: TlsCryptoInfo, attr: attrs.Attribute[bytes], value: bytes) -> None:
        spec = _CIPHERS[inst.cipher_type]
        want = _REC_SEQ_SIZE if field == "rec_seq" else getattr(spec, f"{field}_size")
        if len(value) != want:
            raise ValueError(
                f"TlsCryptoInfo.{field}: {len(value)} bytes, {spec.name} needs {want}"
            )

    return check


@attrs.frozen
class TlsCryptoInfo:
    """One direction's record-layer keys, shaped like ``struct tls12_crypto_info_*``.

    ``version`` is ``TLS_1_2_VERSION`` or ``TLS_1_3_VERSION``; ``cipher_type``
    one of the ``TLS_CIPHER_*`` numbers. Sizes as in the kernel: AES-GCM
    ``iv`` 8, ``key`` 16 or 32, ``salt`` 4; ChaCha20-Poly1305 ``iv`` 12,
    ``key`` 32, ``salt`` empty; ``rec_seq`` 8 (big-endian sequence number of
    the next record). For TLS 1.3 GCM the 12-byte write IV is ``salt || iv``;
    for TLS 1.2 GCM ``salt`` is the implicit nonce and ``iv`` the first
    explicit nonce the sender uses.

    Raises:
        ValueError: a field has a wrong value or size; the message names it.
        TypeError: a byte field is not bytes-like.
    """

    version: int = attrs.field(validator=_check_version)
    cipher_type: int = attrs.field(validator=_check_cipher)
    key: bytes = attrs.field(converter=_as_bytes, validator=_size_checker("key"), repr=False)
    iv: bytes = attrs.field(converter=_as_bytes, validator=_size_checker("iv"), repr=False)
    salt: bytes = attrs.field(converter=_as_bytes, validator=_size_checker("salt"), repr=False)
    rec_seq: bytes = attrs.field(converter=_as_bytes, validator=_size_checker("rec_seq"))

    @property
    def seq(self) -> int:
        """``rec_seq`` as an int."""
        return int.from_bytes(self.rec_seq, "big")

    def with_seq(self, seq: int) -> TlsCryptoInfo:
        """The same keys starting at record ``seq``.

        Raises:
            ValueError: ``seq`` is not in 0..2^64-1.
        """
        if not 0 <= seq <= _MAX_SEQ:
            raise ValueError(f"TlsCryptoInfo.rec_seq: {seq} does not fit 64 bits")
        return attrs.evolve(self, rec_seq=seq.to_bytes(8, "big"))


class TlsRecordError(OSError):
    """A TLS record could not be sealed or opened; ``.errno`` says why.

    ``EBADMSG``: authentication failed, a record shorter than the cipher
    overhead, a TLS 1.3 plaintext without an inner content type, or the
    sequence numbers exhausted. ``EINVAL``: a malformed header (legacy version,
    outer type). ``EMSGSIZE``: a record longer than allowed. ``EPROTO``: the
    stream ended inside a record. ``EKEYEXPIRED``: a KeyUpdate was received and
    the next key is not installed yet. These are faults of the remote peer's
    bytes (or of the keys given); local misuse raises ``ValueError``.

    ``alert`` is the fatal alert description a TLS endpoint answers the error
    with (``20`` bad_record_mac, ``22`` record_overflow, ...), or None when the
    error is not a fault of the peer's bytes (``EKEYEXPIRED``, sealing).
    """

    #: The fatal alert this error is answered with, if any.
    alert: int | None = None

    @classmethod
    def of(cls, err: int, what: str, alert: int | None = None) -> TlsRecordError:
        """Build one in :func:`skmsg_core.kernel_error`'s style: ``what`` names the
        record at fault, the errno's name follows; ``alert`` as the class says."""
        name = errno.errorcode.get(err, str(err))
        exc = cls(err, f"{what}: {name} ({os.strerror(err)})")
        exc.alert = alert
        return exc


def key_update_message(update_requested: bool) -> bytes:
    """The handshake message of a TLS 1.3 KeyUpdate (RFC 8446 §4.6.3), to be
    sealed as a ``TLS_RECORD_TYPE_HANDSHAKE`` record under the old key."""
    return bytes((TLS_HANDSHAKE_KEY_UPDATE, 0, 0, 1, 1 if update_requested else 0))


_HEADER = struct.Struct(">BHH")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_pack_header_into = _HEADER.pack_into
_TYPE_BYTE: Final = tuple(bytes((i,)) for i in range(256))
#: cryptography >= 45 seals and opens into a caller's buffer (no bytes object
#: of 16 KiB made and copied again per record); older releases take the
#: allocating path.
_HAVE_INTO: Final = hasattr(AESGCM, "encrypt_into") and hasattr(ChaCha20Poly1305, "encrypt_into")


def _bytes_view(buf: bytes | bytearray | memoryview) -> memoryview:
    """``buf`` as a view of unsigned bytes (what a staging view's slice takes)."""
    view = memoryview(buf)
    return view if view.format == "B" else view.cast("B")


def _too_long(n: int, limit: int) -> ValueError:
    if limit == TLS_MAX_PAYLOAD_SIZE:
        return ValueError(
            f"seal: {n} bytes of plaintext exceed TLS_MAX_PAYLOAD_SIZE ({TLS_MAX_PAYLOAD_SIZE})"
        )
    return ValueError(
        f"seal: {n} bytes of plaintext exceed the negotiated record size limit ({limit})"
    )


def _copying_encrypt_into(
    aead: Any,
) -> Callable[[bytes, bytes | bytearray | memoryview, bytes, memoryview], None]:
    """``encrypt_into`` for a cryptography release without it: encrypt, then
    copy the result into the buffer."""

    def encrypt_into(
        nonce: bytes, data: bytes | bytearray | memoryview, aad: bytes, buf: memoryview
    ) -> None:
        buf[:] = aead.encrypt(nonce, data, aad)

    return encrypt_into


class _Direction:
    """What sealer and opener share: the key state of one direction."""

    __slots__ = (
        "_aead",
        "_explicit",
        "_info",
        "_into",
        "_iv",
        "_max_plain",
        "_salt",
        "_seq",
        "_tls13",
    )

    def __init__(self, info: TlsCryptoInfo) -> None:
        self._max_plain: int = TLS_MAX_PAYLOAD_SIZE
        self._install(info)

    @property
    def record_size_limit(self) -> int:
        """The most plaintext one record may carry: ``TLS_MAX_PAYLOAD_SIZE``
        unless a smaller limit was negotiated (``max_fragment_length``). A key
        change (:meth:`rekey`) keeps it.

        Setting it raises ValueError outside ``TLS_MIN_RECORD_SIZE_LIMIT`` ..
        ``TLS_MAX_PAYLOAD_SIZE``.
        """
        return self._max_plain

    @record_size_limit.setter
    def record_size_limit(self, limit: int) -> None:
        if not TLS_MIN_RECORD_SIZE_LIMIT <= limit <= TLS_MAX_PAYLOAD_SIZE:
            raise ValueError(
                f"record_size_limit: {limit} is not {TLS_MIN_RECORD_SIZE_LIMIT}.."
                f"{TLS_MAX_PAYLOAD_SIZE}"
            )
        self._max_plain = limit

    def _install(self, info: TlsCryptoInfo) -> None:
        if not isinstance(info, TlsCryptoInfo):
            raise TypeError(f"expected TlsCryptoInfo, got {type(info).__name__}")
        self._info = info
        self._aead = _CIPHERS[info.cipher_type].aead(info.key)
        self._into = _HAVE_INTO
        self._tls13 = info.version == TLS_1_3_VERSION
        self._seq = info.seq
        # explicit nonce only for TLS 1.2 GCM; otherwise nonce = iv XOR seq
        self._explicit: int | None = None
        self._salt = info.salt
        if not self._tls13 and info.cipher_type != TLS_CIPHER_CHACHA20_POLY1305:
            self._explicit = int.from_bytes(info.iv, "big")
        self._iv = int.from_bytes(info.salt + info.iv, "big")

    def _check_rekey(self, info: TlsCryptoInfo) -> None:
        old = self._info
        if not isinstance(info, TlsCryptoInfo):
            raise TypeError(f"expected TlsCryptoInfo, got {type(info).__name__}")
        if old.version != TLS_1_3_VERSION:
            raise ValueError("rekey: only TLS 1.3 can rekey (the kernel answers EINVAL)")
        if info.version != old.version:
            raise ValueError(
                f"rekey: version {info.version:#06x} differs from the current "
                f"{old.version:#06x} (the kernel answers EINVAL)"
            )
        if info.cipher_type != old.cipher_type:
            raise ValueError(
                f"rekey: cipher {cipher_name(info.cipher_type)} differs from the current "
                f"{cipher_name(old.cipher_type)} (the kernel answers EINVAL)"
            )

    @property
    def seq(self) -> int:
        """The sequence number of the next record (2^64 once exhausted)."""
        return self._seq

    @property
    def version(self) -> int:
        """``TLS_1_2_VERSION`` or ``TLS_1_3_VERSION``."""
        return self._info.version

    @property
    def cipher_type(self) -> int:
        """The ``TLS_CIPHER_*`` in use."""
        return self._info.cipher_type


class RecordSealer(_Direction):
    """Seals plaintext into TLS records: the TX half of ``tls_sw``.

    ``seq`` is the next record's sequence number. Not thread-safe; one task
    owns it.
    """

    __slots__ = ("_stage",)

    def __init__(self, info: TlsCryptoInfo) -> None:
        self._stage: memoryview | None = None
        super().__init__(info)

    def seal(
        self,
        plaintext: bytes | bytearray | memoryview,
        content_type: int = TLS_RECORD_TYPE_DATA,
        *,
        padding: int = 0,
    ) -> bytes:
        """Seal ``plaintext`` into exactly one record and return its wire bytes.

        ``padding`` (TLS 1.3 only) appends that many zero bytes to the inner
        plaintext; ``len(plaintext) + padding`` may not exceed 2^14.

        Raises:
            ValueError: the plaintext is longer than :attr:`record_size_limit`,
                ``content_type`` is not 1..255, or padding is not allowed.
            TlsRecordError: ``EBADMSG``, the sequence numbers are exhausted
                (rekey under TLS 1.3, else close); nothing is sealed.
        """
        prefix, sealed = self._seal(plaintext, content_type, padding)
        return prefix + sealed

    def seal_into(
        self,
        out: bytearray,
        plaintext: bytes | bytearray | memoryview,
        content_type: int = TLS_RECORD_TYPE_DATA,
        *,
        padding: int = 0,
    ) -> int:
        """Append one sealed record to ``out``; return the number of bytes appended.

        Same rules and errors as :meth:`seal`; on an error ``out`` is unchanged.
        """
        prefix, sealed = self._seal(plaintext, content_type, padding)
        out += prefix
        out += sealed
        return len(prefix) + len(sealed)

    def seal_batch(
        self,
        records: Sequence[bytes | bytearray | memoryview],
        content_type: int = TLS_RECORD_TYPE_DATA,
        *,
        scratch: bytearray | None = None,
    ) -> memoryview:
        """Seal each of ``records`` into one record of ``content_type``, in order,
        back to back in one buffer (what one socket write sends); return a view
        of the sealed bytes.

        The same records as :meth:`seal` called once per element makes, but each
        is encrypted straight into its place: no ciphertext object per record
        and no second copy of it. The buffer is a new ``bytearray``, or
        ``scratch`` when given (grown first if too short; it is reused as is,
        never zero-filled again): the view is then valid until the next seal
        into ``scratch``.

        Raises:
            ValueError: an element is longer than :attr:`record_size_limit` or
                ``content_type`` is not 1..255.
            TlsRecordError: ``EBADMSG``, the sequence numbers run out before the
                last element.
            BufferError: ``scratch`` must grow while a view of it is alive.
            Nothing is sealed on an error: the sequence number is unchanged.
        """
        return self._seal_records(records, sum(map(len, records)), content_type, scratch)

    def seal_pieces(
        self,
        pieces: Sequence[bytes | bytearray | memoryview],
        content_type: int = TLS_RECORD_TYPE_DATA,
        *,
        scratch: bytearray | None = None,
    ) -> memoryview:
        """Seal the bytes of ``pieces``, in order, as records of
        :attr:`record_size_limit` bytes each (the last one shorter), back to
        back in one buffer; return a view of the sealed bytes (``scratch`` as
        :meth:`seal_batch` says). The records are those :meth:`seal_batch`
        makes of the pieces joined and cut every :attr:`record_size_limit`
        bytes, but when every piece but the last is a whole number of records
        (a redirect's messages are, as a rule) nothing is joined: each record
        is encrypted from its piece where it lies (under TLS 1.3, copied once
        with its inner content type into a staging buffer next to the
        sealer). When a piece boundary falls inside a record the pieces are
        joined first, in one C-level copy (cheaper than gathering each such
        record part by part in Python). The pieces are read while this runs
        only.

        Raises:
            ValueError: ``content_type`` is not 1..255.
            TlsRecordError: ``EBADMSG``, the sequence numbers run out before the
                last record.
            BufferError: ``scratch`` must grow while a view of it is alive.
            Nothing is sealed on an error: the sequence number is unchanged.
        """
        limit = self._max_plain
        views = [
            p if type(p) is memoryview and p.format == "B" else _bytes_view(p) for p in pieces
        ]
        if any(v.nbytes % limit for v in views[:-1]):
            views = [memoryview(b"".join(views))]
        records = [v[i : i + limit] for v in views for i in range(0, v.nbytes, limit)]
        return self._seal_records(records, sum(v.nbytes for v in views), content_type, scratch)

    def _stage_for(self) -> memoryview:
        """The staging buffer a record's inner plaintext is gathered into."""
        stage = self._stage
        if stage is None:
            stage = self._stage = memoryview(bytearray(TLS_MAX_PAYLOAD_SIZE + 1))
        return stage

    def _seal_records(
        self,
        records: Sequence[bytes | bytearray | memoryview],
        nbytes: int,
        content_type: int,
        scratch: bytearray | None,
    ) -> memoryview:
        """:meth:`seal_batch`'s work, ``nbytes`` the records' plaintext bytes."""
        if not 0 < content_type < 256:
            raise ValueError(f"seal: content type {content_type} is not 1..255")
        count = len(records)
        seq = self._seq
        if seq + count - 1 > _MAX_SEQ:
            raise TlsRecordError.of(
                errno.EBADMSG,
                "seal: TX sequence numbers exhausted (2^64 records); rekey or close",
            )
        tls13 = self._tls13
        explicit = self._explicit
        most = self._max_plain
        if tls13:
            over = TLS_HEADER_SIZE + 1 + TLS_TAG_SIZE
        elif explicit is None:
            over = TLS_HEADER_SIZE + TLS_TAG_SIZE
        else:
            over = TLS_HEADER_SIZE + 8 + TLS_TAG_SIZE
        total = nbytes + count * over
        if scratch is None:
            out = bytearray(total)
        else:
            out = scratch
            if len(out) < total:
                out.extend(bytes(total - len(out)))
        aead = self._aead
        seal_into = aead.encrypt_into if self._into else _copying_encrypt_into(aead)
        iv = self._iv
        pos = 0
        ov = memoryview(out)  # released with this frame: a with block costs more
        # The state (sequence, explicit nonce) changes only once all are sealed:
        # a record found too long leaves it as it was.
        if tls13:  # the bulk: the header is also the AAD; full records share it
            stage = self._stage_for()
            header = b""
            header_for = -1
            for plaintext in records:
                # the inner plaintext (content || type), made in the stage
                n = len(plaintext)
                if n > most:
                    raise _too_long(n, most)
                stage[:n] = _bytes_view(plaintext)
                stage[n] = content_type
                if n != header_for:
                    header = _pack_header(
                        TLS_RECORD_TYPE_DATA, _LEGACY_VERSION, n + 1 + TLS_TAG_SIZE
                    )
                    header_for = n
                body = pos + TLS_HEADER_SIZE
                end = body + n + 1 + TLS_TAG_SIZE
                ov[pos:body] = header
                seal_into((iv ^ seq).to_bytes(12, "big"), stage[: n + 1], header, ov[body:end])
                seq += 1
                pos = end
            self._seq = seq
            return ov if len(out) == total else ov[:total]
        for plaintext in records:
            n = len(plaintext)
            if n > most:
                raise _too_long(n, most)
            if explicit is None:  # TLS 1.2 ChaCha20-Poly1305
                body = pos + TLS_HEADER_SIZE
                end = body + n + TLS_TAG_SIZE
                _pack_header_into(ov, pos, content_type, _LEGACY_VERSION, end - body)
                nonce = (iv ^ seq).to_bytes(12, "big")
            else:  # TLS 1.2 GCM: the explicit nonce goes in clear
                nonce_explicit = explicit.to_bytes(8, "big")
                body = pos + TLS_HEADER_SIZE + 8
                end = body + n + TLS_TAG_SIZE
                _pack_header_into(ov, pos, content_type, _LEGACY_VERSION, end - pos - 5)
                ov[pos + TLS_HEADER_SIZE : body] = nonce_explicit
                nonce = self._salt + nonce_explicit
                explicit = (explicit + 1) & _MASK64
            aad = seq.to_bytes(8, "big") + _pack_header(content_type, _LEGACY_VERSION, n)
            seal_into(nonce, plaintext, aad, ov[body:end])
            seq += 1
            pos = end
        self._seq = seq
        if explicit is not None:
            self._explicit = explicit
        return ov if len(out) == total else ov[:total]

    def _seal(
        self, plaintext: bytes | bytearray | memoryview, content_type: int, padding: int
    ) -> tuple[bytes, bytes]:
        """(header [+ explicit nonce], ciphertext + tag) of the next record."""
        n = len(plaintext)
        if n > self._max_plain:
            raise _too_long(n, self._max_plain)
        if n + padding > TLS_MAX_PAYLOAD_SIZE or padding < 0:
            raise ValueError(
                f"seal: {n} bytes of plaintext + {padding} of padding exceed "
                f"TLS_MAX_PAYLOAD_SIZE ({TLS_MAX_PAYLOAD_SIZE})"
                if padding >= 0
                else f"seal: negative padding {padding}"
            )
        if not 0 < content_type < 256:
            raise ValueError(f"seal: content type {content_type} is not 1..255")
        seq = self._seq
        if seq > _MAX_SEQ:
            raise TlsRecordError.of(
                errno.EBADMSG,
                "seal: TX sequence numbers exhausted (2^64 records); rekey or close",
            )
        if self._tls13:
            header = _pack_header(
                TLS_RECORD_TYPE_DATA, _LEGACY_VERSION, n + 1 + padding + TLS_TAG_SIZE
            )
            if padding:
                inner = b"".join((plaintext, _TYPE_BYTE[content_type], bytes(padding)))
            else:
                inner = b"".join((plaintext, _TYPE_BYTE[content_type]))
            sealed = self._aead.encrypt((self._iv ^ seq).to_bytes(12, "big"), inner, header)
            self._seq = seq + 1
            return header, sealed
        if padding:
            raise ValueError("seal: padding exists only in TLS 1.3")
        aad = seq.to_bytes(8, "big") + _pack_header(content_type, _LEGACY_VERSION, n)
        explicit = self._explicit
        if explicit is None:  # TLS 1.2 ChaCha20-Poly1305
            sealed = self._aead.encrypt((self._iv ^ seq).to_bytes(12, "big"), plaintext, aad)
            self._seq = seq + 1
            return _pack_header(content_type, _LEGACY_VERSION, n + TLS_TAG_SIZE), sealed
        nonce_explicit = explicit.to_bytes(8, "big")
        sealed = self._aead.encrypt(self._salt + nonce_explicit, plaintext, aad)
        self._seq = seq + 1
        self._explicit = (explicit + 1) & _MASK64
        header = _pack_header(content_type, _LEGACY_VERSION, 8 + n + TLS_TAG_SIZE)
        return header + nonce_explicit, sealed

    def rekey(self, info: TlsCryptoInfo) -> None:
        """Install the next TX key (TLS 1.3 KeyUpdate); the sequence restarts at
        ``info.rec_seq``. Seal the KeyUpdate message under the old key first.

        Raises:
            ValueError: the current version is not TLS 1.3, or ``info`` changes
                the version or cipher (the kernel's ``EINVAL``); nothing changes.
        """
        self._check_rekey(info)
        self._install(info)


class RecordOpener(_Direction):
    """Frames and opens TLS records from a byte stream: the RX half of ``tls_sw``.

    Feed raw bytes in any split; :meth:`next_record` returns whole records in
    order. ``seq`` is the sequence number of the next record to open. Not
    thread-safe; one task owns it.
    """

    __slots__ = (
        "_buf",
        "_end",
        "_error",
        "_hs_partial",
        "_key_expired",
        "_limit",
        "_overhead",
        "_pos",
    )

    def __init__(self, info: TlsCryptoInfo) -> None:
        super().__init__(info)
        # the raw bytes held are _buf[_pos:_end]; the rest of _buf is room
        # for more (kept, not zero-filled again, while bytes are held)
        self._buf = _NO_BUFFER
        self._pos = 0  # start of the first record not yet returned
        self._end = 0
        self._error: TlsRecordError | None = None
        self._key_expired = False
        # TLS 1.3: handshake bytes of a message not yet complete (KeyUpdate watch)
        self._hs_partial = b""

    def _install(self, info: TlsCryptoInfo) -> None:
        super()._install(info)
        # tls_rx_msg_size: the cipher overhead and the longest record allowed
        if self._tls13:
            self._overhead = TLS_TAG_SIZE
            self._limit = TLS_MAX_PAYLOAD_SIZE + TLS_TAG_SIZE + 1
        else:
            self._overhead = TLS_TAG_SIZE + (0 if self._explicit is None else 8)
            self._limit = TLS_MAX_PAYLOAD_SIZE + self._overhead

    @property
    def buffered(self) -> int:
        """Raw bytes held that no :meth:`next_record` call has returned yet."""
        return self._end - self._pos

    @property
    def key_expired(self) -> bool:
        """True after a KeyUpdate was returned and before :meth:`rekey`."""
        return self._key_expired

    @property
    def error(self) -> TlsRecordError | None:
        """The error that poisoned this opener, or None."""
        return self._error

    def has_partial(self) -> bool:
        """Whether the held bytes end inside a record (bytes that are not a
        whole record). Whole records not yet taken do not count."""
        buf = self._buf
        pos = self._pos
        end = self._end
        while end - pos >= TLS_HEADER_SIZE:
            pos += TLS_HEADER_SIZE + ((buf[pos + 3] << 8) | buf[pos + 4])
        return pos != end

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append raw bytes received from the peer.

        Raises:
            TlsRecordError: the opener is poisoned; that error again.
        """
        if self._error is not None:
            raise self._poisoned()
        n = len(data)
        if n:
            end = self._room(n)
            self._buf[end : end + n] = data
            self._end = end + n

    def fill(self, recv_into: Callable[[memoryview], int], max_bytes: int) -> int:
        """Read raw bytes straight into the buffer: ``recv_into`` (a socket's,
        say) is given a writable view of room for ``max_bytes`` and returns how
        many it wrote; return that. No copy of them is made on the way in.

        Raises:
            TlsRecordError: the opener is poisoned; that error again.
            Whatever ``recv_into`` raises (``BlockingIOError``, ``OSError``):
                nothing is added.
        """
        if self._error is not None:
            raise self._poisoned()
        end = self._room(max_bytes)
        view = memoryview(self._buf)[end : end + max_bytes]
        try:
            got = recv_into(view)
        finally:
            view.release()
        self._end = end + got
        return got

    def _room(self, n: int) -> int:
        """Make room for ``n`` more bytes after those held, moving them to the
        front or growing the buffer (zero-filled once); return where they go."""
        buf = self._buf
        end = self._end
        if len(buf) - end >= n:
            return end
        pos = self._pos
        if pos:  # the held bytes (at most a record and a bit) to the front
            held = end - pos
            if held:
                view = memoryview(buf)
                view[:held] = view[pos:end]
                view.release()
            self._pos, end = 0, held
            self._end = end
            if len(buf) - end >= n:
                return end
        if buf is _NO_BUFFER:
            buf = self._buf = _RX_BUFFERS.take(end + n)
        if len(buf) < end + n:
            buf.extend(bytes(end + n - len(buf)))
        return end

    def eof(self) -> None:
        """Check that the stream may end here: no partial record is held.

        Raises:
            TlsRecordError: ``EPROTO``, the stream ended inside a record (the
                message says how much of it arrived); or the poisoning error.
        """
        if self._error is not None:
            raise self._poisoned()
        if self.has_partial():
            raise TlsRecordError.of(
                errno.EPROTO,
                f"TLS record seq {self._seq}: stream ended inside a record "
                f"({self.buffered} raw bytes held)",
                ALERT_DECODE_ERROR,
            )

    def _fail(self, err: int, what: str, alert: int) -> TlsRecordError:
        """Poison the opener with this error; returns a copy to raise."""
        self._error = TlsRecordError.of(err, f"TLS record seq {self._seq}: {what}", alert)
        return self._poisoned()

    def _poisoned(self) -> TlsRecordError:
        """A copy of the poisoning error, to raise. The kept one is never
        raised: a raised error's traceback names this opener's frames, and
        the opener holding it would make a cycle (a failed trial opening
        left for the garbage collector, its record bytes with it)."""
        kept = self._error
        assert kept is not None
        exc = TlsRecordError(kept.errno, kept.strerror)
        exc.alert = kept.alert
        return exc

    def next_record(self) -> tuple[int, bytes | memoryview] | None:
        """Open the next whole record: ``(content_type, plaintext)``, or None if
        no whole record is held yet. The plaintext of an application-data
        record is a read-only view of a buffer of its own (no copy is made to
        strip TLS 1.3's inner type); other records' plaintext is ``bytes``.

        For TLS 1.3 the content type is the inner one and the padding is gone.

        Raises:
            TlsRecordError: ``EINVAL`` legacy version not 0x0303 or (TLS 1.3)
                outer type not 23; ``EMSGSIZE`` record too long, or its
                plaintext longer than :attr:`record_size_limit`; ``EBADMSG``
                record too short, authentication failed, no inner type, or
                sequence numbers exhausted. These poison the opener (the error
                repeats; no byte of the record is released). ``EKEYEXPIRED``:
                a KeyUpdate was returned and :meth:`rekey` has not been called;
                not poisoning.
        """
        if self._error is not None:
            raise self._poisoned()
        buf = self._buf
        pos = self._pos
        avail = self._end - pos
        if avail < TLS_HEADER_SIZE:
            return None
        if self._key_expired:
            raise TlsRecordError.of(
                errno.EKEYEXPIRED,
                f"TLS record seq {self._seq}: KeyUpdate received, the next RX key is "
                "not installed (call rekey)",
            )
        outer_type, version, length = _unpack_header(buf, pos)
        tls13 = self._tls13
        if version != _LEGACY_VERSION:
            raise self._fail(
                errno.EINVAL,
                f"legacy record version {version:#06x} is not 0x0303",
                ALERT_DECODE_ERROR if tls13 else ALERT_PROTOCOL_VERSION,
            )
        if tls13:
            if outer_type != TLS_RECORD_TYPE_DATA:
                raise self._fail(
                    errno.EINVAL,
                    f"outer content type {outer_type} (TLS 1.3 records carry 23)",
                    ALERT_UNEXPECTED_MESSAGE,
                )
        elif outer_type == 0:
            raise self._fail(errno.EINVAL, "content type 0", ALERT_UNEXPECTED_MESSAGE)
        if length > self._limit:
            raise self._fail(
                errno.EMSGSIZE,
                f"record length {length} exceeds the maximum {self._limit}",
                ALERT_RECORD_OVERFLOW,
            )
        if length < self._overhead:
            raise self._fail(
                errno.EBADMSG,
                f"record length {length} is below the cipher overhead {self._overhead}",
                ALERT_BAD_RECORD_MAC,
            )
        if avail < TLS_HEADER_SIZE + length:
            return None
        seq = self._seq
        if seq > _MAX_SEQ:
            raise self._fail(
                errno.EBADMSG, "RX sequence numbers exhausted (2^64 records)", ALERT_INTERNAL_ERROR
            )
        body = pos + TLS_HEADER_SIZE
        end = body + length
        view = memoryview(buf)
        try:
            if tls13:
                inner = self._aead.decrypt(
                    (self._iv ^ seq).to_bytes(12, "big"),
                    view[body:end],
                    _pack_header(TLS_RECORD_TYPE_DATA, _LEGACY_VERSION, length),
                )
            elif self._explicit is None:  # TLS 1.2 ChaCha20-Poly1305
                inner = self._aead.decrypt(
                    (self._iv ^ seq).to_bytes(12, "big"),
                    view[body:end],
                    seq.to_bytes(8, "big")
                    + _pack_header(outer_type, _LEGACY_VERSION, length - TLS_TAG_SIZE),
                )
            else:  # TLS 1.2 GCM: salt || explicit nonce from the wire
                inner = self._aead.decrypt(
                    self._salt + bytes(view[body : body + 8]),
                    view[body + 8 : end],
                    seq.to_bytes(8, "big")
                    + _pack_header(outer_type, _LEGACY_VERSION, length - self._overhead),
                )
        except InvalidTag:
            raise self._fail(
                errno.EBADMSG, "authentication failed", ALERT_BAD_RECORD_MAC
            ) from None
        finally:
            view.release()
        return self._opened(inner, outer_type, end)

    def _opened(
        self, inner: bytes, outer_type: int, end: int
    ) -> tuple[int, bytes | memoryview]:
        """Finish the record at ``self._pos`` (sequence ``self._seq``), decrypted
        into ``inner`` and ending at ``end`` in the buffer: strip TLS 1.3's inner
        type and padding, consume it, watch for a KeyUpdate.

        Raises:
            TlsRecordError: ``EBADMSG``, a TLS 1.3 plaintext of zeros only;
                ``EMSGSIZE``, more plaintext than :attr:`record_size_limit`
                (poisoning; nothing is consumed).
        """
        tls13 = self._tls13
        if tls13:
            if inner and inner[-1]:
                content_type = inner[-1]
                # application data, the bulk: a view, not a copy of 16 KiB
                plaintext = (
                    memoryview(inner)[:-1] if content_type == TLS_RECORD_TYPE_DATA else inner[:-1]
                )
            else:
                stripped = inner.rstrip(b"\0")
                if not stripped:
                    raise self._fail(
                        errno.EBADMSG,
                        "plaintext is all zeros (no inner content type)",
                        ALERT_UNEXPECTED_MESSAGE,
                    )
                content_type = stripped[-1]
                plaintext = stripped[:-1]
        else:
            content_type = outer_type
            plaintext = inner
        if len(plaintext) > self._max_plain:
            raise self._fail(
                errno.EMSGSIZE,
                f"{len(plaintext)} bytes of plaintext exceed the negotiated record size "
                f"limit {self._max_plain}",
                ALERT_RECORD_OVERFLOW,
            )
        self._seq += 1
        self._consume(end)
        if tls13 and content_type == TLS_RECORD_TYPE_HANDSHAKE:
            self._watch_handshake(plaintext)
        return content_type, plaintext

    def _consume(self, end: int) -> None:
        """Drop the records before ``end`` (no view of the buffer may be held)."""
        if end == self._end:  # nothing held: the buffer may serve others now
            self._pos = self._end = 0
            if self._buf is not _NO_BUFFER:
                _RX_BUFFERS.give(self._buf)
                self._buf = _NO_BUFFER
        else:
            self._pos = end

    def next_records(self, units: list[memoryview]) -> tuple[int, bytes | memoryview] | None:
        """Open every whole record held, in order, up to the first one that is not
        application data: append each application-data record's plaintext to
        ``units`` (a read-only view; a record of no plaintext adds nothing) and
        return the first other record as :meth:`next_record` returns it, leaving
        the records after it held; None once no whole record is held.

        The records, their order, the state after and every error are exactly
        those of calling :meth:`next_record` until it returns None or a record
        that is not application data; only faster (TLS 1.3 data records are
        opened in one loop).

        Raises:
            TlsRecordError: as :meth:`next_record`. ``units`` then already
                holds the records opened before the failing one, which are
                consumed; not one byte of the failing record is in it.
        """
        while True:
            rec = self._open_data13(units) if self._tls13 else _ASK
            if rec is _ASK:
                rec = self.next_record()
            if rec is None:
                return None
            content_type, plaintext = rec
            if content_type != TLS_RECORD_TYPE_DATA:
                return rec
            if len(plaintext):
                units.append(
                    plaintext if type(plaintext) is memoryview else memoryview(plaintext)
                )

    def _open_data13(self, units: list[memoryview]) -> tuple[int, bytes | memoryview] | None:
        """The TLS 1.3 loop of :meth:`next_records`: open the records that are
        plainly application data (the header as required, whole, at least one
        byte of content, inner type 23 without padding) one after the other,
        appending their plaintext to ``units``. A record that decrypts to
        another inner type, or with padding, is finished and returned as
        :meth:`next_record` would return it. None when no whole record is left;
        ``_ASK`` when it stopped before one :meth:`next_record` must judge (a
        bad header, a failed tag, no content, sequence numbers near their end,
        a poisoned or key-expired opener) by opening it again.
        """
        if self._error is not None or self._key_expired:
            return _ASK
        buf = self._buf
        pos = self._pos
        size = self._end
        seq = self._seq
        if seq + (size - pos) // _MIN_DATA_RECORD13 > _MAX_SEQ:
            return _ASK  # the sequence may run out among these: checked per record
        decrypt = self._aead.decrypt
        iv = self._iv
        shortest = _MIN_DATA_RECORD13 - TLS_HEADER_SIZE
        limit = self._limit
        longest = self._max_plain + 1  # content and inner type
        inner = b""
        prefix = _PREFIX13
        length = end = aad_length = 0
        aad = b""
        view = memoryview(buf)
        try:
            while size - pos >= TLS_HEADER_SIZE:
                prefix, length = _unpack_prefix(buf, pos)
                body = pos + TLS_HEADER_SIZE
                end = body + length
                if prefix != _PREFIX13 or not shortest <= length <= limit or end > size:
                    break
                if length != aad_length:  # RFC 8446 §5.2: the AAD is the header itself
                    aad, aad_length = bytes(view[pos:body]), length
                inner = decrypt((iv ^ seq).to_bytes(12, "big"), view[body:end], aad)
                if inner[-1] != TLS_RECORD_TYPE_DATA or len(inner) > longest:
                    break
                units.append(memoryview(inner)[:-1])
                seq += 1
                pos = end
        except InvalidTag:
            pass  # next_record opens it again and fails it
        finally:
            view.release()
        self._seq = seq
        # inner is the last record opened: one that ends in 23 was taken above
        if inner and inner[-1] != TLS_RECORD_TYPE_DATA:
            self._pos = pos
            return self._opened(inner, TLS_RECORD_TYPE_DATA, end)
        # stopped at the end of what is held, or inside a record that is plainly
        # data; anything else is for next_record to judge
        done = size - pos < TLS_HEADER_SIZE or (
            end > size and prefix == _PREFIX13 and shortest <= length <= limit
        )
        self._consume(pos)
        return None if done else _ASK

    def _watch_handshake(self, plaintext: bytes | memoryview) -> None:
        """Track TLS 1.3 handshake messages across records to spot a KeyUpdate
        (which RFC 8446 §5.1 requires to end its record)."""
        data = self._hs_partial + plaintext
        pos = 0
        last_type = -1
        while len(data) - pos >= 4:
            size = int.from_bytes(data[pos + 1 : pos + 4], "big")
            if len(data) - pos - 4 < size:
                break
            last_type = data[pos]
            pos += 4 + size
        self._hs_partial = data[pos:]
        if last_type == TLS_HANDSHAKE_KEY_UPDATE and not self._hs_partial:
            self._key_expired = True

    def rekey(self, info: TlsCryptoInfo) -> None:
        """Install the next RX key (after the peer's KeyUpdate); records still
        held are opened with it, from ``info.rec_seq``.

        Raises:
            ValueError: the current version is not TLS 1.3, or ``info`` changes
                the version or cipher (the kernel's ``EINVAL``); nothing changes.
            TlsRecordError: the opener is poisoned; that error again.
        """
        if self._error is not None:
            raise self._poisoned()
        self._check_rekey(info)
        self._install(info)
        self._key_expired = False


#: The shortest record :meth:`RecordOpener._open_data13` takes: a header, one
#: byte of content, the inner type and the tag.
_MIN_DATA_RECORD13: Final = TLS_HEADER_SIZE + 1 + 1 + TLS_TAG_SIZE
#: A TLS 1.3 record header without its length: outer type 23, version 0x0303.
_PREFIX13: Final = bytes((TLS_RECORD_TYPE_DATA, 3, 3))
_unpack_prefix = struct.Struct(">3sH").unpack_from
#: What :meth:`RecordOpener._open_data13` returns for "ask next_record".
_ASK: Final[tuple[int, bytes | memoryview]] = (0, b"")


#: An opener holding no bytes has no buffer of its own (this empty one).
_NO_BUFFER: Final = bytearray()


class BufferPool:
    """Byte buffers nobody is using, shared by a process's connections: one
    that is done with its buffer gives it back, one that needs a buffer takes
    a kept one, so bulk transfers work in warm memory (never a fresh
    zero-filled buffer each time) and idle connections hold none. At most
    ``keep`` buffers of at most ``largest`` bytes are kept."""

    __slots__ = ("_free", "_keep", "_largest")

    def __init__(self, keep: int, largest: int) -> None:
        self._free: list[bytearray] = []
        self._keep = keep
        self._largest = largest

    def take(self, n: int = 0) -> bytearray:
        """A buffer of at least ``n`` bytes: a kept one (grown if shorter, the
        new bytes zero-filled once), else a new one."""
        try:
            buf = self._free.pop()
        except IndexError:
            return bytearray(n)
        if len(buf) < n:
            buf.extend(bytes(n - len(buf)))
        return buf

    def give(self, buf: bytearray) -> None:
        """Keep ``buf`` for a later :meth:`take` (no view of it may be alive),
        unless enough are kept or it is too long."""
        if len(self._free) < self._keep and len(buf) <= self._largest:
            self._free.append(buf)


#: The receive buffers of the process's openers.
_RX_BUFFERS: Final = BufferPool(4, 1 << 20)
