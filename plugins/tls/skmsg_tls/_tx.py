"""The TLS TX verdict engine: ``tls_sw_sendmsg`` and ``bpf_exec_tx_verdict``, sans-I/O.

Theory of operation
-------------------
On a TLS socket the SK_MSG verdict unit is the *record*, not the send.
Plaintext goes into the open record (``ctx->open_rec``, an
:class:`skmsg_core.SkMsg` on the psock's page frag); the program runs when the
record closes: when it holds ``TLS_MAX_PAYLOAD_SIZE`` (16384) bytes, when its
ring is full, or at the end of a send without ``more`` (``MSG_MORE``). So
sends with ``more=True`` accumulate into one verdict unit, unlike plain TCP.

One send is one :class:`TlsSendOp`, iterated for :class:`skmsg_core.TxAction`
values as the core's :class:`skmsg_core.SendOp` is: ``"pass"`` actions carry
the plaintext of exactly one record to seal (the I/O layer seals and writes
it), ``"redirect"`` actions plaintext for another socket. The core's message
ring, page frag, program runner and action/result types are reused; what
differs from ``tcp_bpf_send_verdict`` is the kernel's own TLS rules:

- ``cork_bytes``: a run that corks above the record's size leaves the record
  open (the send succeeds, ``-ENOSPC`` inside the kernel) unless the record is
  full; the program runs again on the whole record when it closes next
  (*deliberate difference*: the kernel keeps the corking run's verdict; we
  re-run, as ``tcp_bpf`` does, so a cork that waits for a whole pattern gets to
  see it);
- ``apply_bytes`` splits the record: on PASS the first ``apply_bytes`` bytes
  are sealed as a record of their own and the rest stays open and is verdicted
  again at once (``tls_push_record``'s split; the window does not carry over
  to later records, because it belongs to the record, ``msg->apply_bytes``);
  on REDIRECT that many bytes go to the target, the rest likewise;
- DROP frees the open record and the send fails with ``EACCES``; as in the
  kernel (and the core's TCP engine) the DROP verdict sticks;
- a REDIRECT whose target fails discards the rest of the record
  (``msg->sg.size = 0``) and ends the send with the error.
"""

from __future__ import annotations

import errno
from collections.abc import Generator, Iterator

from skmsg_core import TLS_MAX_PAYLOAD_SIZE, SendResult, SkMsg, SkPsock, Sock, TxAction, Verdict

__all__ = ["OpenRecord", "TlsSendOp"]

_NONE, _PASS, _DROP, _REDIRECT = Verdict.NONE, Verdict.PASS, Verdict.DROP, Verdict.REDIRECT


class OpenRecord:
    """The TLS context's open record (``ctx->open_rec``), kept across sends."""

    __slots__ = ("msg",)

    def __init__(self) -> None:
        self.msg: SkMsg | None = None

    @property
    def size(self) -> int:
        """Plaintext bytes waiting in the open record."""
        return self.msg.size if self.msg is not None else 0


