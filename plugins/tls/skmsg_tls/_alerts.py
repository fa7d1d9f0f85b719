"""TLS alerts: the levels and descriptions of RFC 8446 §6 (and RFC 5246 §7.2).

An alert record carries two bytes, ``level || description``. After the
hand-off the record layer answers a fault in the peer's bytes with the fatal
alert the RFCs name for it (RFC 8446 §6.2: ``bad_record_mac`` for a record
that fails authentication, ``record_overflow`` for one too long,
``unexpected_message`` for a record or message not allowed now,
``decode_error`` for one that cannot be parsed), and a TLS 1.2 renegotiation
attempt with the warning ``no_renegotiation``, as OpenSSL does when
renegotiation is off.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ALERT_BAD_RECORD_MAC",
    "ALERT_CLOSE_NOTIFY",
    "ALERT_DECODE_ERROR",
    "ALERT_ILLEGAL_PARAMETER",
    "ALERT_INTERNAL_ERROR",
    "ALERT_LEVEL_FATAL",
    "ALERT_LEVEL_WARNING",
    "ALERT_NO_RENEGOTIATION",
    "ALERT_PROTOCOL_VERSION",
    "ALERT_RECORD_OVERFLOW",
    "ALERT_UNEXPECTED_MESSAGE",
    "ALERT_USER_CANCELED",
    "alert_name",
]

ALERT_LEVEL_WARNING: Final = 1
ALERT_LEVEL_FATAL: Final = 2

ALERT_CLOSE_NOTIFY: Final = 0
ALERT_UNEXPECTED_MESSAGE: Final = 10
ALERT_BAD_RECORD_MAC: Final = 20
ALERT_RECORD_OVERFLOW: Final = 22
ALERT_ILLEGAL_PARAMETER: Final = 47
ALERT_DECODE_ERROR: Final = 50
ALERT_PROTOCOL_VERSION: Final = 70
ALERT_INTERNAL_ERROR: Final = 80
ALERT_USER_CANCELED: Final = 90
ALERT_NO_RENEGOTIATION: Final = 100

_ALERT_NAMES: Final = {
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
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}


def alert_name(description: int) -> str:
    """The RFC name of an alert description (``alert 199`` if unknown)."""
    return _ALERT_NAMES.get(description, f"alert {description}")
