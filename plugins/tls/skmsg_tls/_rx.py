"""The TLS RX path: ``tls_sw_recvmsg``'s record handling, sans-I/O.

Theory of operation
-------------------
Bytes read from the transport go into a :class:`RecordOpener` (the kernel's
own TLS strparser frames records; a sockmap parser program is never used for
them). Each opened record is then sorted:

- application data (type 23): its plaintext is one *unit* for the receive
  verdict (``sk_psock_tls_strp_read``: the stream verdict runs once per
  record) or, with no receive program, for the application;
- an alert (21) or a post-handshake handshake message (22) is a *control
  record* (:class:`ControlRecord`: content type and plaintext), queued for
  the application in arrival order, as kTLS hands non-data records to user
  space with ``TLS_GET_RECORD_TYPE``. The verdict does not run on control
  records. They are also checked and acted on, strictly as RFC 8446 and
  RFC 5246 ask once the handshake is over:

  * alert ``close_notify``: the end of the peer's data (EOF); records after it
    are ignored (RFC 8446 §6.1);
  * any other fatal alert: the stream fails after the data before it, with
    ``ECONNRESET`` naming the alert;
  * TLS 1.3 ``KeyUpdate``: the RX key moves on at once (the record after it is
    opened with the next traffic secret, sequence 0); ``update_requested``
    leaves :attr:`TlsRx.key_update_requested` set, and the TX side answers
    with its own KeyUpdate before it seals its next record (RFC 8446 §4.6.3);
  * TLS 1.3 ``NewSessionTicket`` (client side): also kept whole in
    :attr:`TlsRx.tickets` when :attr:`TlsRx.keep_tickets` is set, for the TLS
    library's session (resumption);
  * TLS 1.2 renegotiation (a ``ClientHello`` to a server, a ``HelloRequest``
    to a client): refused, as OpenSSL refuses it when renegotiation is off:
    the warning alert ``no_renegotiation`` is owed to the peer
    (:attr:`TlsRx.alerts_owed`; the TX side sends it) and the stream goes on;
  * anything else is a fault of the peer's (below).

Every fault in the peer's bytes raises :class:`TlsRxError` naming what was
wrong, with the fatal alert TLS answers it with (``alert``): a record that
fails authentication (``EBADMSG``, ``bad_record_mac``); one too long
(``EMSGSIZE``, ``record_overflow``); a wrong version or malformed header
(``EINVAL``, ``decode_error`` / ``protocol_version`` / ``unexpected_message``);
a content type, handshake message or interleaving not allowed after the
handshake (``EPROTO``, ``unexpected_message``); an alert or handshake message
that does not parse (``EBADMSG``/``EPROTO``, ``decode_error`` or
``illegal_parameter``). Its ``messages`` are the data units opened before it:
they are still delivered, and not one byte of the failing record is. The
opener is poisoned: the stream is in error for good.

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
from ._alerts import (
    ALERT_CLOSE_NOTIFY,
    ALERT_DECODE_ERROR,
    ALERT_ILLEGAL_PARAMETER,
    ALERT_INTERNAL_ERROR,
    ALERT_LEVEL_FATAL,
    ALERT_LEVEL_WARNING,
    ALERT_NO_RENEGOTIATION,
    ALERT_UNEXPECTED_MESSAGE,
    ALERT_USER_CANCELED,
    alert_name,
)
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
    "TlsTruncationError",
    "handshake_name",
]

_nbytes = attrgetter("nbytes")

#: Control records kept for the application before the oldest is discarded.
CONTROL_QUEUE_RECORDS = 64
#: The largest post-handshake handshake message reassembled (bytes of body).
MAX_HANDSHAKE_MESSAGE = 65536

HANDSHAKE_HELLO_REQUEST = 0
HANDSHAKE_CLIENT_HELLO = 1
HANDSHAKE_NEW_SESSION_TICKET = 4
HANDSHAKE_KEY_UPDATE = 24

_HANDSHAKE_NAMES = {
    0: "HelloRequest",
    1: "ClientHello",
    2: "ServerHello",
    4: "NewSessionTicket",
    5: "EndOfEarlyData",
    8: "EncryptedExtensions",
    11: "Certificate",
    12: "ServerKeyExchange",
    13: "CertificateRequest",
    14: "ServerHelloDone",
    15: "CertificateVerify",
    16: "ClientKeyExchange",
    20: "Finished",
    24: "KeyUpdate",
}


def handshake_name(msg_type: int) -> str:
    """The RFC name of a handshake message type (``handshake message 99`` if unknown)."""
    return _HANDSHAKE_NAMES.get(msg_type, f"handshake message {msg_type}")


@attrs.frozen
class ControlRecord:
    """A non-application-data record: its content type (21 alert, 22 handshake,
    ...) and its plaintext, as ``recvmsg`` with ``TLS_GET_RECORD_TYPE`` gives it."""

    content_type: int
    data: bytes


class TlsRxError(StrParserError):
    """The TLS receive path failed; ``errno`` says how (``EBADMSG``: a record
    failed authentication or is malformed; ``EMSGSIZE``: too large; ``EINVAL``:
    bad version or header; ``EPROTO``: a record or message not allowed now, or
    the stream ended without close_notify; ``ECONNRESET``: the peer sent a
    fatal alert). ``messages``: the data opened before it. ``alert``: the
    fatal alert description sent to the peer for it (None when none is owed:
    the peer's own fatal alert)."""

    def __init__(self, err: int, message: str, *, alert: int | None = None) -> None:
        super().__init__(err, message)
        self.alert = alert


class TlsTruncationError(TlsRxError):
    """The connection ended before the peer's ``close_notify`` (``EPROTO``):
    between records (unless ``ssl.OP_IGNORE_UNEXPECTED_EOF``), or inside a
    record or handshake message. What came before it may be cut short; the
    type tells it apart from a bad record, as ``ssl.SSLEOFError`` does."""


def _unexpected(what: str) -> TlsRxError:
    return TlsRxError(errno.EPROTO, f"unexpected message: {what}", alert=ALERT_UNEXPECTED_MESSAGE)


class TlsRx:
    """One stream's RX record state: the opener, the control queue, key updates.

    ``server_side`` says which end of the connection this is: it decides which
    post-handshake messages are allowed (a NewSessionTicket only to a client,
    a renegotiation ClientHello only to a server); None (keys installed without
    a handshake here, the role unknown) allows what either end may receive.
    """

    def __init__(
        self, info: TlsCryptoInfo, secret: bytes | None, *, server_side: bool | None = None
    ) -> None:
        self.opener = RecordOpener(info)
        self.version = info.version
        self.cipher_type = info.cipher_type
        self.server_side = server_side
        self._secret = secret
        self.controls: deque[ControlRecord] = deque()
        self._hs = bytearray()
        #: close_notify arrived: no more data.
        self.eof = False
        #: The error that ended receiving, once one did.
        self.error: TlsRxError | None = None
        #: The peer asked for our KeyUpdate (TLS 1.3 ``update_requested``).
        self.key_update_requested = False
        #: Keep whole TLS 1.3 NewSessionTicket messages in :attr:`tickets`.
        self.keep_tickets = False
        #: NewSessionTicket messages (with their 4-byte header) not yet taken.
        self.tickets: deque[bytes] = deque()
        #: Warning alerts (descriptions) owed to the peer, oldest first: the
        #: TX side sends and removes them.
        self.alerts_owed: deque[int] = deque()
        self.records = 0
        self.bytes = 0
        self.control_records = 0
        self.control_dropped = 0
        self.decrypt_errors = 0
        self.rekeys = 0
        self.key_updates_received = 0
        self.renegotiations_refused = 0

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
            while True:
                if self._hs:
                    # RFC 8446 §5.1: the rest of a handshake message comes next,
                    # no other record type between its fragments
                    rec = opener.next_record()
                    if rec is not None and rec[0] != TLS_RECORD_TYPE_HANDSHAKE:
                        raise _unexpected(
                            f"a record of content type {rec[0]} inside a "
                            f"{handshake_name(self._hs[0])} message"
                        )
                else:
                    rec = opener.next_records(units)
                if rec is None:
                    break
                if self._control(rec[0], bytes(rec[1])):
                    break  # close_notify: the rest is ignored
        except TlsRecordError as exc:
            if exc.errno == errno.EBADMSG:
                self.decrypt_errors += 1
                _stats.count("TlsDecryptError")
            err = TlsRxError(
                exc.errno or errno.EBADMSG,
                f"TLS record error: {exc}",
                alert=exc.alert if exc.alert is not None else ALERT_INTERNAL_ERROR,
            )
            err.__cause__ = exc
            self._fail(err, units)
        except TlsRxError as err:
            self._fail(err, units)
        self.records += len(units)
        self.bytes += sum(map(_nbytes, units))
        return units

    def ended(self, ignore_unexpected_eof: bool) -> TlsTruncationError | None:
        """The transport reached EOF. Before the peer's ``close_notify`` that is
        a truncation (RFC 8446 §6.1: the peer must send close_notify before it
        closes its write side): an error, unless ``ignore_unexpected_eof`` (as
        ``ssl.OP_IGNORE_UNEXPECTED_EOF``), which makes a bare EOF between
        records the end of the data. The end inside a record is always an
        error. Sets :attr:`error` (answered with ``decode_error``, as OpenSSL
        answers an unexpected EOF) and returns it, or sets :attr:`eof`; a no-op
        returning None once either is set.
        """
        if self.error is not None or self.eof:
            return None
        if self.opener.has_partial():
            err = TlsTruncationError(
                errno.EPROTO,
                "the connection ended inside a record "
                f"({self.opener.buffered} bytes of it arrived)",
                alert=ALERT_DECODE_ERROR,
            )
        elif self._hs:
            err = TlsTruncationError(
                errno.EPROTO,
                f"the connection ended inside a {handshake_name(self._hs[0])} message",
                alert=ALERT_DECODE_ERROR,
            )
        elif ignore_unexpected_eof:
            self.eof = True
            return None
        else:
            err = TlsTruncationError(
                errno.EPROTO,
                "the peer closed the connection without close_notify (the data may be "
                "truncated; ssl.OP_IGNORE_UNEXPECTED_EOF accepts such an end)",
                alert=ALERT_DECODE_ERROR,
            )
        self.error = err
        return err

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
        elif ctype == TLS_RECORD_TYPE_HANDSHAKE:
            self._handshake(data)
        else:
            raise _unexpected(f"a record of content type {ctype} after the handshake")
        return self.eof

    def _alert(self, data: bytes) -> None:
        if len(data) != 2:
            raise TlsRxError(
                errno.EBADMSG,
                f"malformed alert record of {len(data)} bytes (an alert is 2)",
                alert=ALERT_DECODE_ERROR,
            )
        level, desc = data
        if level not in (ALERT_LEVEL_WARNING, ALERT_LEVEL_FATAL):
            raise TlsRxError(
                errno.EBADMSG,
                f"alert level {level} is neither warning (1) nor fatal (2)",
                alert=ALERT_ILLEGAL_PARAMETER,
            )
        if desc == ALERT_CLOSE_NOTIFY:
            self.eof = True
            return
        fatal = level == ALERT_LEVEL_FATAL or (
            self.version == TLS_1_3_VERSION and desc != ALERT_USER_CANCELED
        )
        if fatal:
            raise TlsRxError(errno.ECONNRESET, f"the peer sent a fatal alert: {alert_name(desc)}")

    def _handshake(self, data: bytes) -> None:
        """Reassemble post-handshake messages and act on each."""
        if not data and self.version == TLS_1_3_VERSION:
            raise _unexpected("an empty handshake record (RFC 8446 §5.1)")
        hs = self._hs
        hs += data
        while len(hs) >= 4:
            mtype = hs[0]
            length = int.from_bytes(hs[1:4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                raise TlsRxError(
                    errno.EMSGSIZE,
                    f"post-handshake {handshake_name(mtype)} of {length} bytes is too "
                    f"large (at most {MAX_HANDSHAKE_MESSAGE})",
                    alert=ALERT_ILLEGAL_PARAMETER,
                )
            if len(hs) < 4 + length:
                break
            msg = bytes(hs[: 4 + length])
            del hs[: 4 + length]
            self._message(mtype, msg, trailing=len(hs))

    def _message(self, mtype: int, msg: bytes, trailing: int) -> None:
        """One whole post-handshake message (``msg`` with its header);
        ``trailing``: bytes of its record after it."""
        server = self.server_side
        if self.version == TLS_1_3_VERSION:
            if mtype == HANDSHAKE_KEY_UPDATE:
                self._key_update(msg[4:], trailing)
                return
            if mtype == HANDSHAKE_NEW_SESSION_TICKET and server is not True:
                if self.keep_tickets:
                    self.tickets.append(msg)
                return
        elif mtype == HANDSHAKE_CLIENT_HELLO and server is not False:
            self._refuse_renegotiation()
            return
        elif mtype == HANDSHAKE_HELLO_REQUEST and server is not True:
            if len(msg) != 4:
                raise TlsRxError(
                    errno.EBADMSG,
                    f"a HelloRequest of {len(msg) - 4} bytes (it is empty)",
                    alert=ALERT_DECODE_ERROR,
                )
            self._refuse_renegotiation()
            return
        end = "" if server is None else (" to a server" if server else " to a client")
        raise _unexpected(f"{handshake_name(mtype)} after the handshake{end}")

    def _refuse_renegotiation(self) -> None:
        """TLS 1.2 renegotiation is off: owe the peer ``no_renegotiation``
        (a warning; RFC 5246 §7.2.2) and go on."""
        self.renegotiations_refused += 1
        self.alerts_owed.append(ALERT_NO_RENEGOTIATION)

    def _key_update(self, body: bytes, trailing: int) -> None:
        self.key_updates_received += 1
        _stats.count("TlsRxRekeyReceived")
        if trailing:
            _stats.count("TlsRxRekeyError")
            raise _unexpected("a KeyUpdate must end its record (RFC 8446 §5.1)")
        if len(body) != 1:
            _stats.count("TlsRxRekeyError")
            raise TlsRxError(
                errno.EPROTO,
                f"malformed KeyUpdate of {len(body)} bytes (it is 1)",
                alert=ALERT_DECODE_ERROR,
            )
        if body[0] not in (0, 1):
            _stats.count("TlsRxRekeyError")
            raise TlsRxError(
                errno.EPROTO,
                f"malformed KeyUpdate: request_update {body[0]} is neither 0 nor 1",
                alert=ALERT_ILLEGAL_PARAMETER,
            )
        if self._secret is None:
            _stats.count("TlsRxRekeyError")
            raise TlsRxError(
                errno.EPROTO,
                "KeyUpdate received but no traffic secret is known",
                alert=ALERT_INTERNAL_ERROR,
            )
        self._secret = tls13_next_secret(self._secret, self.cipher_type)
        self.opener.rekey(tls13_crypto_info(self._secret, self.cipher_type, rec_seq=0))
        self.rekeys += 1
        _stats.count("TlsRxRekeyOk")
        if body[0] == 1:
            self.key_update_requested = True