class TlsSendOp:
    """One ``sendmsg`` on a TLS socket with an SK_MSG program: iterate it for actions.

    ::

        op = TlsSendOp(psock, open_rec, data, more=False)
        for action in op:           # "pass": seal action.bufs as ONE record
            try:
                carry_out(action)
            except OSError as exc:
                op.fail(exc.errno)
        result = op.result()

    ``flush=True`` with empty ``data`` closes a record left open by an earlier
    ``more=True`` send (the end of a ``send_all`` without ``more``).
    """

    def __init__(
        self,
        psock: SkPsock,
        open_rec: OpenRecord,
        data: memoryview,
        *,
        more: bool = False,
        record_size: int = TLS_MAX_PAYLOAD_SIZE,
    ) -> None:
        self.psock = psock
        self.open_rec = open_rec
        self._src = data
        self._more = more
        self._record_size = record_size
        self._pos = 0
        self.copied = 0
        self.passed = 0
        self.err = 0
        self._failure: tuple[int, int] | None = None
        self._gen = self._sendmsg()
        self._done = False

    def __iter__(self) -> Iterator[TxAction]:
        return self

    def __next__(self) -> TxAction:
        try:
            return next(self._gen)
        except StopIteration:
            self._done = True
            raise

    def fail(self, err: int, delivered: int = 0) -> None:
        """The last action failed with errno ``err`` after ``delivered`` bytes;
        the send ends with ``err``."""
        self._failure = (err or errno.EIO, delivered)

    def result(self) -> SendResult:
        """How the send ended (``corked``: bytes wait in the open record).

        Raises:
            RuntimeError: the actions have not all been taken yet.
        """
        if not self._done:
            raise RuntimeError("TlsSendOp.result() before its actions were all taken")
        return SendResult(self.copied, self.err, self.passed, self.open_rec.size > 0)

    # -- tls_sw_sendmsg_locked --------------------------------------------------------------

    def _sendmsg(self) -> Generator[TxAction, None, None]:
        psock = self.psock
        src = self._src
        size = src.nbytes
        eor = not self._more
        limit = self._record_size
        holder = self.open_rec
        while True:
            if not psock.tx_enabled:
                self.err = errno.EPIPE
                return
            rec = holder.msg
            full_record = False
            if self._pos < size:
                if rec is None:
                    rec = holder.msg = psock.new_msg()
                room = limit - rec.size
                want = min(size - self._pos, room)
                taken = rec.append_copy(psock.frag, (src[self._pos : self._pos + want],))
                self._pos += taken
                self.copied += taken
                full_record = rec.size >= limit or rec.full
            elif rec is None or not rec.size:
                return
            if full_record or (eor and self._pos >= size):
                err = yield from self._exec_verdict(rec, full_record)
                if err:
                    self.err = err
                    return
            if self._pos >= size:
                return

    # -- bpf_exec_tx_verdict --------------------------------------------------------------

    def _exec_verdict(self, msg: SkMsg, full_record: bool) -> Generator[TxAction, None, int]:
        psock = self.psock
        holder = self.open_rec
        delta = 0
        while True:
            enospc = msg.full
            if psock.eval is _NONE:
                delta = msg.size
                psock.eval = psock.msg_verdict(msg)
                psock.tx_msgs += 1
                delta -= msg.size
                if psock.eval is _REDIRECT and psock.sk_redir is None:
                    psock.eval = _DROP
            if msg.cork_bytes and msg.cork_bytes > msg.size and not enospc and not full_record:
                psock.eval = _NONE  # deliberate: re-run on the whole record (module doc)
                return 0
            msg.cork_bytes = 0
            send = msg.size
            if msg.apply_bytes and msg.apply_bytes < send:
                send = msg.apply_bytes
            verdict = psock.eval
            if verdict is _PASS or verdict is _REDIRECT:
                target: Sock | None = None
                ingress = False
                if verdict is _REDIRECT:
                    target, ingress = psock.sk_redir, psock.redir_ingress
                msg.apply_bytes = 0
                bufs = msg.consume(send)
                more = self._more or msg.size > 0 or self._pos < self._src.nbytes
                yield TxAction(
                    "redirect" if target is not None else "pass", target, ingress, bufs, send, more
                )
                if self._failure is not None:
                    err, delivered = self._failure
                    self._failure = None
                    self.passed += delivered
                    self.copied -= (send - delivered) + msg.free()
                    holder.msg = None
                    return err
                self.passed += send
                if target is None:
                    psock.tx_passed_bytes += send
                else:
                    psock.tx_redirected_bytes += send
            else:
                dropped = msg.free()
                psock.tx_dropped_bytes += dropped
                holder.msg = None
                self.copied -= send + delta
                return errno.EACCES
            if not msg.size:
                holder.msg = None
            # the remainder of a split record has apply 0: its verdict runs again
            psock.eval = _NONE
            psock.sk_redir = None
            if holder.msg is None:
                return 0
            full_record = False
