"""Key hand-off: a real handshake in OpenSSL, then the record layer is ours.

What kTLS users do with ``setsockopt(TLS_TX/TLS_RX)`` after ``SSL_do_handshake``
(OpenSSL's ``ktls_configure_crypto``), with only the stdlib ``ssl`` module:

1. The handshake runs in an :class:`ssl.SSLObject` over two
   :class:`ssl.MemoryBIO`, with the caller's :class:`ssl.SSLContext`
   unchanged in every other respect (certificates, verification, ALPN, SNI
   and SNI callbacks). Every raw byte in both directions passes through here
   and is kept until the handshake ends.
2. The secrets come from OpenSSL's key log, the only stdlib path
   (``SSLContext.keylog_filename``). The context points at a file of this
   connection, in a private 0700 directory (on tmpfs ``/dev/shm`` when there
   is one), **only for the duration of each synchronous ``do_handshake()``
   call**: no ``await`` happens while it is set, so no other task's handshake
   on the same context can log into it, and the context is restored before
   the call returns. The file is read and deleted right after each call; the
   directory is removed when the hand-off ends, however it ends. A per-context
   ``threading.Lock`` serialises these short swaps between threads.
3. The lines of this connection are picked by the client random, taken from
   the ClientHello bytes. Lines of other connections (another thread
   handshaking on the same context during the call) and this connection's own
   lines are appended to the context's original key log file when it had one,
   so a configured ``keylog_filename`` (``SSLKEYLOGFILE``) keeps working.
4. Sequence numbers are counted on the bytes OpenSSL produced and consumed:
   the records that open under the application keys are the ones the new
   record layer must follow (TLS 1.3 session tickets OpenSSL sealed as a
   server; the TLS 1.2 Finished at seq 0). Everything OpenSSL wrote is sent
   before returning; bytes it did not read are handed over as ``unconsumed``.
5. What the client asked for and the server agreed to in their extensions is
   read from the same bytes: the ClientHello's ``server_name`` (SNI, RFC 6066
   §3) becomes ``info.server_name`` on both ends (what the client sent,
   whatever an SNI callback did with it); a ``max_fragment_length`` (RFC 6066
   §4) in the TLS 1.2 ServerHello, or in the TLS 1.3 EncryptedExtensions
   (opened with the server's handshake traffic secret from the key log),
   becomes ``record_size_limit``: OpenSSL enforces it on every record, so the
   record layer must too. The rest of :class:`~skmsg_tls.TlsInfo` (version,
   suite, ALPN, the peer's certificate) comes from the ``SSLObject``.
6. A TLS 1.3 client gets its session tickets after the handshake, as records
   the new record layer opens. :class:`SessionTicketFeed` gives each one to
   the ``SSLObject`` as OpenSSL would have read it (sealed again under the
   receive key and sequence number OpenSSL's read side is at), so
   ``ssl_object.session`` resumes a later connection (``session=``), as with
   ``trio.SSLStream``. A TLS 1.2 ticket comes inside the handshake itself.

Guarantees on concurrency: any number of hand-offs may run concurrently on
one context, in one trio run or in several threads; the context is modified
only inside a synchronous call and restored before it returns. Threads that
use the same context for ordinary ``ssl`` handshakes at the same moment may
see their key lines routed through our file (forwarded to the original key
log if there is one, dropped otherwise, as without a key log). Not
guaranteed: CPython does not guard a change of ``keylog_filename`` against a
handshake running in another thread on that context at the same instant (it
frees the old log while the other thread may write to it), so a context used
by tls_handoff should not at the same time serve plain ``ssl`` handshakes in
other threads. Tasks of one trio run (trio.SSLStream included) are safe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import ssl
import tempfile
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import attrs

from ._codec import (
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RECORD_TYPE_HANDSHAKE,
    RecordOpener,
    RecordSealer,
    TlsCryptoInfo,
    TlsRecordError,
)
from ._info import TlsInfo, host_name
from ._keys import cipher_for_suite, tls12_crypto_infos, tls13_crypto_info

__all__ = ["SessionTicketFeed", "TlsHandoff", "TlsHandoffError", "tls_handoff"]

_VERSIONS: Final = {"TLSv1.3": TLS_1_3_VERSION, "TLSv1.2": TLS_1_2_VERSION}
_REC_CCS: Final = 20
_REC_HANDSHAKE: Final = 22
_REC_DATA: Final = 23
_HS_CLIENT_HELLO: Final = 1
_HS_SERVER_HELLO: Final = 2
_HS_ENCRYPTED_EXTENSIONS: Final = 8
_EXT_SERVER_NAME: Final = 0
_EXT_MAX_FRAGMENT_LENGTH: Final = 1
_SNI_HOST_NAME: Final = 0
#: RFC 6066 §4: the max_fragment_length codes and the record sizes they stand for.
MAX_FRAGMENT_LENGTHS: Final = {1: 512, 2: 1024, 3: 2048, 4: 4096}


class TlsHandoffError(OSError):
    """The handshake succeeded but its keys cannot be handed to the record layer.

    ``errno`` is ``EPROTONOSUPPORT`` for a negotiated version, cipher suite or
    compression the record layer does not do (the message names it), and
    ``EPROTO`` when the key log or the handshake bytes do not add up (for
    example a TLS library that never calls the key log callback). Handshake
    failures themselves are the ``ssl`` errors, unchanged.
    """


@attrs.frozen
class TlsHandoff:
    """Everything the record layer needs after :func:`tls_handoff`.

    ``tx``/``rx`` are this side's send and receive crypto infos with exact
    sequence numbers; ``tx_secret``/``rx_secret`` the TLS 1.3 application
    traffic secrets (for KeyUpdate; None under TLS 1.2); ``unconsumed`` the raw
    bytes received that OpenSSL did not read: the first bytes of the new record
    layer's input. ``ssl_object`` answers ``getpeercert()``,
    ``selected_alpn_protocol()``, ``version()``, ``cipher()``, ``session``;
    it must not be used for I/O any more (its sequence numbers are stale).
    ``record_size_limit`` is the most plaintext per record the handshake
    agreed on, both ways (``max_fragment_length``; else 2^14).
    ``tickets`` (TLS 1.3 client side) gives the session tickets that arrive
    later to ``ssl_object``. ``info`` is what the handshake agreed on, by
    name (version, suite, server name, ALPN, the peer's certificate): what
    programs read as ``sk.tls`` once the record layer is installed.
    """

    version: int
    cipher_type: int
    tx: TlsCryptoInfo
    rx: TlsCryptoInfo
    tx_secret: bytes | None
    rx_secret: bytes | None
    unconsumed: bytes
    ssl_object: ssl.SSLObject = attrs.field(eq=False, repr=False)
    record_size_limit: int = TLS_MAX_PAYLOAD_SIZE
    tickets: SessionTicketFeed | None = attrs.field(default=None, eq=False, repr=False)
    info: TlsInfo | None = None


class SessionTicketFeed:
    """Gives TLS 1.3 NewSessionTicket messages received after the hand-off to
    the handshake's ``SSLObject``, so that its ``session`` carries the ticket.

    OpenSSL's read side stopped at the hand-off under the server's first
    application traffic key (``rx``, at the sequence number it had reached);
    each message is sealed again under that key, at the next sequence number
    of its own (OpenSSL's counter, not the record layer's, which may have
    moved on or changed keys since), written to the object's incoming BIO,
    and read: OpenSSL takes the ticket into a new session and has nothing more
    to read. Whatever it writes meanwhile is discarded (its sequence numbers
    are not the connection's).
    """

    def __init__(
        self,
        sslobj: ssl.SSLObject,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        rx: TlsCryptoInfo,
        record_size_limit: int = TLS_MAX_PAYLOAD_SIZE,
    ) -> None:
        self._sslobj = sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        self._sealer = RecordSealer(rx)
        self._sealer.record_size_limit = record_size_limit
        self._limit = record_size_limit
        #: Tickets OpenSSL took.
        self.fed = 0

    def feed(self, message: bytes) -> None:
        """Give one whole NewSessionTicket message (with its 4-byte header).

        Raises:
            ssl.SSLError: OpenSSL refused it (the message says why); the
                object's session is unchanged then.
        """
        out = bytearray()
        view = memoryview(message)
        for pos in range(0, len(message), self._limit):
            self._sealer.seal_into(out, view[pos : pos + self._limit], TLS_RECORD_TYPE_HANDSHAKE)
        self._incoming.write(out)
        try:
            data = self._sslobj.read(1)
        except ssl.SSLWantReadError:
            pass  # the ticket is taken and nothing more is there
        else:
            raise ssl.SSLError(
                f"OpenSSL returned {len(data)} bytes of data for a NewSessionTicket"
            )
        finally:
            self._outgoing.read()
        self.fed += 1


# --- the key log ------------------------------------------------------------

_CTX_LOCKS: weakref.WeakKeyDictionary[ssl.SSLContext, threading.Lock] = (
    weakref.WeakKeyDictionary()
)
_CTX_LOCKS_GUARD = threading.Lock()


def _ctx_lock(ctx: ssl.SSLContext) -> threading.Lock:
    with _CTX_LOCKS_GUARD:
        lock = _CTX_LOCKS.get(ctx)
        if lock is None:
            lock = _CTX_LOCKS[ctx] = threading.Lock()
        return lock


def _secret_dir() -> str | None:
    """tmpfs when there is one: the secrets never reach a disk."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


class _KeyLog:
    """This connection's key log: a private file the context logs into only
    while :meth:`capture` is active."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="skmsg-tls-", dir=_secret_dir())  # mode 0700
        self.path = os.path.join(self._dir, "keylog")
        self.lines: list[str] = []

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    @contextlib.contextmanager
    def capture(self, ctx: ssl.SSLContext, sslobj: ssl.SSLObject) -> Iterator[None]:
        """Point ``ctx``, the context ``sslobj`` is on now, and any context an
        SNI callback switches it to at our file for one synchronous step;
        restore, read and delete on exit."""
        swapped: list[tuple[ssl.SSLContext, Any]] = []
        originals: list[Any] = []
        with _ctx_lock(ctx):
            user_sni = ctx.sni_callback

            def swap(c: ssl.SSLContext) -> None:
                if any(c is s for s, _ in swapped):
                    return
                old = c.keylog_filename
                c.keylog_filename = self.path
                swapped.append((c, old))

            if user_sni is not None:

                def sni_shim(obj: Any, name: Any, c: ssl.SSLContext) -> Any:
                    result = user_sni(obj, name, c)
                    if obj.context is not c:  # the callback switched contexts
                        swap(obj.context)
                    return result

                ctx.sni_callback = sni_shim
            try:
                swap(ctx)
                swap(sslobj.context)
                yield
            finally:
                errors: list[BaseException] = []
                for c, old in reversed(swapped):
                    try:
                        c.keylog_filename = old
                    except OSError as exc:  # the original file cannot be reopened
                        errors.append(exc)
                    if old is not None:
                        originals.append(old)
                if user_sni is not None:
                    ctx.sni_callback = user_sni
                self._collect(originals)
                if errors:
                    raise errors[0]

    def _collect(self, originals: list[Any]) -> None:
        try:
            with open(self.path, encoding="ascii", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        new = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        self.lines.extend(new)
        for path in originals:  # what the user's key log would have received
            if new:
                with open(path, "a", encoding="ascii") as f:
                    f.write("".join(ln + "\n" for ln in new))

    def secrets(self, client_random: bytes) -> dict[str, bytes]:
        want = client_random.hex()
        found: dict[str, bytes] = {}
        for line in self.lines:
            parts = line.split()
            if len(parts) == 3 and parts[1].lower() == want:
                found[parts[0]] = bytes.fromhex(parts[2])
        return found


# --- reading the raw handshake bytes -----------------------------------------


def _records(data: bytes | bytearray) -> list[tuple[int, bytes]]:
    """Split a raw stream into (outer type, whole record); a partial tail is left out."""
    out = []
    pos = 0
    while len(data) - pos >= 5:
        end = pos + 5 + ((data[pos + 3] << 8) | data[pos + 4])
        if end > len(data):
            break
        out.append((data[pos], bytes(data[pos:end])))
        pos = end
    return out


def _hello_random(data: bytes | bytearray, msg_type: int, what: str) -> bytes:
    """The 32-byte random of the first handshake message (ClientHello 1,
    ServerHello 2) of a direction, reassembled from plaintext records."""
    hs = bytearray()
    for rtype, rec in _records(data):
        if rtype != _REC_HANDSHAKE:
            break
        hs += rec[5:]
        if len(hs) >= 38:
            break
    if len(hs) < 38 or hs[0] != msg_type:
        raise TlsHandoffError(errno.EPROTO, f"tls_handoff: no {what} found in the handshake bytes")
    return bytes(hs[6:38])


def _opens(info: TlsCryptoInfo, seq: int, record: bytes) -> bool:
    opener = RecordOpener(info.with_seq(seq))
    opener.feed(record)
    try:
        return opener.next_record() is not None
    except TlsRecordError:
        return False


def _count_tls13(records: list[tuple[int, bytes]], info: TlsCryptoInfo) -> int:
    """How many records at the end of a direction are sealed under the
    application key ``info`` (sequence 0, 1, ...); the ones before are under
    the handshake key."""
    seq = 0
    for rtype, rec in records:
        if rtype != _REC_DATA:
            continue
        if _opens(info, seq, rec):
            seq += 1
        elif seq:
            raise TlsHandoffError(
                errno.EPROTO,
                f"tls_handoff: a record after application record {seq - 1} does not open "
                "under the application key",
            )
    return seq


def _count_tls12(records: list[tuple[int, bytes]], info: TlsCryptoInfo, what: str) -> int:
    """How many records follow the ChangeCipherSpec (the Finished and anything
    after), each checked to open under the derived key."""
    kinds = [rtype for rtype, _ in records]
    if _REC_CCS not in kinds:
        raise TlsHandoffError(errno.EPROTO, f"tls_handoff: no ChangeCipherSpec from the {what}")
    after = [rec for _, rec in records[kinds.index(_REC_CCS) + 1 :]]
    for seq, rec in enumerate(after):
        if not _opens(info, seq, rec):
            raise TlsHandoffError(
                errno.EPROTO,
                f"tls_handoff: the derived {what} key does not open record {seq} "
                "(key log and handshake bytes disagree)",
            )
    return len(after)


def _messages(data: bytes | bytearray) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each whole handshake message in ``data``."""
    pos = 0
    while len(data) - pos >= 4:
        end = pos + 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
        if end > len(data):
            return
        yield data[pos], bytes(data[pos + 4 : end])
        pos = end


def _extensions(block: bytes, what: str) -> dict[int, bytes]:
    """Parse an ``Extension extensions<..>`` vector (its 2-byte length first).

    Raises:
        TlsHandoffError: ``EPROTO``, the vector does not parse.
    """
    bad = TlsHandoffError(errno.EPROTO, f"tls_handoff: the {what} extensions do not parse")
    if len(block) < 2 or 2 + int.from_bytes(block[:2], "big") != len(block):
        raise bad
    out: dict[int, bytes] = {}
    pos = 2
    while pos < len(block):
        if len(block) - pos < 4:
            raise bad
        ext = int.from_bytes(block[pos : pos + 2], "big")
        end = pos + 4 + int.from_bytes(block[pos + 2 : pos + 4], "big")
        if end > len(block):
            raise bad
        out[ext] = block[pos + 4 : end]
        pos = end
    return out


def _server_hello_extensions(records: list[tuple[int, bytes]]) -> dict[int, bytes]:
    """The extensions of a TLS 1.2 ServerHello (plaintext handshake records)."""
    hs = bytearray()
    for rtype, rec in records:
        if rtype != _REC_HANDSHAKE:
            break
        hs += rec[5:]
    for mtype, body in _messages(hs):
        if mtype != _HS_SERVER_HELLO:
            break
        # version(2) random(32) session_id<0..32> cipher_suite(2) compression(1)
        pos = 34
        if len(body) <= pos:
            break
        pos += 1 + body[pos] + 2 + 1
        if pos == len(body):
            return {}  # no extensions at all
        return _extensions(body[pos:], "ServerHello")
    raise TlsHandoffError(errno.EPROTO, "tls_handoff: no ServerHello found in the handshake bytes")


def _client_hello_server_name(records: list[tuple[int, bytes]]) -> str | None:
    """The host name in the (first) ClientHello's ``server_name`` extension
    (RFC 6066 §3), ``None`` when it has none.

    Raises:
        TlsHandoffError: ``EPROTO``, no ClientHello, or it does not parse.
    """
    hs = bytearray()
    for rtype, rec in records:
        if rtype != _REC_HANDSHAKE:
            break
        hs += rec[5:]
    bad = TlsHandoffError(errno.EPROTO, "tls_handoff: the ClientHello does not parse")
    for mtype, body in _messages(hs):
        if mtype != _HS_CLIENT_HELLO:
            break
        # legacy_version(2) random(32) session_id<0..32> cipher_suites<2..>
        # legacy_compression_methods<1..> extensions<8..>
        pos = 34
        if len(body) < pos + 1:
            raise bad
        pos += 1 + body[pos]
        if len(body) < pos + 2:
            raise bad
        pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
        if len(body) < pos + 1:
            raise bad
        pos += 1 + body[pos]
        if pos > len(body):
            raise bad
        if pos == len(body):
            return None  # no extensions at all
        sni = _extensions(body[pos:], "ClientHello").get(_EXT_SERVER_NAME)
        if sni is None:
            return None
        # ServerNameList server_name_list<1..2^16-1>: NameType(1) HostName<1..2^16-1>
        bad_sni = TlsHandoffError(
            errno.EPROTO, "tls_handoff: the ClientHello's server_name does not parse"
        )
        if len(sni) < 2 or 2 + int.from_bytes(sni[:2], "big") != len(sni):
            raise bad_sni
        pos = 2
        while pos < len(sni):
            if len(sni) - pos < 3:
                raise bad_sni
            end = pos + 3 + int.from_bytes(sni[pos + 1 : pos + 3], "big")
            if end > len(sni):
                raise bad_sni
            if sni[pos] == _SNI_HOST_NAME:
                return host_name(sni[pos + 3 : end])
            pos = end
        return None  # no host_name entry
    raise TlsHandoffError(errno.EPROTO, "tls_handoff: no ClientHello found in the handshake bytes")


def _encrypted_extensions(
    records: list[tuple[int, bytes]], hs_info: TlsCryptoInfo
) -> dict[int, bytes]:
    """The extensions of the TLS 1.3 EncryptedExtensions: the first message of
    the server's encrypted flight, opened with its handshake traffic key."""
    opener = RecordOpener(hs_info.with_seq(0))
    hs = bytearray()
    try:
        for rtype, rec in records:
            if rtype != _REC_DATA:
                continue
            opener.feed(rec)
            got = opener.next_record()
            if got is None or got[0] != _REC_HANDSHAKE:
                break
            hs += got[1]
            for mtype, body in _messages(hs):
                if mtype == _HS_ENCRYPTED_EXTENSIONS:
                    return _extensions(body, "EncryptedExtensions")
                break
    except TlsRecordError:
        pass
    raise TlsHandoffError(
        errno.EPROTO, "tls_handoff: no EncryptedExtensions found in the server's handshake"
    )


def _record_size_limit(extensions: dict[int, bytes]) -> int:
    """The record size the server's ``max_fragment_length`` agreed to, else 2^14.

    Raises:
        TlsHandoffError: ``EPROTO``, the extension's value is not one of RFC 6066's.
    """
    value = extensions.get(_EXT_MAX_FRAGMENT_LENGTH)
    if value is None:
        return TLS_MAX_PAYLOAD_SIZE
    if len(value) != 1 or value[0] not in MAX_FRAGMENT_LENGTHS:
        raise TlsHandoffError(
            errno.EPROTO,
            f"tls_handoff: the server's max_fragment_length {value.hex()} is not one of "
            "RFC 6066's (01..04)",
        )
    return MAX_FRAGMENT_LENGTHS[value[0]]


# --- the hand-off -------------------------------------------------------------


async def tls_handoff(
    send_all: Callable[[bytes], Awaitable[None]],
    receive_some: Callable[[], Awaitable[bytes]],
    ctx: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    session: ssl.SSLSession | None = None,
) -> TlsHandoff:
    """Run a TLS handshake with ``ctx`` over raw byte I/O and return the keys.

    ``send_all(data)`` sends raw bytes to the peer; ``receive_some()`` returns
    the next raw bytes from the peer (``b""`` at EOF). On return every byte
    OpenSSL wrote (including TLS 1.3 session tickets it sealed) has been sent,
    and the caller's record layer takes over with ``tx``/``rx`` and
    ``unconsumed``. ``session`` (client side) is a session of an earlier
    connection to resume, as ``SSLContext.wrap_bio`` takes it.

    Raises:
        ssl.SSLError: the handshake failed (``SSLCertVerificationError``,
            ``SSLEOFError`` when the peer closed, ...): the error OpenSSL
            raised, unchanged, after its alert (if any) was sent best-effort.
        TlsHandoffError: ``EPROTONOSUPPORT``, the negotiated version, suite or
            compression is not supported by the record layer (the message
            names it; a close_notify is sent best-effort); ``EPROTO``, the
            secrets are missing from the key log or do not match the bytes,
            the ClientHello's or the server's extensions do not parse, or
            the peer's certificate does not.
        ValueError, TypeError: ``session`` is not a session of ``ctx`` or is
            given to a server (``SSLContext.wrap_bio``'s errors).
        Exception: whatever ``send_all``/``receive_some`` raise.

    Cancellation: the hand-off is abandoned; the context is already restored
    (it is modified only inside synchronous calls) and the key log removed; the
    connection is in an unknown state and should be closed.
    """
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    sslobj = ctx.wrap_bio(
        incoming,
        outgoing,
        server_side=server_side,
        server_hostname=server_hostname,
        session=session,
    )
    sent = bytearray()
    received = bytearray()
    keylog = _KeyLog()
    try:
        while True:
            try:
                with keylog.capture(ctx, sslobj):
                    sslobj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                # let the peer see OpenSSL's alert, then raise the error as is
                alert = outgoing.read()
                if alert:
                    with contextlib.suppress(Exception):
                        await send_all(alert)
                raise
            else:
                break
            out = outgoing.read()
            if out:
                sent += out
                await send_all(out)
            data = await receive_some()
            if data:
                received += data
                incoming.write(data)
            else:
                incoming.write_eof()
        out = outgoing.read()
        if out:
            sent += out
            await send_all(out)
        unconsumed = incoming.read()
        consumed = received[: len(received) - len(unconsumed)] if unconsumed else received
        try:
            hand = _derive(
                sslobj,
                keylog=keylog,
                sent=bytes(sent),
                consumed=bytes(consumed),
                unconsumed=unconsumed,
                server_side=server_side,
            )
            if hand.version == TLS_1_3_VERSION and not server_side:
                feed = SessionTicketFeed(
                    sslobj, incoming, outgoing, hand.rx, hand.record_size_limit
                )
                hand = attrs.evolve(hand, tickets=feed)
            return hand
        except TlsHandoffError:
            with contextlib.suppress(ssl.SSLError):
                sslobj.unwrap()
            bye = outgoing.read()
            if bye:
                with contextlib.suppress(Exception):
                    await send_all(bye)
            raise
    finally:
        keylog.close()


def _derive(
    sslobj: ssl.SSLObject,
    *,
    keylog: _KeyLog,
    sent: bytes,
    consumed: bytes,
    unconsumed: bytes,
    server_side: bool,
) -> TlsHandoff:
    version_name = sslobj.version()
    suite_info = sslobj.cipher()
    suite = suite_info[0] if suite_info else "?"
    version = _VERSIONS.get(version_name or "")
    if version is None:
        raise TlsHandoffError(
            errno.EPROTONOSUPPORT,
            f"tls_handoff: {version_name} ({suite}) negotiated; the record layer does "
            "TLS 1.2 and TLS 1.3 only",
        )
    if sslobj.compression() is not None:
        raise TlsHandoffError(
            errno.EPROTONOSUPPORT,
            f"tls_handoff: compression {sslobj.compression()} negotiated; kTLS refuses it too",
        )
    try:
        cipher_type = cipher_for_suite(suite, version)
    except ValueError as exc:
        raise TlsHandoffError(
            errno.EPROTONOSUPPORT, f"tls_handoff: {version_name} {exc}"
        ) from None
    if sslobj.pending():
        raise TlsHandoffError(
            errno.EPROTO, "tls_handoff: OpenSSL holds decrypted data after the handshake"
        )

    client_stream, server_stream = (consumed, sent) if server_side else (sent, consumed)
    client_random = _hello_random(client_stream, 1, "ClientHello")
    secrets = keylog.secrets(client_random)

    def need(label: str) -> bytes:
        try:
            return secrets[label]
        except KeyError:
            raise TlsHandoffError(
                errno.EPROTO,
                f"tls_handoff: the key log has no {label} for client_random "
                f"{client_random.hex()} (is this Python's ssl built on OpenSSL >= 1.1.1? "
                "LibreSSL never calls the key log callback)",
            ) from None

    client_records = _records(client_stream)
    server_records = _records(server_stream)
    if version == TLS_1_3_VERSION:
        c_secret = need("CLIENT_TRAFFIC_SECRET_0")
        s_secret = need("SERVER_TRAFFIC_SECRET_0")
        c_info = tls13_crypto_info(c_secret, cipher_type)
        s_info = tls13_crypto_info(s_secret, cipher_type)
        # each side's handshake key must open its own encrypted flight: proves
        # the key-log lines are this connection's
        for label, records in (
            ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", client_records),
            ("SERVER_HANDSHAKE_TRAFFIC_SECRET", server_records),
        ):
            hs_info = tls13_crypto_info(need(label), cipher_type)
            first = next((rec for t, rec in records if t == _REC_DATA), None)
            if first is None or not _opens(hs_info, 0, first):
                raise TlsHandoffError(
                    errno.EPROTO,
                    f"tls_handoff: {label} does not open the first encrypted handshake "
                    "record (key log and handshake bytes disagree)",
                )
        # the loop's last key is the server's handshake key
        limit = _record_size_limit(_encrypted_extensions(server_records, hs_info))
        c_info = c_info.with_seq(_count_tls13(client_records, c_info))
        s_info = s_info.with_seq(_count_tls13(server_records, s_info))
        tx_secret: bytes | None = s_secret if server_side else c_secret
        rx_secret: bytes | None = c_secret if server_side else s_secret
    else:
        master = need("CLIENT_RANDOM")
        server_random = _hello_random(server_stream, 2, "ServerHello")
        limit = _record_size_limit(_server_hello_extensions(server_records))
        c_info, s_info = tls12_crypto_infos(
            master, client_random, server_random, cipher_type, client_seq=0, server_seq=0
        )
        # again with the real sequence numbers (the explicit nonce follows them)
        c_info, s_info = tls12_crypto_infos(
            master,
            client_random,
            server_random,
            cipher_type,
            client_seq=_count_tls12(client_records, c_info, "client"),
            server_seq=_count_tls12(server_records, s_info, "server"),
        )
        tx_secret = rx_secret = None
    tx, rx = (s_info, c_info) if server_side else (c_info, s_info)
    try:
        info = TlsInfo.from_handshake(
            sslobj,
            version=version,
            cipher_type=cipher_type,
            server_side=server_side,
            server_name=_client_hello_server_name(client_records),
        )
    except ValueError as exc:
        raise TlsHandoffError(errno.EPROTO, f"tls_handoff: {exc}") from exc
    return TlsHandoff(
        version=version,
        cipher_type=cipher_type,
        tx=tx,
        rx=rx,
        tx_secret=tx_secret,
        rx_secret=rx_secret,
        unconsumed=unconsumed,
        ssl_object=sslobj,
        record_size_limit=limit,
        info=info,
    )

