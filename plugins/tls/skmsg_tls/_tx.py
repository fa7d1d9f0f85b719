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
values as the core's :class:`skmsg_core.SendOp` is: a ``"pass"`` action
carries the plaintext of one or more records, *one element of ``bufs`` per
record* (the I/O layer seals each element as one record and writes them with
one socket write; consecutive passed records are batched up to
:data:`PASS_BATCH` bytes, so a bulk send costs one action per batch, not per
record), ``"redirect"`` actions plaintext for another socket. The core's message
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
from collections.abc import Callable, Generator

from skmsg_core import (
    BPF_F_INGRESS,
    SK_PASS,
    TLS_MAX_PAYLOAD_SIZE,
    Program,
    SendOpBase,
    SkMsg,
    SkPsock,
    TxAction,
    Verdict,
    program_caller,
)

__all__ = ["PASS_BATCH", "OpenRecord", "TlsSendOp", "send_lean"]

#: Passed records are handed on together up to this many plaintext bytes.
PASS_BATCH = 262144

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


class TlsSendOp(SendOpBase):
    """One ``sendmsg`` on a TLS socket with an SK_MSG program: iterate it for actions.

    ::

        op = TlsSendOp(psock, open_rec, data, more=False)
        for action in op:           # "pass": seal each of action.bufs as one record
            try:
                carry_out(action)
            except OSError as exc:
                op.fail(exc.errno)
        result = op.result()

    An empty ``data`` without ``more`` closes a record left open by an earlier
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
        self._batch: list[memoryview] = []
        self._batch_bytes = 0
        # the program, bound once per send: its runner (sk_psock_msg_verdict's
        # body) is made when the general path first needs it; the lean loop
        # calls the program itself and keeps the counters
        self._prog = psock.msg_parser
        self._spare: SkMsg | None = None  # the lean loop's message
        self._stopped: tuple[SkMsg, Verdict, int] | None = None  # _lean's last stop
        super().__init__()

    def _runner(self) -> Callable[[SkMsg], Verdict] | None:
        """The program's runner (:meth:`skmsg_core.Program.verdict_runner`), or
        None without a program."""
        prog = self._prog
        return prog.verdict_runner() if prog is not None else None

    def _corked(self) -> bool:
        """Bytes wait in the open record."""
        return self.open_rec.size > 0

    # -- tls_sw_sendmsg_locked --------------------------------------------------------------

    def _sendmsg(self) -> Generator[TxAction, None, None]:
        err = yield from self._records()
        if not err:
            err = yield from self._flush()
        if err:
            self.err = err

    def _lean_ready(self) -> bool:
        """Whether the next record is the bulk case :meth:`_lean` runs
        (:func:`_lean_next`)."""
        return self._prog is not None and _lean_next(
            self.psock, self.open_rec, self._src.nbytes - self._pos, self._more, self._record_size
        )

    def _lean(self, stop: int) -> tuple[SkMsg, Verdict, int] | None:
        """:func:`_pass_run` from the send's position (call only when
        :meth:`_lean_ready`): whole records passed join the batch; returns the
        record not passed whole, if one stopped it."""
        prog = self._prog
        assert prog is not None
        rec = self._spare
        if rec is None:
            rec = self._spare = SkMsg(self.psock.max_frags, self.psock.sk)
        first = self._pos
        pos, passed, stopped = _pass_run(
            self.psock, prog, rec, self._src, first,
            limit=self._record_size, eor=not self._more, stop=stop, batch=self._batch,
        )  # fmt: skip
        if stopped is not None:
            self._spare = None  # the record may outlive the send
        self._batch_bytes += passed
        self.copied += pos - first
        self._pos = pos
        return stopped

    def _records(self) -> Generator[TxAction, None, int]:
        # The per-record path: locals for everything the loop touches.
        psock = self.psock
        src = self._src
        size = src.nbytes
        eor = not self._more
        limit = self._record_size
        holder = self.open_rec
        run = self._runner()
        max_frags = psock.max_frags
        sock = psock.sk
        of_private = SkMsg.of_private
        while True:
            if not psock.tx_enabled:
                return errno.EPIPE
            stopped = self._stopped
            if stopped is None and self._lean_ready():
                stopped = self._lean(PASS_BATCH - self._batch_bytes)
                if stopped is None:
                    if self._batch_bytes >= PASS_BATCH:
                        err = yield from self._flush()
                        if err:
                            return err
                    if self._pos >= size:
                        return 0
                    continue
            if stopped is not None:
                # a record not passed whole: bpf_exec_tx_verdict's rules, with
                # its verdict; it may outlive the send: its own bytes now
                self._stopped = None
                msg, verdict, want = stopped
                msg.materialize()
                holder.msg = msg
                psock.eval = verdict
                psock.apply_bytes = msg.apply_bytes
                if verdict is _REDIRECT:
                    psock.sk_redir = msg.sk_redir
                    psock.redir_ingress = bool(msg.flags & BPF_F_INGRESS)
                    if psock.sk_redir is None:
                        psock.eval = _DROP
                err = yield from self._exec_verdict(
                    msg, want >= limit or max_frags <= 1, want - msg.size
                )
                if err:
                    return err
                if self._pos >= size:
                    return 0
                continue
            rec = holder.msg
            pos = self._pos
            batch = self._batch
            full_record = fresh = False
            if pos < size:
                if rec is None:
                    # a new record: its plaintext is one private element
                    # (sk_msg_alloc + memcopy_from_iter, in one C-level copy)
                    want = size - pos
                    want = min(want, limit)
                    rec = holder.msg = of_private(
                        bytearray(src[pos : pos + want]), max_frags=max_frags
                    )
                    full_record = want >= limit or max_frags <= 1
                    fresh = True  # of_private set the program's window already
                else:
                    want = min(size - pos, limit - rec.size)
                    want = rec.append_copy(psock.frag, (src[pos : pos + want],))
                    full_record = rec.size >= limit or rec.full
                self._pos = pos = pos + want
                self.copied += want
            elif rec is None or not rec.size:
                return 0
            if full_record or (eor and pos >= size):
                delta = 0
                if psock.eval is _NONE and run is not None and rec.size:
                    # the common case inline (sk_psock_msg_verdict): run the
                    # program; a plain PASS of the whole record (no apply, no
                    # cork) joins the batch at once
                    delta = rec.size
                    if not fresh:
                        rec.compute_data_pointers()
                    rec.sk = sock
                    verdict = psock.eval = run(rec)
                    psock.tx_msgs += 1
                    psock.apply_bytes = rec.apply_bytes
                    delta -= rec.size
                    if verdict is _PASS and not rec.apply_bytes and not rec.cork_bytes:
                        n = rec.size
                        frags = rec.frags()  # the record is done with: no consume
                        batch.append(frags[0] if len(frags) == 1 else memoryview(b"".join(frags)))
                        self._batch_bytes += n
                        holder.msg = None
                        psock.eval = _NONE
                        if self._batch_bytes >= PASS_BATCH:
                            err = yield from self._flush()
                            batch = self._batch
                            if err:
                                return err
                        if pos >= size:
                            return 0
                        continue
                    if verdict is _REDIRECT:
                        psock.sk_redir = rec.sk_redir
                        psock.redir_ingress = bool(rec.flags & BPF_F_INGRESS)
                        if psock.sk_redir is None:
                            psock.eval = _DROP
                err = yield from self._exec_verdict(rec, full_record, delta)
                batch = self._batch
                if err:
                    return err
            if self._pos >= size:
                return 0

    def _flush(self) -> Generator[TxAction, None, int]:
        """Hand on the batch of passed records (one ``"pass"`` action)."""
        batch = self._batch
        if not batch:
            return 0
        nbytes = self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        held = self.open_rec.msg
        more = self._more or (held is not None and held.size > 0) or self._pos < self._src.nbytes
        yield TxAction("pass", None, False, batch, nbytes, more)
        if self._failure is not None:
            err, delivered = self._failure
            self._failure = None
            self.passed += delivered
            self.copied -= nbytes - delivered
            self.psock.tx_passed_bytes += delivered
            return err
        self.passed += nbytes
        self.psock.tx_passed_bytes += nbytes
        return 0

    # -- bpf_exec_tx_verdict --------------------------------------------------------------

    def _exec_verdict(
        self, msg: SkMsg, full_record: bool, delta: int = 0
    ) -> Generator[TxAction, None, int]:
        """``bpf_exec_tx_verdict`` on the closed record ``msg``; ``delta``: bytes
        the program already run on it removed."""
        psock = self.psock
        holder = self.open_rec
        while True:
            enospc = msg.full
            if psock.eval is _NONE:
                delta = msg.size
                psock.eval = self._msg_verdict(msg)
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
            msg.apply_bytes = 0
            # the verdict is spent on these bytes (a split record's rest is
            # verdicted again): it ends before anything is handed out, so a
            # send cancelled at a hand-off leaves no verdict for a later one
            target, ingress = psock.sk_redir, psock.redir_ingress
            if verdict is not _DROP:
                psock.eval = _NONE
                psock.sk_redir = None
            if verdict is _PASS:
                bufs = msg.consume(send)
                self._batch.append(bufs[0] if len(bufs) == 1 else memoryview(b"".join(bufs)))
                self._batch_bytes += send
                if not msg.size:
                    holder.msg = None
                if self._batch_bytes >= PASS_BATCH:
                    err = yield from self._flush()
                    if err:
                        self._discard(msg)
                        return err
            elif verdict is _REDIRECT:
                err = yield from self._flush()  # records passed before go first
                if err:
                    self._discard(msg)
                    return err
                bufs = msg.consume(send)
                more = self._more or msg.size > 0 or self._pos < self._src.nbytes
                yield TxAction("redirect", target, ingress, bufs, send, more)
                if self._failure is not None:
                    err, delivered = self._failure
                    self._failure = None
                    self.passed += delivered
                    self.copied -= send - delivered
                    self._discard(msg)
                    return err
                self.passed += send
                psock.tx_redirected_bytes += send
                if not msg.size:
                    holder.msg = None
            else:
                dropped = msg.free()
                psock.tx_dropped_bytes += dropped
                holder.msg = None
                self.copied -= send + delta
                err = yield from self._flush()  # records passed before this one still go
                return err or errno.EACCES
            if holder.msg is None:
                return 0
            full_record = False

    def _msg_verdict(self, msg: SkMsg) -> Verdict:
        """``sk_psock_msg_verdict`` (as :meth:`skmsg_core.SkPsock.msg_verdict`),
        with the runner bound once per send."""
        run = self._runner()
        if run is None:
            return _PASS
        psock = self.psock
        msg.compute_data_pointers()
        msg.sk = psock.sk
        ret = run(msg)
        psock.apply_bytes = msg.apply_bytes
        if ret is _REDIRECT:
            psock.sk_redir = msg.sk_redir
            psock.redir_ingress = bool(msg.flags & BPF_F_INGRESS)
        return ret

    def _discard(self, msg: SkMsg) -> None:
        """A hand-off failed: the rest of the open record goes (``msg->sg.size = 0``)."""
        self.copied -= msg.free()
        self.open_rec.msg = None


def _lean_next(psock: SkPsock, open_rec: OpenRecord, left: int, more: bool, limit: int) -> bool:
    """Whether the next record of a send with ``left`` bytes to go is the bulk
    case :func:`_pass_run` takes: no record open, no verdict pending, and a
    whole record (``limit`` bytes, or the end of the send) to close from the
    caller's bytes."""
    return (
        open_rec.msg is None
        and psock.eval is _NONE
        and left > 0
        and (not more or left >= limit or psock.max_frags <= 1)
    )


