"""The TLS RX path: ``tls_sw_recvmsg``'s record handling, sans-I/O.

Theory of operation
-------------------
Bytes read from the transport go into a :class:`RecordOpener` (the kernel's
own TLS strparser frames records; a sockmap parser program is never used for
them). Each opened record is then sorted:

- application data (type 23): its plaintext is one *unit* for the receive
  verdict (``sk_psock_tls_strp_read``: the stream verdict runs once per
  record) or, with no receive program, for the application;
- anything else is a *control record* (:class:`ControlRecord`: content type
  and plaintext), queued for the application in arrival order, as kTLS hands
  non-data records to user space with ``TLS_GET_RECORD_TYPE``. The verdict
  does not run on control records. Some are also acted on:

  * alert ``close_notify``: the end of the peer's data (EOF); records after it
    are ignored (RFC 8446 §6.1);
  * any other fatal alert: the stream fails after the data before it, with
    ``ECONNRESET`` naming the alert;
  * TLS 1.3 ``KeyUpdate``: the RX key moves on at once (the record after it is
    opened with the next traffic secret, sequence 0); ``update_requested``
    leaves :attr:`TlsRx.key_update_requested` set, and the TX side answers
    with its own KeyUpdate before it seals its next record (RFC 8446 §4.6.3).

An error (a record that fails authentication: ``EBADMSG``; too large:
``EMSGSIZE``; a wrong version or malformed header: ``EINVAL``/``EBADMSG``)
raises :class:`TlsRxError`, whose ``messages`` are the data units opened
before it: they are still delivered, and not one byte of the failing record
is. The opener is poisoned: the stream is in error for good.

The control queue is bounded (:data:`CONTROL_QUEUE_RECORDS`): an application
that never reads control records (most only call ``receive_some``) must not
grow it without end, so the oldest record is discarded beyond the bound and
counted (``rx_control_dropped``). This is a deliberate difference: the kernel
blocks data behind an unread control record (``recvmsg`` without room for
the cmsg fails ``EIO``).
"""

from __future__ import annotations

import errno
from collections import deque
from operator import attrgetter

import attrs

from skmsg_core import StrParserError

from . import _stats
from ._codec import (
    TLS_1_3_VERSION,
    TLS_RECORD_TYPE_ALERT,
    TLS_RECORD_TYPE_HANDSHAKE,
    RecordOpener,
    TlsCryptoInfo,
    TlsRecordError,
)
from ._keys import tls13_crypto_info, tls13_next_secret

__all__ = [
    "ALERT_CLOSE_NOTIFY",
    "CONTROL_QUEUE_RECORDS",
    "HANDSHAKE_KEY_UPDATE",
    "ControlRecord",
    "TlsRx",
    "TlsRxError",
]

_nbytes = attrgetter("nbytes")

#: Control records kept for the application before the oldest is discarded.
CONTROL_QUEUE_RECORDS = 64
#: The largest post-handshake handshake message reassembled (bytes of body).
MAX_HANDSHAKE_MESSAGE = 65536

ALERT_CLOSE_NOTIFY = 0
ALERT_USER_CANCELED = 90
ALERT_LEVEL_FATAL = 2
HANDSHAKE_NEW_SESSION_TICKET = 4
HANDSHAKE_KEY_UPDATE = 24

_ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}


def alert_name(description: int) -> str:
    """The RFC 8446 name of an alert description (``alert 199`` if unknown)."""
    return _ALERT_NAMES.get(description, f"alert {description}")


@attrs.frozen
class ControlRecord:
    """A non-application-data record: its content type (21 alert, 22 handshake,
    ...) and its plaintext, as ``recvmsg`` with ``TLS_GET_RECORD_TYPE`` gives it."""

    content_type: int
    data: bytes


class TlsRxError(StrParserError):
    """The TLS receive path failed; ``errno`` says how (``EBADMSG``: a record
    failed authentication or is malformed; ``EMSGSIZE``: too large; ``EINVAL``:
    bad version; ``ECONNRESET``: the peer sent a fatal alert; ``EPROTO``: a
    KeyUpdate that breaks RFC 8446). ``messages``: the data opened before it."""


