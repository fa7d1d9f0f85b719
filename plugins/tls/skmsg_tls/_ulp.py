"""``TlsUlp``: the TLS ULP's state on an :class:`skmsg_tcp.SkStream` (``tls_context``).

Private: the stream calls it, users get :class:`skmsg_tls.TlsSocket`, the
facade over it (``_socket.py``). Its public methods are the stream's ULP
hooks (:class:`skmsg_tcp.StreamUlp`: ``sendmsg``, ``egress_write``,
``rx_input``, ``rx_fill``, ``transport_eof``, ``plain_bytes``,
``take_plain``, ``rx_error``, ``rx_ended``, ``ulp_send_eof``, ``ulp_close``,
``statistics``) and the work behind the facade's calls.

Theory of operation
-------------------
:func:`skmsg_tls.start_tls` runs the handshake in OpenSSL and installs one
``TlsUlp`` on the stream (``stream._ulp``; ``sk.ulp = "tls"`` and the
handshake's :class:`~skmsg_tls.TlsInfo` as ``sk.ulp_info``). From then on
the stream's operations call it:

- ``send_all`` → :meth:`TlsUlp.sendmsg`: without an SK_MSG program the
  plaintext is cut into records and sealed; with one, the TLS TX verdict
  engine (:class:`._tx.TlsSendOp`) runs the program once per record and the
  records it passes are sealed. Records are sealed into one ``bytearray`` per
  batch and written with one socket write (``PASS_BATCH`` bytes at most);
  sealing and writing happen under the stream's write lock, so record
  sequence numbers follow wire order whoever writes (the stream's own sends,
  redirects into it, control records).
- a redirect to this stream's egress (``egress_write``) is sealed with this
  stream's keys without a verdict (the kernel's ``MSG_SENDPAGE_NOPOLICY``);
- receiving runs in the reader, as kTLS's ``tls_sw_recvmsg`` does (no
  receive pump is started for a TLS stream): ``receive_some`` reads the
  socket and hands the bytes to :meth:`rx_input`, which opens the records,
  runs the stream verdict on each data record's plaintext
  (:meth:`skmsg_core.SkPsock.rx_verdict`) when the psock has one, and carries
  out its actions; passed plaintext waits in this object until read, control
  records are queued here. So, as in the kernel, a TLS socket nobody reads
  runs no receive verdict (a proxy keeps reading its clients).

Control records: :meth:`receive_control` / :meth:`send_control`. EOF:
``close_notify`` from the peer; :meth:`send_close_notify` (``send_eof``
sends it, then half-closes the TCP stream). A TCP EOF without
``close_notify`` is a truncation and fails receiving, as with
``trio.SSLStream``, unless the context sets ``ssl.OP_IGNORE_UNEXPECTED_EOF``.

Strict TLS after the hand-off: every fault in the peer's bytes (a record
that fails authentication, one too long, a message not allowed now, ...)
fails receiving and is answered with its fatal alert (RFC 8446 §6.2), sealed
under the current TX keys, once, best effort (written only if the socket
takes it without waiting and no write is in progress; else when the stream
is closed); sending ends with it. A TLS 1.2 renegotiation attempt is
answered with the warning ``no_renegotiation``, written by the reader (it
waits for a write in progress to finish). TLS 1.3 session tickets are given
to the handshake's ``ssl_object`` (client side), so ``ssl_object.session``
resumes a later connection.

The negotiated record size (``max_fragment_length``) is
:attr:`TlsUlp.record_size_limit`: records sealed carry at most that many
bytes of plaintext and longer ones received fail with ``record_overflow``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

import skmsg_core as sk
from skmsg_core.runtime import escapes_boundary, ingress_put, socket_error, tx_redirect

from . import _stats
from ._alerts import (
    ALERT_CLOSE_NOTIFY,
    ALERT_DECODE_ERROR,
    ALERT_LEVEL_FATAL,
    ALERT_LEVEL_WARNING,
    alert_name,
)
from ._codec import (
    TLS_1_3_VERSION,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RECORD_TYPE_ALERT,
    TLS_RECORD_TYPE_DATA,
    TLS_RECORD_TYPE_HANDSHAKE,
    BufferPool,
    RecordSealer,
    TlsCryptoInfo,
    TlsRecordError,
    key_update_message,
)
from ._keys import tls13_crypto_info, tls13_next_secret
from ._rx import ControlRecord, TlsRx, TlsRxError
from ._stats import TlsStats
from ._tx import PASS_BATCH, OpenRecord, TlsSendOp, send_lean

if TYPE_CHECKING:
    from skmsg_tcp import SkStream

    from ._handoff import SessionTicketFeed
    from ._info import TlsInfo

__all__ = ["TlsUlp"]

log = logging.getLogger(__name__)

#: Sealing buffers shared by the process's TLS sockets: a write seals into
#: one and gives it back once written (kTLS seals into its open record's
#: pages the same way).
_SEAL_BUFFERS = BufferPool(4, 1 << 20)
#: ``receive_control`` reads the socket only while less opened data than this
#: waits for ``receive_some``.
PLAIN_LIMIT = 1 << 20
_WARNING = ALERT_LEVEL_WARNING


class TlsUlp:
    """The TLS layer of one stream, as the stream sees it (``stream._ulp``).

    ``info`` is what the handshake agreed on (published as ``sk.tls``);
    ``server_side`` (None: unknown) decides which post-handshake messages the
    peer may send; ``ignore_unexpected_eof`` makes a TCP EOF without
    close_notify a clean end (``ssl.OP_IGNORE_UNEXPECTED_EOF``);
    ``record_size_limit`` is the negotiated most plaintext per record;
    ``tickets`` takes the TLS 1.3 session tickets received for the session.

    Raises:
        ValueError: ``tx`` and ``rx`` differ in version or cipher, or
            ``record_size_limit`` is not 64..``TLS_MAX_PAYLOAD_SIZE``.
    """

    def __init__(
        self,
        stream: SkStream,
        tx: TlsCryptoInfo,
        rx: TlsCryptoInfo,
        info: TlsInfo,
        *,
        tx_secret: bytes | None = None,
        rx_secret: bytes | None = None,
        ssl_object: ssl.SSLObject | None = None,
        strparser: bool = False,
        server_side: bool | None = None,
        ignore_unexpected_eof: bool = False,
        record_size_limit: int = TLS_MAX_PAYLOAD_SIZE,
        tickets: SessionTicketFeed | None = None,
    ) -> None:
        if tx.version != rx.version or tx.cipher_type != rx.cipher_type:
            raise ValueError(
                f"TLS_TX ({tx.version:#06x}, cipher {tx.cipher_type}) and TLS_RX "
                f"({rx.version:#06x}, cipher {rx.cipher_type}) must agree"
            )
        self.stream = stream
        #: What the handshake agreed on (``sk.tls`` once installed).
        self.info = info
        #: Frame opened plaintext with the psock's stream parser (an extension).
        self.strparser = strparser
        self.version: int = tx.version
        self.cipher_type: int = tx.cipher_type
        #: The handshake's ``ssl.SSLObject`` (peer certificate, ALPN, cipher), if any.
        self.ssl_object = ssl_object
        self._sealer = RecordSealer(tx)
        self._tx_secret = tx_secret
        self.rx = TlsRx(rx, rx_secret, server_side=server_side)
        self._sealer.record_size_limit = record_size_limit
        self.rx.opener.record_size_limit = record_size_limit
        #: The most plaintext one record carries, both ways: ``TLS_MAX_PAYLOAD_SIZE``
        #: unless the handshake negotiated less (``max_fragment_length``).
        self.record_size_limit = record_size_limit
        #: Whole records sealed and written together (about PASS_BATCH bytes).
        self._per_batch = max(1, PASS_BATCH // record_size_limit)
        #: A TCP EOF without close_notify is a clean end (``OP_IGNORE_UNEXPECTED_EOF``).
        self.ignore_unexpected_eof = ignore_unexpected_eof
        self._tickets = tickets
        self.rx.keep_tickets = tickets is not None
        #: Session tickets given to ``ssl_object`` (TLS 1.3, client side).
        self.tickets_received = 0
        #: The receive error that ended sending (a fatal alert, ours or the
        #: peer's), once one did.
        self._tx_error: TlsRxError | None = None
        self._alert_owed: bytes | None = None  # a fatal alert not sealed yet
        self._alert_wire: bytes | None = None  # ... sealed, not written yet
        #: Alerts this side sent (fatal and warning, close_notify not counted).
        self.tx_alerts = 0
        self._open = OpenRecord()  # open record under an SK_MSG program
        self._plain_open = bytearray()  # open record without a program
        self._control_lot = trio.lowlevel.ParkingLot()
        self._plain: deque[memoryview] = deque()
        #: Opened plaintext waiting for ``receive_some`` (read only).
        self.plain_bytes = 0
        self._parse_error: sk.StrParserError | None = None
        self._tcp_eof = False
        self._tx_closed = False
        self.active = True
        self.tx_records = 0
        self.tx_bytes = 0
        self.tx_control_records = 0
        self.tx_rekeys = 0

    # -- TX ---------------------------------------------------------------------------------

    def _seal_locked(
        self,
        records: list[Any],
        ctype: int,
        scratch: bytearray,
        nbytes: int,
        *,
        pieces: bool = False,
    ) -> memoryview:
        """Seal ``records`` (each one record's plaintext, ``nbytes`` in all; with
        ``pieces``, bytes to cut into records: :meth:`RecordSealer.seal_pieces`)
        into ``scratch`` (a new buffer if a view still holds it), after the
        KeyUpdate the peer asked for if one is owed; return the sealed bytes.
        Call under the write lock."""
        prefix: bytearray | None = None
        if self.rx.key_update_requested:
            self.rx.key_update_requested = False
            prefix = bytearray()
            self._key_update_locked(prefix, update_requested=False)
        seal = self._sealer.seal_pieces if pieces else self._sealer.seal_batch
        try:
            out = seal(records, ctype, scratch=scratch)
        except BufferError:  # still exported (a write that failed): not reused
            out = seal(records, ctype)
        if ctype == TLS_RECORD_TYPE_DATA:
            limit = self.record_size_limit
            self.tx_records += -(-nbytes // limit) if pieces else len(records)
            self.tx_bytes += nbytes
        else:
            self.tx_control_records += len(records)
        if prefix is not None:
            prefix += out
            return memoryview(prefix)
        return out

    def _key_update_locked(self, out: bytearray, *, update_requested: bool) -> None:
        """Seal a KeyUpdate under the current key, then move the TX key on."""
        if self.version != TLS_1_3_VERSION or self._tx_secret is None:
            _stats.count("TlsTxRekeyError")
            raise sk.kernel_error(errno.EINVAL, "KeyUpdate needs TLS 1.3 and its traffic secret")
        self._sealer.seal_into(out, key_update_message(update_requested), TLS_RECORD_TYPE_HANDSHAKE)
        self.tx_control_records += 1
        self._tx_secret = tls13_next_secret(self._tx_secret, self.cipher_type)
        self._sealer.rekey(tls13_crypto_info(self._tx_secret, self.cipher_type, rec_seq=0))
        self.tx_rekeys += 1
        _stats.count("TlsTxRekeyOk")

    async def _write_records(self, records: list[Any], more: bool, ctype: int) -> int:
        """Seal ``records`` and write them with one socket write, under the
        stream's write lock (sequence numbers follow wire order); return their
        plaintext bytes. Records are sealed as soon as the lock is taken; when
        another write holds it, they are copied first, so that what is sealed
        is what was handed in (a record may be a sender's buffer lent to a
        verdict) whatever runs while this waits."""
        stream = self.stream
        lock = stream._write_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            records = [bytes(r) for r in records]
            await lock.acquire()
        try:
            return await self._seal_and_send(records, more, ctype)
        finally:
            lock.release()

    async def _seal_and_send(self, records: list[Any], more: bool, ctype: int) -> int:
        """Seal ``records`` at once and write them with one socket write; return
        their plaintext bytes. A record a program's ``msg_push_data`` made longer
        than :attr:`record_size_limit` is sealed as several records (the kernel
        would seal one the peer must refuse). Call under the write lock."""
        nbytes = sum(map(len, records))
        limit = self.record_size_limit
        if nbytes > limit and max(map(len, records)) > limit:
            records = [r[i : i + limit] for r in records for i in range(0, len(r), limit)]
        scratch = _SEAL_BUFFERS.take()
        out = self._seal_locked(records, ctype, scratch, nbytes)
        if out:
            await self.stream._send_bufs([out], more)
        out.release()  # the write is done with it: the buffer may serve again
        _SEAL_BUFFERS.give(scratch)
        return nbytes

    async def _write_batches(self, records: list[Any], more: bool) -> None:
        """Seal and write application-data ``records`` (one element per record)
        in batches of about ``PASS_BATCH`` bytes, one socket write each, the
        last with ``more``."""
        per = self._per_batch
        for i in range(0, len(records), per):
            last = i + per >= len(records)
            batch = records if last and not i else records[i : i + per]
            await self._write_records(batch, more or not last, TLS_RECORD_TYPE_DATA)

    async def sendmsg(self, view: memoryview, more: bool) -> None:
        """``tls_sw_sendmsg``: the stream's ``send_all`` on a TLS stream.

        Under an SK_MSG program the bulk case (records passed whole) is
        verdicted one batch at a time under the stream's write lock and each
        batch is sealed before anything else runs: the records are lent from
        ``view`` (read-only to the program) and what is sealed is what the
        program was shown, whatever the caller or another task does to the
        buffer while the send waits on the socket.

        Raises:
            skmsg_core.SendError: DROP (a PermissionError, EACCES) or a failed
                redirect (a BrokenPipeError, EPIPE), with
                ``accepted`` as on plain TCP.
            trio.BrokenResourceError, trio.ClosedResourceError: the transport.
        """
        if self._tx_closed:
            raise self._tx_closed_error()
        psock = self.stream.sk.psock
        if psock is None or psock.msg_parser is None:
            await self._send_plain(view, more)
            return
        if self._plain_open:  # entered a map with bytes left open: they join the record
            msg = self._open.msg = psock.new_msg()
            msg.append_copy(psock.frag, (bytes(self._plain_open),))
            self._plain_open.clear()
        src = view.toreadonly()
        cause: OSError | None = None
        try:
            written, op = await self._send_lean(psock, src, more)
            if op is None:
                return
            if not written:  # the rest may write nothing (a DROP, an empty send): a
                await trio.lowlevel.checkpoint()  # checkpoint all the same, as on TCP
            for action in op:
                try:
                    if action.kind == "pass":  # one element of bufs per record
                        records = list(action.bufs)
                        await self._write_records(records, action.more, TLS_RECORD_TYPE_DATA)
                    else:
                        await tx_redirect(action)
                except OSError as exc:
                    op.fail(exc.errno or errno.EIO)
                    cause = exc
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    op.fail(errno.EPIPE)
                    raise
        except BaseException as exc:
            if escapes_boundary(exc) or isinstance(
                exc, (trio.BrokenResourceError, trio.ClosedResourceError)
            ):
                raise
            # not a connection's own error: a plugin's or an engine's
            stream = self.stream
            raise socket_error(stream, exc, stream._runtime, what="send") from exc
        result = op.result()
        if result.err:
            raise result.error(
                f"send_all on TLS {self.stream.sk.describe()}", view.nbytes,
                accepted_before=written,
            ) from cause

    async def _send_lean(
        self, psock: sk.SkPsock, src: memoryview, more: bool
    ) -> tuple[int, TlsSendOp | None]:
        """The bulk case of :meth:`sendmsg`: take the write lock, verdict a
        batch of records (:func:`._tx.send_lean`), seal and write it, release,
        until the send ends or a record needs the engine. Returns the bytes
        written and the engine for the rest (None: the send is done)."""
        stream = self.stream
        lock = stream._write_lock
        size = src.nbytes
        pos = written = 0
        while True:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                # verdicts and sealing with no checkpoint between: nothing runs
                # in between that could change the lent bytes
                batch, pos, op = send_lean(
                    psock, self._open, src, pos, more, limit=self.record_size_limit
                )
                if batch:
                    nbytes = await self._seal_and_send(
                        batch, more or op is not None or pos < size, TLS_RECORD_TYPE_DATA
                    )
                    psock.tx_passed_bytes += nbytes
                    written += nbytes
                elif op is None:
                    await trio.lowlevel.checkpoint()
            finally:
                lock.release()
            if op is not None or pos >= size:
                return written, op

    async def _send_plain(self, view: memoryview, more: bool) -> None:
        """No SK_MSG program: cut into records, seal, write in batches."""
        if self._open.size:  # left a map with bytes open: they lead
            assert self._open.msg is not None
            self._plain_open += b"".join(self._open.msg.frags())
            self._open.msg.free()
            self._open.msg = None
        records: list[Any] = []
        pending = self._plain_open
        limit = self.record_size_limit
        if pending:
            take = min(view.nbytes, limit - len(pending))
            pending += view[:take]
            view = view[take:]
            if len(pending) >= limit or (not more and not view.nbytes):
                records.append(bytes(pending))
                pending.clear()
        size = view.nbytes
        pos = 0
        while size - pos >= limit or (pos < size and not more):
            records.append(view[pos : pos + limit])
            pos += limit
        if pos < size:
            pending += view[pos:]
        if not records:
            await trio.lowlevel.checkpoint()
            return
        await self._write_batches(records, more)

    async def egress_write(self, bufs: list[memoryview], more: bool) -> None:
        """Bytes redirected to this stream's egress: sealed with this stream's
        keys, no verdict (``MSG_SENDPAGE_NOPOLICY``).

        Raises:
            OSError(EPIPE): TLS was closed for sending (close_notify or a fatal
                alert sent).
            trio.BrokenResourceError, trio.ClosedResourceError: the transport.
        """
        if self._tx_closed:
            raise sk.kernel_error(
                errno.EPIPE, f"TLS {self.stream.sk.describe()} sent {self._tx_end()}"
            )
        # sealed straight from the pieces (they are the redirect's until this
        # returns), a batch of about PASS_BATCH bytes per socket write
        size = self._per_batch * self.record_size_limit
        batch: list[memoryview] = []
        room = size
        for buf in bufs:
            view = memoryview(buf)
            if view.format != "B":  # cut by bytes, whatever the view's items
                view = view.cast("B")
            n = view.nbytes
            if n <= room:
                batch.append(view)
                room -= n
                continue
            pos = 0
            while n - pos > room:
                if room:
                    batch.append(view[pos : pos + room])
                    pos += room
                await self._write_pieces(batch, True)
                batch, room = [], size
            batch.append(view[pos:])
            room -= n - pos
        if batch:
            await self._write_pieces(batch, more)
        else:
            await trio.lowlevel.checkpoint()

    async def _write_pieces(self, pieces: list[memoryview], more: bool) -> None:
        """Seal the bytes of ``pieces`` as data records (``seal_pieces``) and
        write them with one socket write, under the stream's write lock."""
        lock = self.stream._write_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            nbytes = sum(p.nbytes for p in pieces)
            scratch = _SEAL_BUFFERS.take()
            out = self._seal_locked(pieces, TLS_RECORD_TYPE_DATA, scratch, nbytes, pieces=True)
            if out:
                await self.stream._send_bufs([out], more)
            out.release()
            _SEAL_BUFFERS.give(scratch)
        finally:
            lock.release()

    async def send_control(self, content_type: int, data: bytes | bytearray | memoryview) -> None:
        """Send one record of ``content_type`` (``TLS_SET_RECORD_TYPE``), e.g. an
        alert (21). A record left open by ``send_all(..., more=True)`` goes first,
        through its verdict as an end of record would send it. Control records
        are not verdicted (the program sees application data only).

        Raises:
            ValueError: ``content_type`` is application data (23) or not 1..255,
                or ``data`` is longer than :attr:`record_size_limit`.
            trio.ClosedResourceError: close_notify was sent already.
            trio.BrokenResourceError: sending ended with a fatal alert of ours.
            skmsg_core.SendError: (a PermissionError) the open record's verdict dropped it.
            trio.BusyResourceError: another task is sending on the stream.
        """
        if content_type == TLS_RECORD_TYPE_DATA or not 0 < content_type < 256:
            raise ValueError(
                f"send_control: content type {content_type} is not a control record type "
                "(use send_all for application data, 23)"
            )
        if len(data) > self.record_size_limit:
            limit = self.record_size_limit
            raise ValueError(
                f"send_control: {len(data)} bytes exceed "
                + (
                    f"TLS_MAX_PAYLOAD_SIZE ({limit})"
                    if limit == TLS_MAX_PAYLOAD_SIZE
                    else f"the negotiated record size limit ({limit})"
                )
            )
        stream = self.stream
        with stream._send_conflict:
            if self._tx_closed:
                raise self._tx_closed_error()
            await self._flush_open()
            await self._write_records([bytes(data)], False, content_type)
            if content_type == TLS_RECORD_TYPE_ALERT and bytes(data[1:2]) == b"\0":
                self._tx_closed = True

    async def _flush_open(self) -> None:
        """Close a record left open by ``more=True`` (its verdict runs)."""
        if self._open.size or self._plain_open:
            await self.sendmsg(memoryview(b""), False)

    async def update_keys(self, *, request_peer: bool = True) -> None:
        """Send a TLS 1.3 KeyUpdate and move the TX key on (RFC 8446 §4.6.3);
        with ``request_peer`` the peer is asked to update its keys too (its
        KeyUpdate is then handled on receipt, like any).

        Raises:
            OSError(EINVAL): the connection is not TLS 1.3.
            trio.BusyResourceError: another task is sending on the stream.
        """
        stream = self.stream
        with stream._send_conflict:
            if self._tx_closed:
                raise self._tx_closed_error()
            await self._flush_open()
            lock = stream._write_lock
            async with lock:
                out = bytearray()
                if self.rx.key_update_requested:  # one KeyUpdate answers it too
                    self.rx.key_update_requested = False
                self._key_update_locked(out, update_requested=request_peer)
                await stream._send_bufs([memoryview(out)], False)

    async def send_close_notify(self) -> None:
        """Send the ``close_notify`` alert (once); sending ends after it. After a
        fatal alert of ours nothing is sent, except that alert if it is still
        owed (it waits for a write in progress then).

        Raises:
            trio.BrokenResourceError, trio.ClosedResourceError: the transport.
        """
        if self._tx_closed:
            if self._alert_owed is None and self._alert_wire is None:
                await trio.lowlevel.checkpoint()
                return
            async with self.stream._write_lock:
                wire = self._take_owed_alert()
                if wire:
                    await self.stream._send_bufs([memoryview(wire)], False)
            return
        await self._flush_open()
        self._tx_closed = True
        alert = bytes((_WARNING, ALERT_CLOSE_NOTIFY))
        await self._write_records([alert], False, TLS_RECORD_TYPE_ALERT)

    async def ulp_send_eof(self) -> None:
        """The stream's ``send_eof``: ``close_notify`` first."""
        await self.send_close_notify()

    def ulp_close(self) -> None:
        """The stream's ``aclose``: ``close_notify`` (or a fatal alert still
        owed) if the socket takes it at once, then the TLS context goes."""
        self.close_notify_nowait()
        self.release()

    @property
    def rx_ended(self) -> bool:
        """The peer's ``close_notify`` came (or, with ``ignore_unexpected_eof``,
        the TCP EOF): EOF once the data before it is read."""
        return self.rx.eof

    def close_notify_nowait(self) -> None:
        """Best effort, for ``aclose``: seal close_notify (or the fatal alert
        still owed) and write it only if the socket takes it at once and no
        write is in progress."""
        if self._tx_closed:
            self._write_owed_alert_nowait()
            return
        if self.stream._write_lock.locked():
            return
        self._tx_closed = True
        raw = self.stream._raw
        if raw is None:
            return
        out = bytearray()
        try:
            self._sealer.seal_into(
                out, bytes((_WARNING, ALERT_CLOSE_NOTIFY)), TLS_RECORD_TYPE_ALERT
            )
            raw.send(out)
        except (OSError, ValueError):
            return

    # -- alerts of ours -----------------------------------------------------------------

    def _tx_end(self) -> str:
        """What ended sending, for error messages."""
        err = self._tx_error
        if err is None:
            return "close_notify"
        if err.alert is None:
            return f"the peer's fatal alert ({err})"
        return f"a fatal {alert_name(err.alert)} alert ({err})"

    def _tx_closed_error(self) -> trio.ClosedResourceError | trio.BrokenResourceError:
        """The error a send raises once sending ended: ClosedResourceError after
        our close_notify, BrokenResourceError (the receive error as its cause)
        after a fatal alert, ours or the peer's."""
        err = self._tx_error
        if err is None:
            return trio.ClosedResourceError("can't send after close_notify")
        broken = trio.BrokenResourceError(
            f"TLS {self.stream.sk.describe()}: can't send after {self._tx_end()}"
        )
        broken.__cause__ = err
        return broken

    def _fatal_alert_nowait(self, err: TlsRxError) -> None:
        """Receiving failed for good: sending ends (RFC 8446 §6.2: a fatal
        alert sent or received closes the connection), with the fatal alert
        ``err.alert`` when the fault is the peer's bytes (none after our
        close_notify, nor for the peer's own fatal alert). It is written now if
        the socket takes it at once and no write is in progress; otherwise it
        stays owed for :meth:`close_notify_nowait` (``aclose``) and
        :meth:`send_close_notify` (``send_eof``). Never blocks, never raises."""
        if self._tx_closed:
            return
        self._tx_closed = True
        self._tx_error = err
        if err.alert is not None:
            self._alert_owed = bytes((ALERT_LEVEL_FATAL, err.alert))
            self._write_owed_alert_nowait()

    def _take_owed_alert(self) -> bytes | None:
        """The owed fatal alert's record, sealed now if it was not yet (call
        with no write in progress); it is owed no more."""
        wire, self._alert_wire = self._alert_wire, None
        alert, self._alert_owed = self._alert_owed, None
        if alert is not None:
            out = bytearray()
            try:
                self._sealer.seal_into(out, alert, TLS_RECORD_TYPE_ALERT)
            except (TlsRecordError, ValueError):  # the TX sequence ran out
                return None
            self.tx_control_records += 1
            self.tx_alerts += 1
            log.debug(
                "TLS %s: fatal alert %s", self.stream.sk.describe(), alert_name(alert[1])
            )
            wire = bytes(out)
        return wire

    def _write_owed_alert_nowait(self) -> None:
        """Write the owed fatal alert if no write is in progress and the socket
        takes it at once; if the socket takes none of it now it stays owed, a
        part written is the end of it (sending has ended)."""
        raw = self.stream._raw
        if raw is None or self.stream._write_lock.locked():
            return
        wire = self._take_owed_alert()
        if not wire:
            return
        try:
            raw.send(wire)
        except BlockingIOError:
            self._alert_wire = wire
        except OSError:
            return

    async def _send_owed_warnings(self) -> None:
        """Write the warning alerts the receive path owes the peer (TLS 1.2
        ``no_renegotiation``), waiting for a write in progress to finish; with
        sending ended they are dropped. A cancelled wait leaves them owed."""
        owed = self.rx.alerts_owed
        while owed:
            if self._tx_closed:
                owed.clear()
                return
            alert = bytes((_WARNING, owed[0]))
            try:
                await self._write_records([alert], False, TLS_RECORD_TYPE_ALERT)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                owed.clear()  # the transport failed: the reader will see it
                return
            owed.popleft()
            self.tx_alerts += 1
            log.debug(
                "TLS %s: warning alert %s", self.stream.sk.describe(), alert_name(alert[1])
            )

    # -- RX ---------------------------------------------------------------------------------

    async def rx_input(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the reader read from the socket (b"": only those :meth:`rx_fill`
        put in the opener's buffer): open the records, run the
        receive verdict on each data record if the socket's psock has one, and
        carry out its actions: passed plaintext waits here for
        :meth:`take_plain`, redirects go to their target (``tls_sw_recvmsg``
        → ``sk_psock_tls_strp_read``: in the kernel too the verdict runs in
        the reader's ``recvmsg``). With ``strparser`` and a stream parser
        attached, the plaintext is framed into messages first.

        An error (a bad record; a parser failure) is kept in
        :attr:`rx_error` for after the data before it; it is not raised. A
        fault in the peer's bytes is answered with its fatal alert, and
        sending ends (see the module). Session tickets go to ``ssl_object``;
        a refused renegotiation's warning alert is written before returning
        (waiting for a write in progress).
        """
        rx = self.rx
        if rx.error is not None:
            return  # receiving ended: the data before the error was queued then
        before = len(rx.controls)
        opened = rx.bytes
        try:
            units = rx.open_records(data)
        except TlsRxError as exc:
            units = exc.messages
            self._fatal_alert_nowait(exc)
        if rx.tickets:
            self._give_tickets()
        psock = self.stream.sk.psock
        if psock is None or psock.rx_mode is None:
            self._queue_plain(units, rx.bytes - opened)
        elif units:
            try:
                if self.strparser and psock.rx_mode == "strp":
                    # plaintext: a message's tail is in records, never in the socket
                    actions = psock.rx_feed(
                        units[0] if len(units) == 1 else b"".join(units), tails=False
                    )
                else:
                    actions = psock.rx_verdict(units)
            except sk.StrParserError as exc:
                actions = exc.actions
                if self._parse_error is None:
                    self._parse_error = exc
            for action in actions:
                if action.kind == "pass":
                    self._queue_plain(action.bufs, action.nbytes)
                elif action.kind == "redirect":
                    await self._redirect(action)
        if len(rx.controls) != before or rx.eof or self.rx_error is not None:
            self._control_lot.unpark_all()
        if rx.alerts_owed:
            await self._send_owed_warnings()

    def _give_tickets(self) -> None:
        """Hand the NewSessionTickets received to ``ssl_object`` (its session
        becomes resumable). One OpenSSL refuses fails receiving with
        ``decode_error``."""
        rx = self.rx
        feed = self._tickets
        while rx.tickets:
            msg = rx.tickets.popleft()
            if feed is None:
                continue
            try:
                feed.feed(msg)
            except ssl.SSLError as exc:
                if rx.error is None:
                    err = TlsRxError(
                        errno.EPROTO,
                        f"OpenSSL refused the server's NewSessionTicket: {exc}",
                        alert=ALERT_DECODE_ERROR,
                    )
                    err.__cause__ = exc
                    rx.error = err
                    self._fatal_alert_nowait(err)
                rx.tickets.clear()
                return
            self.tickets_received += 1

    def rx_fill(self, recv_into: Callable[[memoryview], int], max_bytes: int) -> int:
        """Read up to ``max_bytes`` from the socket with ``recv_into`` straight
        into the record opener's buffer (no copy on the way in); return how
        many came (0: EOF). :meth:`rx_input` then opens them. Once receiving
        has ended (close_notify, an error) what is read is let go.

        Raises:
            Exception: whatever ``recv_into`` raises; nothing is added then.
        """
        rx = self.rx
        if rx.error is not None or rx.eof:
            return recv_into(memoryview(bytearray(min(max_bytes, 1 << 16))))
        return rx.opener.fill(recv_into, max_bytes)

    def _queue_plain(self, units: list[memoryview], nbytes: int) -> None:
        """Queue passed plaintext, ``nbytes`` in all, for ``receive_some``.
        ``units`` carry no empty view (records and stream-parser messages are
        never empty)."""
        self._plain.extend(units)
        self.plain_bytes += nbytes

    async def _redirect(self, action: sk.RxAction) -> None:
        """A receive verdict's redirect, carried out as the runtime does (a
        failed target drops the bytes and is counted, never failing us)."""
        rt = self.stream._runtime
        if rt is not None:
            await rt.rx_action(self.stream, action)
            return
        target = action.target
        assert target is not None
        with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            if action.ingress:
                await ingress_put(target, action.bufs, action.nbytes)
            elif target.owner is not None and target.psock is not None:
                await target.owner.egress_write(action.bufs, False)

    @property
    def rx_error(self) -> BaseException | None:
        """Why receiving ended in error (a ``TlsRxError``, or the stream parser's
        ``StrParserError``), once it did."""
        return self.rx.error or self._parse_error

    def transport_eof(self) -> None:
        """The TCP stream ended. Before the peer's close_notify that is an error
        (``EPROTO``, answered with ``decode_error`` as OpenSSL does): a
        truncation, unless ``ignore_unexpected_eof`` (then it is the end of the
        data), and always inside a record."""
        rx = self.rx
        err = rx.ended(self.ignore_unexpected_eof)
        if err is not None:
            self._fatal_alert_nowait(err)
        self._tcp_eof = True
        self._control_lot.unpark_all()

    def take_plain(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the waiting plaintext, across records."""
        plain = self._plain
        if self.plain_bytes <= max_bytes:  # all of it: no loop over the units
            data = plain[0].tobytes() if len(plain) == 1 else b"".join(plain)
            plain.clear()
        else:
            data = sk.take_queued(plain, max_bytes)
        got = len(data)
        self.plain_bytes -= got
        if self.plain_bytes < PLAIN_LIMIT <= self.plain_bytes + got:
            self._control_lot.unpark_all()  # receive_control may read again
        return data

    def receive_control_nowait(self) -> ControlRecord:
        """The oldest control record received and not yet taken.

        Raises:
            trio.WouldBlock: none is waiting.
        """
        if self.rx.controls:
            return self.rx.controls.popleft()
        raise trio.WouldBlock

    async def receive_control(self) -> ControlRecord:
        """Wait for the next control record (alert, post-handshake handshake
        message, ...) in arrival order. When no other task is in
        ``receive_some`` this reads the socket itself (data records met
        meanwhile are verdicted and wait for ``receive_some``; with
        :data:`PLAIN_LIMIT` bytes waiting it stops reading until they are
        taken, as kTLS keeps control records behind unread data).

        Raises:
            trio.EndOfChannel: the peer's close_notify (or, with
                ``ignore_unexpected_eof``, a bare TCP EOF) came and every
                control record before it was taken.
            trio.BrokenResourceError: receiving failed (bad record, fatal alert,
                a TCP EOF without close_notify); ``__cause__`` carries the errno.
            trio.ClosedResourceError: the stream was closed.
        """
        stream = self.stream
        while True:
            if self.rx.controls:
                await trio.lowlevel.checkpoint()
                return self.rx.controls.popleft()
            if stream._closed:
                raise trio.ClosedResourceError("this stream was closed")
            err = self.rx_error
            if err is not None:
                await trio.lowlevel.checkpoint()
                raise trio.BrokenResourceError(f"TLS receive failed: {err}") from err
            if self.rx.eof or self._tcp_eof or stream._rx_eof:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel("the peer ended the TLS stream")
            if stream._receive_conflict._held or self.plain_bytes >= PLAIN_LIMIT:
                # a reader is at work (it will wake us), or data waits for one:
                # stop reading the socket (bounded memory, TCP flow control)
                await self._control_lot.park()
                continue
            with stream._receive_conflict:
                data = await stream.transport_recv(65536)
                if not data:
                    self.transport_eof()
                    stream._rx_eof = True
                else:
                    await self.rx_input(data)

    # -- lifecycle --------------------------------------------------------------------------

    def statistics(self) -> TlsStats:
        """A snapshot of this stream's TLS counters."""
        return TlsStats(
            self.version,
            self.cipher_type,
            self.tx_records,
            self.tx_bytes,
            self.tx_control_records,
            self.rx.records,
            self.rx.bytes,
            self.rx.control_records,
            self.rx.control_dropped,
            self.rx.decrypt_errors,
            self.tx_rekeys,
            self.rx.rekeys,
            self.rx.key_updates_received,
            self._open.size + len(self._plain_open),
            self.tx_alerts,
            self.tickets_received,
        )

    def release(self) -> None:
        """The stream closed: the TLS contexts go (``TlsCurr*Sw`` drop)."""
        if self.active:
            self.active = False
            _stats.count("TlsCurrTxSw", -1)
            _stats.count("TlsCurrRxSw", -1)
            self._control_lot.unpark_all()
            if self._open.msg is not None:
                self._open.msg.free()
                self._open.msg = None

    def __repr__(self) -> str:
        return f"<TlsUlp {self.info.version} {self.info.cipher} on {self.stream!r}>"
