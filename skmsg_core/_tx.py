"""The TX verdict engine: ``tcp_bpf_sendmsg`` and ``tcp_bpf_send_verdict``, sans-I/O.

Theory of operation
-------------------
One send is one :class:`SendOp`. It copies the caller's bytes into a message
(or appends them to the corked one), runs the SK_MSG program when a verdict is
due, and *yields* :class:`TxAction` values: pass these bytes on, or redirect
them to another socket's egress or ingress. The I/O layer carries out each
action before asking for the next, so, as in the kernel, the verdict for the
next chunk is computed only after the previous one was handed on. If an
action fails, the I/O layer says so with :meth:`SendOp.fail` and the send ends
with that error.

Rules, in the kernel's words:

- ``cork_bytes``: a run that sets cork above the message's size holds the
  message (``psock->cork``); later sends append to it and count the *whole
  send's* size against the cork, and the program runs again on the whole
  accumulated message once the cork is met or the ring is full.
- ``apply_bytes``: the verdict covers that many bytes; the rest of the
  message gets a new run, and if the message ends first, the verdict (and its
  redirect target) carries on into later sends without running the program.
- DROP ends the send with ``EACCES``; the message is freed (the whole of it,
  as the newest kernel does) and ``copied`` is reduced by the dropped window
  and by what the program removed in that run, so a send never reports bytes
  that were dropped as sent.

Cancellation: a verdict covers exactly the bytes it ran on and the apply
window it set. The engine's state moves on *before* an action is handed out
(the verdict is spent on those bytes, the window reduced by them), so an I/O
layer that abandons the send at any action, a trio cancellation, leaves no
verdict pending that a later send could use without running the program.

Deliberate difference: the kernel frees whatever follows the apply window of
a corked message it redirects (and swallows that redirect's error); we keep
those bytes and verdict them like any other, and report the error.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING

import attrs

from ._errors import SendError, errno_name
from ._progs import Verdict
from ._ring import FileSpan, SkMsg

if TYPE_CHECKING:
    from ._psock import SkPsock
    from ._sock import Sock

__all__ = ["FILE_MSG_BYTES", "FileSendOp", "SendOp", "SendOpBase", "SendResult", "TxAction"]

TX_PASS = "pass"
TX_REDIRECT = "redirect"

# Enum members as plain globals: attribute lookups on an Enum class are slow.
_NONE, _PASS, _DROP, _REDIRECT = Verdict.NONE, Verdict.PASS, Verdict.DROP, Verdict.REDIRECT


@attrs.define(slots=True)
class TxAction:
    """Bytes a send hands on: ``kind`` is ``"pass"`` (to this socket's ULP and
    transport) or ``"redirect"`` (to ``target``'s egress, or its ingress queue
    when ``ingress``). ``bufs`` are views on the message's private copy, valid
    until the action is done with, and, for a send of a file
    (:class:`FileSendOp`), :class:`FileSpan` values: bytes the I/O layer sends
    from the file itself (``sendfile(2)``), or reads (``FileSpan.view``) where
    it needs memory; ``more`` says more bytes of this send follow (a
    ``MSG_MORE`` hint)."""

    kind: str
    target: Sock | None
    ingress: bool
    bufs: Sequence[memoryview | FileSpan]
    nbytes: int
    more: bool


@attrs.frozen
class SendResult:
    """How a send ended.

    ``copied`` is what the kernel's ``sendmsg`` counts (its return value when
    positive), ``err`` the errno that ended it (0 for none), ``passed`` the
    bytes actually handed on (passed or redirected), ``corked`` whether bytes
    are being held by a cork.
    """

    copied: int
    err: int
    passed: int
    corked: bool

    @property
    def retval(self) -> int:
        """The kernel's return value: ``copied`` if positive, else ``-err``."""
        return self.copied if self.copied > 0 else -self.err

    def error(self, where: str, nbytes: int, *, accepted_before: int = 0) -> SendError:
        """The :class:`SendError` a send of ``nbytes`` that ended with ``err``
        raises: ``where`` names the call and the socket, the message says why
        (a DROP, a failed redirect, another errno) and how much had been
        accepted (``accepted_before``: bytes of the call that left before this
        engine ran). Only for a result with ``err`` set."""
        err = self.err
        if err == errno.EACCES:
            why = "the SK_MSG program dropped the data"
        elif err == errno.EPIPE:
            why = f"redirect failed ({errno_name(err)})"
        else:
            why = f"the send failed ({errno_name(err)})"
        accepted = accepted_before + self.passed
        return SendError.of(
            err,
            f"{where}: {why}; {accepted} of {nbytes} bytes had been accepted",
            sent=max(self.copied, 0),
            accepted=accepted,
        )


