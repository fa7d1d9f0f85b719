"""TLS counters: per stream, and module totals shaped after ``/proc/net/tls_stat``.

The kernel keeps one set of per-namespace counters (``LINUX_MIB_TLS*``,
``net/tls/tls_proc.c``); skmsg keeps the same names as module totals
(:func:`tls_stat`) and, per stream, the records and bytes each direction
moved (:class:`TlsStats`, also in ``stream.statistics().tls``).

Counted, in the kernel's words:

- ``TlsCurrTxSw`` / ``TlsCurrRxSw``: streams with a TLS TX / RX context now;
- ``TlsTxSw`` / ``TlsRxSw``: TX / RX contexts ever installed;
- ``TlsDecryptError``: records that failed authentication (or were malformed);
- ``TlsTxRekeyOk`` / ``TlsRxRekeyOk``: TLS 1.3 key updates applied per direction;
- ``TlsTxRekeyError`` / ``TlsRxRekeyError``: key updates refused;
- ``TlsRxRekeyReceived``: KeyUpdate messages received.

The device-offload counters (``TlsCurrTxDevice`` ...) are always 0: there is
no device here. They are listed so a reader of ``tls_stat`` finds every line.
"""

from __future__ import annotations

import attrs

__all__ = ["TLS_STAT_NAMES", "TlsStats", "tls_stat"]

#: The lines of ``/proc/net/tls_stat``, in the kernel's order.
TLS_STAT_NAMES = (
    "TlsCurrTxSw",
    "TlsCurrRxSw",
    "TlsCurrTxDevice",
    "TlsCurrRxDevice",
    "TlsTxSw",
    "TlsRxSw",
    "TlsTxDevice",
    "TlsRxDevice",
    "TlsDecryptError",
    "TlsRxDeviceResync",
    "TlsDecryptRetry",
    "TlsRxNoPadViolation",
    "TlsRxRekeyOk",
    "TlsRxRekeyError",
    "TlsTxRekeyOk",
    "TlsTxRekeyError",
    "TlsRxRekeyReceived",
)

_totals: dict[str, int] = dict.fromkeys(TLS_STAT_NAMES, 0)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the module total ``name`` (one of :data:`TLS_STAT_NAMES`)."""
    _totals[name] += n


def tls_stat() -> dict[str, int]:
    """A snapshot of the module totals, keyed and ordered as ``/proc/net/tls_stat``."""
    return dict(_totals)


@attrs.frozen
class TlsStats:
    """What one stream's TLS layer did.

    ``version`` and ``cipher_type`` are the kernel's numbers (``0x0304``,
    ``TLS_CIPHER_AES_GCM_128`` ...). Records and bytes count plaintext
    application data per direction (``tx_bytes`` what was sealed, ``rx_bytes``
    what was opened); control records (alerts, handshake messages) are counted
    apart. ``decrypt_errors`` is 0 or 1 (the first failure ends the stream).
    ``tx_alerts``: alerts this side sent of its own accord (a fatal alert
    answering a fault of the peer's, ``no_renegotiation``; not close_notify,
    nor what ``send_control`` sends). ``tickets_received``: TLS 1.3 session
    tickets received and given to the handshake's ``ssl_object`` (client side).
    """

    version: int
    cipher_type: int
    tx_records: int
    tx_bytes: int
    tx_control_records: int
    rx_records: int
    rx_bytes: int
    rx_control_records: int
    rx_control_dropped: int
    decrypt_errors: int
    tx_rekeys: int
    rx_rekeys: int
    rx_key_updates_received: int
    open_record_bytes: int
    tx_alerts: int = 0
    tickets_received: int = 0
