"""``TlsSocket``: what a user holds of a TLS connection (the facade over its ULP).

The stream's record layer (:class:`._ulp.TlsUlp`) has two audiences: the
stream, which hands it every send, redirect and read through the ULP hooks
(:class:`skmsg_tcp.StreamUlp`), and the application, which wants what TLS
has beyond a byte stream. This module is the second one's view only, so no
hook of the first is a name a user can reach: the facade holds the ULP
privately and forwards a fixed set of calls, as ``trio.SSLStream`` forwards
a fixed set of ``SSLObject`` attributes.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import trio

from ._info import TlsInfo
from ._rx import ControlRecord
from ._stats import TlsStats

if TYPE_CHECKING:
    from skmsg_tcp import SkStream

    from ._ulp import TlsUlp

__all__ = ["TlsSocket"]


class TlsSocket(trio.abc.AsyncResource):
    """The TLS layer of one stream: what :func:`~skmsg_tls.start_tls` and
    :func:`~skmsg_tls.enable_tls` return.

    Application data still goes through the stream's own ``send_all`` and
    ``receive_some`` (:attr:`stream`), with its SK_MSG / SK_SKB programs
    seeing the plaintext; this object adds what TLS has beyond a byte stream.
    It is made by those two functions only, and stays valid (its facts and
    counters readable) after the stream is closed.

    What the handshake agreed on (read-only):

    - :attr:`version`, :attr:`cipher`: by name, as ``trio.SSLStream`` users
      know them (``"TLSv1.3"``, ``"TLS_AES_128_GCM_SHA256"``);
      :attr:`version_number`, :attr:`cipher_type`: the kernel's numbers
      (``TLS_1_3_VERSION``, ``TLS_CIPHER_AES_GCM_128``);
    - :attr:`info`: all of it in one frozen :class:`TlsInfo` (server name,
      ALPN protocol, the peer's certificate subject and issuer), the very
      record a program reads as ``skb.sk.tls`` / ``msg.sk.tls``;
    - :attr:`ssl_object`: the handshake's ``ssl.SSLObject`` for anything
      else (``getpeercert()``, ``session``, ``session_reused``), never for
      I/O; ``None`` with keys from :func:`~skmsg_tls.enable_tls`;
    - :attr:`record_size_limit`: the most plaintext one record carries.

    What TLS has beyond bytes: control records (:meth:`receive_control`,
    :meth:`receive_control_nowait`, :meth:`send_control`), key updates
    (:meth:`update_keys`), the end of sending (:meth:`send_close_notify`;
    :meth:`aclose` closes the stream), counters (:meth:`statistics`).

    Errors after the hand-off are those of the stream: a fault in the peer's
    bytes fails receiving (``trio.BrokenResourceError`` whose ``__cause__``
    is a :class:`TlsRxError` with the errno and the fatal alert sent for it)
    and ends sending; sending after the end raises
    ``trio.ClosedResourceError`` (after our close_notify) or
    ``trio.BrokenResourceError`` (after a fatal alert).
    """

    __slots__ = ("_ulp",)

    def __init__(self, ulp: TlsUlp) -> None:
        self._ulp = ulp

    # -- what the handshake agreed on ------------------------------------------------------

    @property
    def stream(self) -> SkStream:
        """The :class:`skmsg_tcp.SkStream` this TLS layer serves."""
        return self._ulp.stream

    @property
    def info(self) -> TlsInfo:
        """What the handshake agreed on (:class:`TlsInfo`), as programs see it
        in ``sk.tls``."""
        return self._ulp.info

    @property
    def version(self) -> str:
        """The protocol version's name: ``"TLSv1.3"`` or ``"TLSv1.2"``."""
        return self._ulp.info.version

    @property
    def cipher(self) -> str:
        """The cipher suite's name (OpenSSL's, as ``ssl_object.cipher()[0]``:
        ``"TLS_AES_128_GCM_SHA256"``; see :attr:`TlsInfo.cipher` for keys
        from :func:`~skmsg_tls.enable_tls`)."""
        return self._ulp.info.cipher

    @property
    def version_number(self) -> int:
        """The version as the kernel numbers it: ``TLS_1_3_VERSION`` (``0x0304``)
        or ``TLS_1_2_VERSION`` (``0x0303``)."""
        return self._ulp.info.version_number

    @property
    def cipher_type(self) -> int:
        """The kernel's cipher: ``TLS_CIPHER_AES_GCM_128``, ``_AES_GCM_256`` or
        ``_CHACHA20_POLY1305``."""
        return self._ulp.info.cipher_type

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The handshake's ``ssl.SSLObject`` (peer certificate, ALPN, session;
        TLS 1.3 tickets received later are given to it, so ``.session``
        resumes a later connection); ``None`` with keys from ``enable_tls``.
        Never use it for I/O: its sequence numbers stopped at the hand-off."""
        return self._ulp.ssl_object

    @property
    def record_size_limit(self) -> int:
        """The most plaintext one record carries, both ways:
        ``TLS_MAX_PAYLOAD_SIZE`` (16384) unless the handshake negotiated a
        ``max_fragment_length``. Longer sends are cut into records of this
        size; a longer record received fails with ``record_overflow``."""
        return self._ulp.record_size_limit

    # -- control records, key updates, the end -----------------------------------------------

    async def receive_control(self) -> ControlRecord:
        """Wait for the next control record (an alert, a post-handshake
        handshake message, ...) in arrival order: ``ControlRecord(content_type,
        data)``, as ``recvmsg`` with ``TLS_GET_RECORD_TYPE`` gives it. When no
        other task is in ``receive_some`` this reads the socket itself: data
        records met meanwhile are verdicted and wait for ``receive_some``
        (with 1 MiB of them waiting it stops reading until they are taken,
        as kTLS keeps control records behind unread data).

        Raises:
            trio.EndOfChannel: the peer's close_notify (or, with
                ``ssl.OP_IGNORE_UNEXPECTED_EOF``, a bare TCP EOF) came and
                every control record before it was taken.
            trio.BrokenResourceError: receiving failed (a bad record, a fatal
                alert, a TCP EOF without close_notify); ``__cause__`` carries
                the errno.
            trio.ClosedResourceError: the stream was closed.

        Cancellation: a record is taken only when this returns it; cancelled
        while it reads the socket, it is as a cancelled ``receive_some``.
        """
        return await self._ulp.receive_control()

    def receive_control_nowait(self) -> ControlRecord:
        """The oldest control record received and not yet taken.

        Raises:
            trio.WouldBlock: none is waiting.
        """
        return self._ulp.receive_control_nowait()

    async def send_control(self, content_type: int, data: bytes | bytearray | memoryview) -> None:
        """Send one record of ``content_type`` (``TLS_SET_RECORD_TYPE``), e.g.
        an alert (21). A record left open by ``send_all(..., more=True)`` goes
        first, through its verdict as an end of record would send it. Control
        records are not verdicted (programs see application data only). A
        ``close_notify`` alert sent this way ends sending.

        Raises:
            ValueError: ``content_type`` is application data (23) or not
                1..255, or ``data`` is longer than :attr:`record_size_limit`.
            trio.ClosedResourceError: close_notify was sent already.
            trio.BrokenResourceError: sending ended with a fatal alert, or
                the transport broke.
            skmsg_tcp.SendError: the open record's verdict dropped it.
            trio.BusyResourceError: another task is sending on the stream.

        Cancellation while the record is being written leaves the stream in an
        unknown state, as a cancelled ``send_all`` does.
        """
        await self._ulp.send_control(content_type, data)

    async def update_keys(self, *, request_peer: bool = True) -> None:
        """Send a TLS 1.3 KeyUpdate and move the sending key on (RFC 8446
        §4.6.3); with ``request_peer`` the peer is asked to update its keys
        too (its KeyUpdate is then handled on receipt, like any, and counted
        in :meth:`statistics`).

        Raises:
            OSError(EINVAL): the connection is not TLS 1.3 (or its keys came
                from ``enable_tls`` without ``tx_secret``).
            trio.ClosedResourceError, trio.BrokenResourceError: sending has
                ended (close_notify or a fatal alert), or the transport broke.
            trio.BusyResourceError: another task is sending on the stream.

        Cancellation while the KeyUpdate is being written leaves the stream in
        an unknown state, as a cancelled ``send_all`` does.
        """
        await self._ulp.update_keys(request_peer=request_peer)

    async def send_close_notify(self) -> None:
        """Send the ``close_notify`` alert (once): sending ends, receiving goes
        on until the peer's own close_notify; the TCP stream stays open
        (``stream.send_eof()`` sends it, then half-closes TCP). After a fatal
        alert of ours nothing is sent, except that alert if it is still owed.

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: the transport.

        Cancellation while the alert is being written leaves the stream in an
        unknown state.
        """
        await self._ulp.send_close_notify()

    async def aclose(self) -> None:
        """Close the stream (:meth:`skmsg_tcp.SkStream.aclose`): a
        close_notify if the socket takes it at once (it never waits), then
        the socket. Idempotent; the stream is closed even if cancelled."""
        await self._ulp.stream.aclose()

    def statistics(self) -> TlsStats:
        """A snapshot of this connection's TLS counters (:class:`TlsStats`;
        also ``stream.statistics().ulp``)."""
        return self._ulp.statistics()

    def __repr__(self) -> str:
        return f"<TlsSocket {self.version} {self.cipher} on {self.stream!r}>"