class TlsRx:
    """One stream's RX record state: the opener, the control queue, key updates."""

    def __init__(self, info: TlsCryptoInfo, secret: bytes | None) -> None:
        self.opener = RecordOpener(info)
        self.version = info.version
        self.cipher_type = info.cipher_type
        self._secret = secret
        self.controls: deque[ControlRecord] = deque()
        self._hs = bytearray()
        #: close_notify arrived: no more data.
        self.eof = False
        #: The error that ended receiving, once one did.
        self.error: TlsRxError | None = None
        #: The peer asked for our KeyUpdate (TLS 1.3 ``update_requested``).
        self.key_update_requested = False
        self.records = 0
        self.bytes = 0
        self.control_records = 0
        self.control_dropped = 0
        self.decrypt_errors = 0
        self.rekeys = 0
        self.key_updates_received = 0

    @property
    def partial(self) -> int:
        """Bytes of an incomplete record waiting in the opener."""
        return int(self.opener.buffered)

    def open_records(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Feed transport bytes; return the plaintext of each data record completed
        (views, none empty).

        Raises:
            TlsRxError: see the class; ``messages`` holds the units opened before
                the failure. Once raised, every later call raises it again.
        """
        if self.error is not None:
            raise self.error
        units: list[memoryview] = []
        if self.eof:
            return units  # RFC 8446 §6.1: data after close_notify is ignored
        opener = self.opener
        if data:
            opener.feed(data)
        try:
            while (rec := opener.next_records(units)) is not None:
                if self._control(rec[0], bytes(rec[1])):
                    break  # close_notify: the rest is ignored
        except TlsRecordError as exc:
            if exc.errno == errno.EBADMSG:
                self.decrypt_errors += 1
                _stats.count("TlsDecryptError")
            err = TlsRxError(exc.errno or errno.EBADMSG, f"TLS record error: {exc}")
            err.__cause__ = exc
            self._fail(err, units)
        except TlsRxError as err:
            self._fail(err, units)
        self.records += len(units)
        self.bytes += sum(map(_nbytes, units))
        return units

    def _fail(self, err: TlsRxError, units: list[memoryview]) -> None:
        self.records += len(units)
        self.bytes += sum(map(_nbytes, units))
        err.messages = units
        self.error = err
        raise err

    # -- control records -------------------------------------------------------------------

    def _control(self, ctype: int, data: bytes) -> bool:
        """Queue a control record and act on it; True if it ended the stream."""
        self.control_records += 1
        self.controls.append(ControlRecord(ctype, data))
        if len(self.controls) > CONTROL_QUEUE_RECORDS:
            self.controls.popleft()
            self.control_dropped += 1
        if ctype == TLS_RECORD_TYPE_ALERT:
            self._alert(data)
        elif ctype == TLS_RECORD_TYPE_HANDSHAKE and self.version == TLS_1_3_VERSION:
            self._handshake(data)
        return self.eof

    def _alert(self, data: bytes) -> None:
        if len(data) != 2:
            raise TlsRxError(errno.EBADMSG, f"malformed alert record of {len(data)} bytes")
        level, desc = data
        if desc == ALERT_CLOSE_NOTIFY:
            self.eof = True
            return
        fatal = level == ALERT_LEVEL_FATAL or (
            self.version == TLS_1_3_VERSION and desc != ALERT_USER_CANCELED
        )
        if fatal:
            raise TlsRxError(errno.ECONNRESET, f"the peer sent a fatal alert: {alert_name(desc)}")

    def _handshake(self, data: bytes) -> None:
        """Reassemble post-handshake messages; act on KeyUpdate (TLS 1.3)."""
        hs = self._hs
        hs += data
        while len(hs) >= 4:
            mtype = hs[0]
            length = int.from_bytes(hs[1:4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                raise TlsRxError(
                    errno.EMSGSIZE, f"post-handshake message of {length} bytes is too large"
                )
            if len(hs) < 4 + length:
                break
            body = bytes(hs[4 : 4 + length])
            del hs[: 4 + length]
            if mtype == HANDSHAKE_KEY_UPDATE:
                self._key_update(body, trailing=len(hs))

    def _key_update(self, body: bytes, trailing: int) -> None:
        self.key_updates_received += 1
        _stats.count("TlsRxRekeyReceived")
        if len(body) != 1 or body[0] not in (0, 1) or trailing:
            _stats.count("TlsRxRekeyError")
            raise TlsRxError(
                errno.EPROTO,
                "malformed KeyUpdate"
                if trailing == 0
                else "a KeyUpdate must end its record (RFC 8446 §5.1)",
            )
        if self._secret is None:
            _stats.count("TlsRxRekeyError")
            raise TlsRxError(errno.EPROTO, "KeyUpdate received but no traffic secret is known")
        self._secret = tls13_next_secret(self._secret, self.cipher_type)
        self.opener.rekey(tls13_crypto_info(self._secret, self.cipher_type, rec_seq=0))
        self.rekeys += 1
        _stats.count("TlsRxRekeyOk")
        if body[0] == 1:
            self.key_update_requested = True
