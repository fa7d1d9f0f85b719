"""skmsg's built-in TLS plugin.

Registered through the ``skmsg`` entry-point group exactly as a third-party
plugin is, so it is also the template for writing one. It registers no
protocol table: TLS is a ULP on :class:`skmsg_tcp.SkStream` streams
(:func:`start_tls`), as kTLS is on TCP sockets, registered as the ULP
``"tls"``: programs read a connection's :class:`TlsInfo` as ``sk.tls``.

What users hold is :class:`TlsSocket` (what :func:`start_tls` returns); the
stream's own hooks into the record layer are private.
"""

from __future__ import annotations

from collections.abc import Sequence

from skmsg_core import SkProto, hookimpl

from ._info import TLS_ULP, TlsUlpOps

__all__ = ["skmsg_protocols", "skmsg_ulps"]


@hookimpl
def skmsg_protocols() -> Sequence[SkProto]:
    """No TLS protocol table yet."""
    return ()


@hookimpl
def skmsg_ulps() -> Sequence[TlsUlpOps]:
    """The ULP ``"tls"`` (``tcp_register_ulp(&tls_tcp_ulp)``)."""
    return (TLS_ULP,)

# TLS alerts: levels, descriptions, names.
from ._alerts import ALERT_BAD_RECORD_MAC as ALERT_BAD_RECORD_MAC  # noqa: E402
from ._alerts import ALERT_CLOSE_NOTIFY as ALERT_CLOSE_NOTIFY  # noqa: E402
from ._alerts import ALERT_DECODE_ERROR as ALERT_DECODE_ERROR  # noqa: E402
from ._alerts import ALERT_LEVEL_FATAL as ALERT_LEVEL_FATAL  # noqa: E402
from ._alerts import ALERT_LEVEL_WARNING as ALERT_LEVEL_WARNING  # noqa: E402
from ._alerts import ALERT_NO_RENEGOTIATION as ALERT_NO_RENEGOTIATION  # noqa: E402
from ._alerts import ALERT_RECORD_OVERFLOW as ALERT_RECORD_OVERFLOW  # noqa: E402
from ._alerts import ALERT_UNEXPECTED_MESSAGE as ALERT_UNEXPECTED_MESSAGE  # noqa: E402
from ._alerts import alert_name as alert_name  # noqa: E402

# The record codec: sans-I/O, re-exported only.
from ._codec import TLS_1_2_VERSION as TLS_1_2_VERSION  # noqa: E402
from ._codec import TLS_1_3_VERSION as TLS_1_3_VERSION  # noqa: E402
from ._codec import TLS_CIPHER_AES_GCM_128 as TLS_CIPHER_AES_GCM_128  # noqa: E402
from ._codec import TLS_CIPHER_AES_GCM_256 as TLS_CIPHER_AES_GCM_256  # noqa: E402
from ._codec import TLS_CIPHER_CHACHA20_POLY1305 as TLS_CIPHER_CHACHA20_POLY1305  # noqa: E402
from ._codec import TLS_HANDSHAKE_KEY_UPDATE as TLS_HANDSHAKE_KEY_UPDATE  # noqa: E402
from ._codec import TLS_MAX_PAYLOAD_SIZE as TLS_MAX_PAYLOAD_SIZE  # noqa: E402
from ._codec import TLS_MIN_RECORD_SIZE_LIMIT as TLS_MIN_RECORD_SIZE_LIMIT  # noqa: E402
from ._codec import TLS_RECORD_TYPE_ALERT as TLS_RECORD_TYPE_ALERT  # noqa: E402
from ._codec import (  # noqa: E402
    TLS_RECORD_TYPE_CHANGE_CIPHER_SPEC as TLS_RECORD_TYPE_CHANGE_CIPHER_SPEC,
)
from ._codec import TLS_RECORD_TYPE_DATA as TLS_RECORD_TYPE_DATA  # noqa: E402
from ._codec import TLS_RECORD_TYPE_HANDSHAKE as TLS_RECORD_TYPE_HANDSHAKE  # noqa: E402
from ._codec import RecordOpener as RecordOpener  # noqa: E402
from ._codec import RecordSealer as RecordSealer  # noqa: E402
from ._codec import TlsCryptoInfo as TlsCryptoInfo  # noqa: E402
from ._codec import TlsRecordError as TlsRecordError  # noqa: E402
from ._codec import cipher_name as cipher_name  # noqa: E402
from ._codec import key_update_message as key_update_message  # noqa: E402

# The key hand-off from a real handshake (OpenSSL through ssl.SSLObject).
from ._handoff import SessionTicketFeed as SessionTicketFeed  # noqa: E402
from ._handoff import TlsHandoff as TlsHandoff  # noqa: E402
from ._handoff import TlsHandoffError as TlsHandoffError  # noqa: E402
from ._handoff import tls_handoff as tls_handoff  # noqa: E402

# What the handshake agreed on, for the application and for programs (sk.tls).
from ._info import TlsInfo as TlsInfo  # noqa: E402

# The key schedule: traffic secrets to crypto infos.
from ._keys import cipher_for_suite as cipher_for_suite  # noqa: E402
from ._keys import cipher_hash as cipher_hash  # noqa: E402
from ._keys import hkdf_expand_label as hkdf_expand_label  # noqa: E402
from ._keys import tls12_crypto_infos as tls12_crypto_infos  # noqa: E402
from ._keys import tls12_prf as tls12_prf  # noqa: E402
from ._keys import tls13_crypto_info as tls13_crypto_info  # noqa: E402
from ._keys import tls13_next_secret as tls13_next_secret  # noqa: E402
from ._policy import PatternGuard as PatternGuard  # noqa: E402

# The ULP on skmsg_tcp streams.
from ._rx import ControlRecord as ControlRecord  # noqa: E402
from ._rx import TlsRxError as TlsRxError  # noqa: E402
from ._rx import TlsTruncationError as TlsTruncationError  # noqa: E402
from ._socket import TlsSocket as TlsSocket  # noqa: E402
from ._start import enable_tls as enable_tls  # noqa: E402
from ._start import start_tls as start_tls  # noqa: E402
from ._stats import TLS_STAT_NAMES as TLS_STAT_NAMES  # noqa: E402
from ._stats import TlsStats as TlsStats  # noqa: E402
from ._stats import tls_stat as tls_stat  # noqa: E402