@program_caller
def _pass_run(
    psock: SkPsock,
    prog: Program,
    rec: SkMsg,
    src: memoryview,
    pos: int,
    *,
    limit: int,
    eor: bool,
    stop: int,
    batch: list[memoryview],
) -> tuple[int, int, tuple[SkMsg, Verdict, int] | None]:
    """Verdict whole records of ``src`` from ``pos``, one after another, while
    each passes whole; append each one's plaintext to ``batch``.

    The bulk case, lean: each record closes at once (``limit`` bytes, or the
    end of the send: of any send with ``eor``, else only with a one-slot
    ring) from the caller's buffer. Its plaintext is one private element
    (sk_msg_alloc + memcopy_from_iter), copied only if the program looks at it
    (:meth:`SkMsg.reset_lazy`): a record passed unseen joins the batch as the
    caller's bytes, which cannot change before this send returns. ``rec``
    serves every record. The program is called directly; the psock's and
    program's counters are summed after the loop.

    Stops at the end of what may close now, once the batch gained ``stop``
    bytes, or at a record not passed whole. Returns (the send's position after,
    the bytes passed, None or the record not passed whole as (message,
    verdict, plaintext length), the position then past it: the caller applies
    bpf_exec_tx_verdict's rules to it).
    """
    func = prog.timed_func()
    size = src.nbytes
    lean_tail = eor or psock.max_frags <= 1  # a short last record closes too
    base = len(batch)
    passed = 0  # bytes of the records passed whole
    stopped: tuple[SkMsg, Verdict, int] | None = None
    end = pos + limit if size - pos > limit else size
    rec.reset_lazy(src[pos:end])
    while True:
        try:  # sk_psock_msg_verdict, the program called directly
            ret = func(rec)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # fail closed: a DROP, whatever was raised
            prog.after_run(rec)
            stopped = rec, prog.account(None, rec, exc), end - pos
            break
        prog.after_run(rec)  # a writable view it took is of the record's bytes no more
        if ret is not SK_PASS or rec.sk_redir is not None or rec.apply_bytes or rec.cork_bytes:
            stopped = rec, prog.account(ret, rec), end - pos
            break
        passed += rec.size  # the program may have reshaped it
        pos = end
        if pos >= size or (size - pos < limit and not lean_tail) or passed >= stop:
            batch.append(rec.lent_bytes())
            break
        end = pos + limit if size - pos > limit else size
        batch.append(rec.relend(src[pos:end]))  # this record on, the next lent
    n = len(batch) - base  # the plain PASS runs, counted here
    prog.run_cnt += n
    prog.passed += n
    psock.apply_bytes = 0
    if stopped is not None:
        pos += stopped[2]
        n += 1
    psock.tx_msgs += n
    return pos, passed, stopped