def _apply(psock: SkPsock, nbytes: int) -> None:
    """``sk_msg_apply_bytes``: count ``nbytes`` against the apply window."""
    if psock.apply_bytes:
        psock.apply_bytes = 0 if psock.apply_bytes < nbytes else psock.apply_bytes - nbytes


class SendOpBase:
    """What every send engine shares: one ``sendmsg`` as an iterator of
    :class:`TxAction` values, failures reported back, and a result.

    ::

        for action in op:
            try:
                carry_out(action)
            except OSError as exc:
                op.fail(exc.errno)
        result = op.result()

    A subclass sets ``psock`` and ``_more`` (and holds the send's bytes), and
    implements ``_sendmsg`` (the generator of actions that reads ``_failure``
    after each one) and ``_corked`` (whether bytes wait after the send).
    """

    psock: SkPsock
    _more: bool

    def __init__(self) -> None:
        self._pos = 0
        self.copied = 0
        self.passed = 0
        self.err = 0
        self._failure: tuple[int, int] | None = None
        self._gen: Generator[TxAction, None, None] | None = None  # made on first use
        self._done = False

    def __iter__(self) -> Iterator[TxAction]:
        return self

    def __next__(self) -> TxAction:
        gen = self._gen
        if gen is None:
            if self._done:  # finished without iterating (a subclass's fast path)
                raise StopIteration
            gen = self._gen = self._sendmsg()
        try:
            return next(gen)
        except StopIteration:
            self._done = True
            raise

    def fail(self, err: int, delivered: int = 0) -> None:
        """Report that the last action failed with errno ``err`` after ``delivered``
        of its bytes went out; the send ends with ``err``."""
        self._failure = (err or errno.EIO, delivered)

    def result(self) -> SendResult:
        """How the send ended.

        Raises:
            RuntimeError: the actions have not all been taken yet.
        """
        if not self._done:
            raise RuntimeError(
                f"{type(self).__name__}.result() before its actions were all taken"
            )
        return SendResult(self.copied, self.err, self.passed, self._corked())

    def run(self, deliver: Callable[[TxAction], object] | None = None) -> SendResult:
        """Take every action synchronously, handing each to ``deliver`` (an
        ``OSError`` it raises fails the send); return the result."""
        for action in self:
            if deliver is not None:
                try:
                    deliver(action)
                except OSError as exc:
                    self.fail(exc.errno or errno.EIO, getattr(exc, "delivered", 0))
        return self.result()

    def _sendmsg(self) -> Generator[TxAction, None, None]:
        raise NotImplementedError

    def _corked(self) -> bool:
        raise NotImplementedError


