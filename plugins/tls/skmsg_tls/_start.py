"""``start_tls``: a real handshake in OpenSSL, then the record layer is ours.

Theory of operation
-------------------
The kernel's order is kept: a stream enters its socket maps first, then TLS
is enabled (``setsockopt(TCP_ULP, "tls")`` + ``TLS_TX``/``TLS_RX``). After
that the stream cannot enter another map (``EBUSY``), and a stream that got
TLS outside any map cannot enter one at all (``EINVAL``): the core's map
update enforces both from ``sk.ulp``.

The handshake runs in Python's ``ssl`` (OpenSSL) over memory BIOs
(:func:`._handoff.tls_handoff`), reading and writing the stream's transport
directly. **Policy and the handshake**: the kernel would run the socket's
programs on the handshake's bytes, which are ordinary TCP bytes before the
ULP is set; skmsg deliberately does not. The handshake is the TLS library's
business, and a policy written for the plaintext (an HTTP parser, a pattern
match) would only misread it. While ``start_tls`` runs:

- ``send_all`` and ``receive_some`` from other tasks fail with
  ``trio.BusyResourceError`` (the handshake holds both directions);
- the receive pump is stopped, and no new one starts (``_ulp_pending``, then
  the ULP), so it cannot take the handshake's bytes; bytes a pump had already queued for
  this socket before ``start_tls`` (only if the application awaited between
  the map update and ``start_tls``) were verdicted as ordinary bytes, as in
  the kernel, and are given to the handshake.

When the handshake is done the ULP is installed and the bytes OpenSSL did
not consume are opened first (through the receive verdict when there is
one). From then on the stream receives in the reader, as kTLS does in
``tls_sw_recvmsg``: no receive pump runs for a TLS stream.

What the handshake agreed on carries over to the record layer: the role
(which post-handshake messages the peer may send), a ``max_fragment_length``
(the record size limit both ways), the context's
``ssl.OP_IGNORE_UNEXPECTED_EOF`` (a TCP EOF without close_notify is then a
clean end, not an error), and, on a TLS 1.3 client, the session: tickets
received later are given to ``ssl_object``.

What the handshake agreed on by name (:class:`~skmsg_tls.TlsInfo`: version,
suite, server name, ALPN, the peer's certificate) is published on the socket
(``sk.ulp_info``, read by programs as ``sk.tls``) when the ULP is installed,
before any byte after the handshake is verdicted: a program sees ``None``
there until the handshake is done, and the facts from then on.
"""

from __future__ import annotations

import errno
import ssl

import trio

import skmsg_core as sk
from skmsg_tcp import SkStream

from . import _stats
from ._codec import TLS_MAX_PAYLOAD_SIZE, TlsCryptoInfo
from ._handoff import tls_handoff
from ._info import TLS_ULP, TlsInfo
from ._socket import TlsSocket
from ._ulp import TlsUlp

__all__ = ["enable_tls", "start_tls"]


def _check(stream: object) -> SkStream:
    if not isinstance(stream, SkStream):
        raise TypeError(f"TLS needs an skmsg_tcp.SkStream, not {type(stream).__name__}")
    s = stream.sk
    if stream._closed:
        raise trio.ClosedResourceError("this stream was closed")
    if s.ulp is not None or stream._ulp is not None or stream._ulp_pending:
        raise sk.kernel_error(errno.EEXIST, f"{s.describe()} already has the {s.ulp!r} ULP")
    if stream.socket.did_shutdown_SHUT_WR or stream._rx_eof:
        raise sk.kernel_error(errno.ENOTCONN, f"{s.describe()} has sent or received EOF")
    return stream