def send_lean(
    psock: SkPsock,
    open_rec: OpenRecord,
    src: memoryview,
    pos: int,
    more: bool,
    *,
    limit: int = TLS_MAX_PAYLOAD_SIZE,
    stop: int = PASS_BATCH,
) -> tuple[list[memoryview], int, TlsSendOp | None]:
    """One batch of a ``sendmsg`` under an SK_MSG program, the bulk case: the
    records of ``src`` from ``pos`` while each passes whole (full records of
    ``limit`` bytes, and without ``more`` a short last one), until the batch
    holds ``stop`` bytes. No engine object is made for them.

    Returns ``(batch, pos, op)``: the plaintext of the records passed, one
    view per record (views of ``src`` where the program left them as lent:
    the caller seals them before anything else runs, so the bytes sealed are
    the bytes verdicted); the send's position after them; and ``None`` to
    call again from there (or stop at the end of ``src``), or the
    :class:`TlsSendOp` to iterate for the rest of the send when a record is
    not the bulk case or not passed whole: it carries on exactly there (the
    record that stopped the batch is verdicted by bpf_exec_tx_verdict's
    rules; ``op.copied`` counts from the start of ``src``).
    """
    prog = psock.msg_parser
    batch: list[memoryview] = []
    if prog is None or not _lean_next(psock, open_rec, src.nbytes - pos, more, limit):
        return batch, pos, _op_from(psock, open_rec, src, pos, more=more, limit=limit, stopped=None)
    rec = SkMsg(psock.max_frags, psock.sk)
    end, _passed, stopped = _pass_run(
        psock, prog, rec, src, pos, limit=limit, eor=not more, stop=stop, batch=batch
    )
    if stopped is None and (end >= src.nbytes or _lean_next(
        psock, open_rec, src.nbytes - end, more, limit
    )):
        return batch, end, None
    return batch, end, _op_from(psock, open_rec, src, end, more=more, limit=limit, stopped=stopped)


def _op_from(
    psock: SkPsock,
    open_rec: OpenRecord,
    src: memoryview,
    pos: int,
    *,
    more: bool,
    limit: int,
    stopped: tuple[SkMsg, Verdict, int] | None,
) -> TlsSendOp:
    """The engine for the rest of a send from ``pos`` (``stopped``: the record
    the lean loop stopped at, which ends before ``pos``)."""
    op = TlsSendOp(psock, open_rec, src, more=more, record_size=limit)
    op._stopped = stopped
    op._pos = op.copied = pos
    return op