class SendOp(SendOpBase):
    """One ``sendmsg`` on a socket with a psock (``tcp_bpf_sendmsg``): iterate it
    for its actions, as :class:`SendOpBase` shows.

    ::

        op = SendOp(psock, data)
        result = op.run(carry_out)
    """

    def __init__(
        self,
        psock: SkPsock,
        data: bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview],
        *,
        more: bool = False,
    ) -> None:
        """``data``: the send's bytes, or an iovec (a sequence of buffers, one
        send, one message: copied into the message buffer by buffer, never
        joined first).

        Raises:
            TypeError: ``data`` (or a buffer of it) is not bytes-like.
        """
        self.psock = psock
        if isinstance(data, (bytes, bytearray, memoryview)):
            bufs = [data if type(data) is memoryview else memoryview(data)]
        else:
            bufs = [b if type(b) is memoryview else memoryview(b) for b in data]
        bufs = [b if b.format == "B" and b.ndim == 1 else b.cast("B") for b in bufs]
        #: What is left to copy into the message, from the send's position on.
        self._rest = [b for b in bufs if b.nbytes]
        self._size = sum(b.nbytes for b in self._rest)
        self._more = more
        super().__init__()

    def _corked(self) -> bool:
        return self.psock.cork is not None and self.psock.cork.size > 0

    def _fill(self, msg: SkMsg) -> int:
        """Copy what the message takes of the rest of the send into it
        (``sk_msg_memcopy_from_iter``); return how many bytes."""
        taken = msg.append_copy(self.psock.frag, self._rest)
        self._take(taken)
        return taken

    def _take(self, n: int) -> None:
        """``n`` more bytes of the send were copied into the message."""
        self._pos += n
        rest = self._rest
        while n:
            b = rest[0]
            if b.nbytes <= n:
                n -= b.nbytes
                del rest[0]
            else:
                rest[0] = b[n:]
                n = 0

    # -- tcp_bpf_sendmsg -----------------------------------------------------------------

    def _sendmsg(self) -> Generator[TxAction, None, None]:
        psock = self.psock
        size = self._size
        while self._pos < size:
            if not psock.tx_enabled:
                self.err = errno.EPIPE
                return
            msg = psock.cork if psock.cork is not None else psock.new_msg()
            taken = self._fill(msg)
            enospc = self._pos < size
            self.copied += taken
            if psock.cork_bytes:
                psock.cork_bytes = 0 if size > psock.cork_bytes else psock.cork_bytes - size
                if psock.cork_bytes and not enospc:
                    return  # held by the cork
                psock.eval = _NONE
                psock.cork_bytes = 0
            err = yield from self._send_verdict(msg)
            if err:
                self.err = err
                return

    # -- tcp_bpf_send_verdict -------------------------------------------------------------

    def _send_verdict(self, msg: SkMsg) -> Generator[TxAction, None, int]:
        psock = self.psock
        enospc = msg.full
        delta = 0
        while True:
            if psock.eval is _NONE:
                delta = msg.size
                psock.eval = psock.msg_verdict(msg)
                psock.tx_msgs += 1
                delta -= msg.size
                if psock.eval is _REDIRECT and psock.sk_redir is None:
                    psock.eval = _DROP
            if msg.cork_bytes and msg.cork_bytes > msg.size and not enospc:
                psock.cork_bytes = msg.cork_bytes - msg.size
                psock.cork = msg
                return 0
            tosend = msg.size
            if psock.apply_bytes and psock.apply_bytes < tosend:
                tosend = psock.apply_bytes
            verdict = psock.eval
            if verdict is _PASS or verdict is _REDIRECT:
                target: Sock | None = None
                ingress = False
                if verdict is _REDIRECT:
                    target, ingress = psock.sk_redir, psock.redir_ingress
                _apply(psock, tosend)
                # The verdict covers these bytes (and what is left of the apply
                # window): it ends here, before the bytes are handed on, so a
                # send cancelled while they go out leaves no verdict behind.
                if not psock.apply_bytes:
                    psock.eval, psock.sk_redir = _NONE, None
                    msg.spend_redirect()
                if verdict is _REDIRECT and psock.cork is msg:
                    psock.cork = None
                bufs = msg.consume_spans(tosend)
                more = self._more or msg.size > 0 or self._pos < self._size
                yield TxAction(
                    TX_REDIRECT if target is not None else TX_PASS,
                    target,
                    ingress,
                    bufs,
                    tosend,
                    more,
                )
                if self._failure is not None:
                    err, delivered = self._failure
                    self._failure = None
                    self.passed += delivered
                    self.copied -= (tosend - delivered) + msg.free()
                    return err
                self.passed += tosend
                if target is None:
                    psock.tx_passed_bytes += tosend
                else:
                    psock.tx_redirected_bytes += tosend
            else:
                dropped = msg.free()
                psock.tx_dropped_bytes += dropped
                _apply(psock, tosend)
                self.copied -= tosend + delta
                return errno.EACCES
            if not msg.size:
                return 0


#: A send of a file is one message per this many bytes (one verdict each;
#: the kernel's sendpage gives one per page or splice batch).
FILE_MSG_BYTES = 1 << 20


class FileSendOp(SendOp):
    """``tcp_bpf_sendpage``: a send of ``count`` bytes of file ``fd`` from
    ``position``, as messages of file elements (at most
    :data:`FILE_MSG_BYTES` each, one verdict each) whose bytes are never
    read unless the program pulls them: its data window is empty until
    ``msg_pull_data``; what it does not pull goes on as :class:`FileSpan`
    values, for ``sendfile(2)``. Everything else (cork, apply windows,
    redirects, DROP) is :class:`SendOp`'s.
    """

    def __init__(
        self, psock: SkPsock, fd: int, position: int, count: int, *, more: bool = False
    ) -> None:
        super().__init__(psock, b"", more=more)
        self._fd = fd
        self._position = position
        self._size = count

    def _fill(self, msg: SkMsg) -> int:
        want = min(self._size - self._pos, FILE_MSG_BYTES)
        taken = msg.append_file(self._fd, self._position + self._pos, want)
        self._pos += taken
        return taken