async def start_tls(
    stream: SkStream,
    ctx: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: str | None = None,
    strparser: bool = False,
    session: ssl.SSLSession | None = None,
) -> TlsSocket:
    """Run a TLS handshake with ``ctx`` on ``stream``, then take over its record layer.

    ``server_hostname`` (client side) is used for SNI and certificate checks,
    as with ``ssl.SSLContext.wrap_socket``; ``session`` (client side) resumes
    the session of an earlier connection (``tls.ssl_object.session`` of one:
    TLS 1.2 and TLS 1.3 tickets both land there; ``ssl_object.session_reused``
    tells whether the server took it). Everything the context configures
    (certificates, verification, ALPN, tickets, ``OP_IGNORE_UNEXPECTED_EOF``)
    applies. Afterwards the
    stream's ``send_all``/``receive_some`` carry application data, sealed and
    opened by skmsg, with the stream's SK_MSG / SK_SKB programs seeing the
    plaintext. The returned :class:`TlsSocket` gives what the handshake
    agreed on (``version``, ``cipher``, ``info``, ``ssl_object``), control
    records, key updates and counters; programs read ``info`` as
    ``sk.tls`` from now on.

    Receive programs see one decrypted *record* per verdict run, as in the
    kernel, whose kTLS frames records itself and bypasses a sockmap stream
    parser. ``strparser=True`` is an extension for message-based protocols:
    if the socket's map has a stream parser, it frames the decrypted
    plaintext and the verdict runs once per message, whatever the records
    (``skmsg proxy --tls`` uses it).

    Raises:
        TypeError: ``stream`` is not an :class:`skmsg_tcp.SkStream`.
        FileExistsError: (``EEXIST``) the stream already has a ULP (TLS).
        trio.BusyResourceError: another task is sending or receiving on it.
        trio.ClosedResourceError: the stream is closed.
        OSError(ENOTCONN): the stream has sent or received EOF.
        ssl.SSLError, trio.BrokenResourceError: the handshake failed (the
            stream is then unusable, as with ``trio.SSLStream``).
        skmsg_tls.TlsHandoffError: the handshake agreed on something the
            record layer cannot take over (see :func:`tls_handoff`).
        ValueError, TypeError: ``session`` is given to a server or is not a
            session of ``ctx``.

    Cancellation during the handshake leaves the stream unusable.
    """
    stream = _check(stream)
    s = stream.sk
    with stream._send_conflict, stream._receive_conflict:
        stream._ulp_pending = True
        rt = stream._runtime
        if rt is not None:
            rt.stop_pump(stream)  # synchronously: the pump never sees the handshake

        async def send_raw(data: bytes | bytearray | memoryview) -> None:
            await stream._locked_send([memoryview(data).cast("B")], False)

        async def receive_raw(max_bytes: int | None = None) -> bytes:
            psock = s.psock
            if psock is not None and psock.ingress_bytes:
                await trio.lowlevel.checkpoint()
                return psock.recvmsg(max_bytes or 65536)
            return await stream.transport_recv(max_bytes or 65536)

        try:
            hand = await tls_handoff(
                send_raw,
                receive_raw,
                ctx,
                server_side=server_side,
                server_hostname=server_hostname,
                session=session,
            )
        except BaseException:
            stream._ulp_pending = False
            _restart_pump(stream)
            raise
        info = hand.info or TlsInfo.from_crypto(hand.version, hand.cipher_type, server_side)
        ulp = TlsUlp(
            stream,
            hand.tx,
            hand.rx,
            info,
            tx_secret=hand.tx_secret,
            rx_secret=hand.rx_secret,
            ssl_object=hand.ssl_object,
            strparser=strparser,
            server_side=server_side,
            ignore_unexpected_eof=bool(
                hand.ssl_object.context.options & ssl.OP_IGNORE_UNEXPECTED_EOF
            ),
            record_size_limit=hand.record_size_limit,
            tickets=hand.tickets,
        )
        await _install(stream, ulp, bytes(hand.unconsumed))
    return TlsSocket(ulp)


async def enable_tls(
    stream: SkStream,
    tx: TlsCryptoInfo,
    rx: TlsCryptoInfo,
    *,
    tx_secret: bytes | None = None,
    rx_secret: bytes | None = None,
    received: bytes = b"",
    strparser: bool = False,
    server_side: bool | None = None,
    ignore_unexpected_eof: bool = False,
    record_size_limit: int = TLS_MAX_PAYLOAD_SIZE,
) -> TlsSocket:
    """Install the TLS ULP with keys from a handshake done elsewhere: the
    kernel's ``setsockopt(TCP_ULP, "tls")`` then ``TLS_TX`` and ``TLS_RX``.

    ``tx_secret``/``rx_secret`` (TLS 1.3 traffic secrets) enable KeyUpdate;
    ``received``: bytes already read from the peer past the handshake, opened
    first. ``strparser``: as :func:`start_tls`. What the handshake agreed on:
    ``server_side`` (None: unknown; then the peer may send what either end
    may receive after a handshake), ``ignore_unexpected_eof`` (a TCP EOF
    without close_notify is a clean end), ``record_size_limit`` (a
    negotiated ``max_fragment_length``: the most plaintext per record).
    Programs see ``sk.tls`` with the version and cipher only: no handshake
    ran here, so no server name, ALPN protocol or peer certificate.

    Raises:
        TypeError, FileExistsError, trio.BusyResourceError: as :func:`start_tls`.
        trio.ClosedResourceError, OSError(ENOTCONN): as :func:`start_tls`.
        ValueError: ``tx`` and ``rx`` differ in version or cipher, or
            ``record_size_limit`` is not 64..``TLS_MAX_PAYLOAD_SIZE``.
    """
    stream = _check(stream)
    ulp = TlsUlp(
        stream,
        tx,
        rx,
        TlsInfo.from_crypto(tx.version, tx.cipher_type, server_side),
        tx_secret=tx_secret,
        rx_secret=rx_secret,
        strparser=strparser,
        server_side=server_side,
        ignore_unexpected_eof=ignore_unexpected_eof,
        record_size_limit=record_size_limit,
    )
    with stream._send_conflict, stream._receive_conflict:
        rt = stream._runtime
        if rt is not None:
            rt.stop_pump(stream)
        await _install(stream, ulp, received)
    return TlsSocket(ulp)


async def _install(stream: SkStream, ulp: TlsUlp, received: bytes) -> None:
    """Make ``ulp`` the stream's ULP (it receives in the reader from now on:
    no pump restarts), publish its facts for programs (``sk.tls``), and open
    ``received`` (its records are the first a program may verdict)."""
    stream.sk.ulp_info = ulp.info
    stream.sk.ulp = TLS_ULP.name
    stream._ulp = ulp
    stream._ulp_pending = False
    for name in ("TlsCurrTxSw", "TlsCurrRxSw", "TlsTxSw", "TlsRxSw"):
        _stats.count(name)
    if received:
        await ulp.rx_input(received)
    else:
        await trio.lowlevel.checkpoint()


def _restart_pump(stream: SkStream) -> None:
    """The handshake failed: the stream is plain TCP again, with its pump."""
    psock = stream.sk.psock
    rt = stream._runtime
    if psock is not None and psock.rx_mode is not None and rt is not None and not stream._closed:
        rt.start_pump(stream)
