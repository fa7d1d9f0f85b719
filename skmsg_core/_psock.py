"""``struct sk_psock``: per-socket state once a socket is in a map (``net/core/skmsg.c``).

Theory of operation
-------------------
A psock is created when a socket enters its first map (``sk_psock_init``)
and dropped when its last map link goes (``sk_psock_drop``): then the
protocol's operations are restored through the seam, the cork is freed and
the ingress queue purged, exactly as the kernel discards unread redirected
data. Each map slot holding the socket is one *link*.

Programs are copied from a map into the psock when the socket is inserted
(``sock_map_link``), never later: attaching to a map does not change sockets
already in it. Receive processing starts in *strparser mode* when the
inserting map has both a stream parser and a stream verdict, and in *verdict
mode* (one verdict per chunk read) when it has a verdict alone.

The psock holds the state of the TX verdict engine (``eval``, ``apply_bytes``,
``cork_bytes``, the corked message, the redirect target), which
:mod:`._tx` drives, and the receive side: :meth:`SkPsock.rx_feed` turns bytes
read from the transport into :class:`RxAction` values, and the ingress queue
(``ingress_msg``) holds bytes waiting for the application's receive call.

Tails
-----
A framed message of at least :data:`~skmsg_core.RX_TAIL_MIN_BYTES` whose
stream verdict declared its reads (``reads=N``) is not held until it is
whole: as soon as its length and its first ``N`` bytes are in, the verdict
runs on them (``skb.data`` is those bytes, ``skb.len`` the whole length) and
:meth:`SkPsock.rx_feed` returns, as its last action, the message's bytes held
so far with ``tail`` set to the bytes of it still in the socket. The I/O layer
moves those to the same destination before it reads anything else from the
socket (``splice(2)`` to a stream's egress, so they never enter Python; a
DROP discards them unread), and counts what it moved so in
``rx_spliced_bytes`` and ``rx_discarded_bytes``. The verdict's counters count
the whole message when it runs. Shorter messages, and messages of programs
that read every byte, are held whole and verdicted in batches as before.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

from ._budget import program_caller
from ._consts import (
    BPF_F_INGRESS,
    DEFAULT_QUEUE_BYTES,
    MAX_MSG_FRAGS,
    RX_TAIL_MIN_BYTES,
    SK_DROP,
    SK_PASS,
)
from ._errors import StrParserError, kernel_error
from ._plugins import loaded_plugins
from ._progs import Program, Verdict
from ._ring import PageFrag, SkMsg
from ._skb import ALL_BYTES, SkBuff
from ._strparser import LengthPrefixParser, StrParser

if TYPE_CHECKING:
    from ._maps import SockMapBase
    from ._sock import Sock

__all__ = ["PsockStats", "RxAction", "SkPsock", "take_queued"]

_PASS, _REDIRECT = Verdict.PASS, Verdict.REDIRECT
_SK_PASS, _SK_DROP = SK_PASS, SK_DROP
_SOCK_STREAM = socket.SOCK_STREAM
_EMPTY_VIEW = memoryview(b"")

#: What :meth:`SkPsock.rx_feed` asks the I/O layer to do with received bytes.
RX_PASS = "pass"
RX_REDIRECT = "redirect"
RX_DROP = "drop"


@attrs.define(slots=True)
class RxAction:
    """Received bytes and where they go, coalesced per destination.

    ``kind`` is ``"pass"`` (to this socket's ingress queue), ``"redirect"``
    (to ``target``'s egress, or its ingress queue when ``ingress``) or
    ``"drop"``. ``bufs`` are zero-copy views, in order; ``nbytes`` their total;
    ``msgs`` how many verdict units were merged into this action.

    ``tail``: bytes of this action's (last) message still in the socket after
    ``bufs``: the I/O layer takes exactly those from the socket next, before
    anything else it reads, and sends them the same way (see the module's
    "Tails"). Only the last action of a feed has one.
    """

    kind: str
    target: Sock | None
    ingress: bool
    bufs: list[memoryview]
    nbytes: int
    msgs: int = 1
    tail: int = 0


def take_queued(q: deque[memoryview], max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from the front of a queue of byte views, with stream
    semantics (units are not kept apart): whole units are popped, a unit cut
    short keeps its rest at the front. One copy, into the returned bytes."""
    out: list[memoryview] = []
    want = max_bytes
    while q and want > 0:
        b = q[0]
        n = b.nbytes
        if n <= want:
            out.append(q.popleft())
            want -= n
        else:
            out.append(b[:want])
            q[0] = b[want:]
            want = 0
    return out[0].tobytes() if len(out) == 1 else b"".join(out)


class _RxBatch:
    """The actions of one :meth:`SkPsock.rx_feed`: one per destination for the
    whole batch, in first-seen order, each keeping its messages in order (the
    kernel's FIFO per target), so each destination gets one write."""

    __slots__ = ("actions", "by_dest")

    def __init__(self) -> None:
        self.actions: list[RxAction] = []
        self.by_dest: dict[tuple[str, int, bool], RxAction] = {}

    def add(
        self, kind: str, target: Sock | None, ingress: bool, buf: memoryview, msgs: int
    ) -> None:
        """Add ``msgs`` messages, the bytes ``buf``, bound for one destination."""
        dest = (kind, id(target), ingress)
        action = self.by_dest.get(dest)
        if action is None:
            action = self.by_dest[dest] = RxAction(kind, target, ingress, [buf], buf.nbytes, msgs)
            self.actions.append(action)
        else:
            action.bufs.append(buf)
            action.nbytes += buf.nbytes
            action.msgs += msgs


@attrs.frozen
class PsockStats:
    """Counters of one psock (what ``bpftool`` and ``ss`` would show)."""

    links: int
    tx_msgs: int
    tx_passed_bytes: int
    tx_redirected_bytes: int
    tx_dropped_bytes: int
    corked_bytes: int
    rx_msgs: int
    rx_passed_bytes: int
    rx_redirected_bytes: int
    rx_dropped_bytes: int
    ingress_bytes: int
    ingress_queue_limit: int
    #: Bytes of message tails moved from the socket to another by ``splice(2)``
    #: (never read into Python); they are counted in ``rx_redirected_bytes`` too.
    rx_spliced_bytes: int = 0
    #: Bytes of dropped message tails discarded unread (counted in
    #: ``rx_dropped_bytes`` or, after a redirect target failed, in
    #: ``rx_redirected_bytes``).
    rx_discarded_bytes: int = 0


class SkPsock:
    """``struct sk_psock`` for ``sk``. Created and dropped by the maps only.

    Slotted, and its ingress queue and page frag are made on first use: an idle
    socket in a map should cost little (10,000 of them is a benchmark).
    """

    __slots__ = (
        "__weakref__",
        "_frag",
        "_ingress",
        "_skb",
        "apply_bytes",
        "cork",
        "cork_bytes",
        "eval",
        "ingress_bytes",
        "links",
        "max_frags",
        "msg_parser",
        "rcvbuf",
        "redir_ingress",
        "rx_discarded_bytes",
        "rx_dropped_bytes",
        "rx_mode",
        "rx_msgs",
        "rx_passed_bytes",
        "rx_redirected_bytes",
        "rx_spliced_bytes",
        "rx_tail_min",
        "sk",
        "sk_redir",
        "skb_verdict",
        "stream_parser",
        "stream_verdict",
        "strp",
        "tx_dropped_bytes",
        "tx_enabled",
        "tx_msgs",
        "tx_passed_bytes",
        "tx_redirected_bytes",
    )

    def __init__(
        self, sk: Sock, *, max_frags: int = MAX_MSG_FRAGS, rcvbuf: int = DEFAULT_QUEUE_BYTES
    ) -> None:
        self.sk = sk
        self.links: list[tuple[SockMapBase, Any]] = []
        # progs
        self.msg_parser: Program | None = None
        self.stream_parser: Program | None = None
        self.stream_verdict: Program | None = None
        self.skb_verdict: Program | None = None
        # TX verdict engine state (tcp_bpf_send_verdict)
        self.eval = Verdict.NONE
        self.apply_bytes = 0
        self.cork_bytes = 0
        self.cork: SkMsg | None = None
        self.sk_redir: Sock | None = None
        self.redir_ingress = False
        self.max_frags = max_frags
        self._frag: PageFrag | None = None
        self.tx_enabled = True
        # RX
        self.rx_mode: str | None = None  # None, "strp" or "verdict"
        self.strp: StrParser | None = None
        self._skb = SkBuff(sk)
        self._ingress: deque[memoryview] | None = None
        self.ingress_bytes = 0
        self.rcvbuf = rcvbuf
        # counters
        self.tx_msgs = 0
        self.tx_passed_bytes = 0
        self.tx_redirected_bytes = 0
        self.tx_dropped_bytes = 0
        self.rx_msgs = 0
        self.rx_passed_bytes = 0
        self.rx_redirected_bytes = 0
        self.rx_dropped_bytes = 0
        self.rx_spliced_bytes = 0
        self.rx_discarded_bytes = 0
        #: Messages at least this long may leave a tail (:data:`RX_TAIL_MIN_BYTES`).
        self.rx_tail_min = RX_TAIL_MIN_BYTES

    @property
    def frag(self) -> PageFrag:
        """The socket's page-frag chunks, allocated on the first send that needs
        them (an idle socket in a map costs no 32 KiB chunk)."""
        frag = self._frag
        if frag is None:
            frag = self._frag = PageFrag()
        return frag

    # -- programs and lifecycle -------------------------------------------------------

    def conflicts_with(self, progs: dict[str, Program | None]) -> bool:
        """Whether a map's programs collide with this psock's (``sock_map_link``'s EBUSY)."""
        verdicts = self.stream_verdict is not None or self.skb_verdict is not None
        return bool(
            (progs["msg_parser"] and self.msg_parser)
            or (progs["stream_parser"] and self.stream_parser)
            or ((progs["skb_verdict"] or progs["stream_verdict"]) and verdicts)
        )

    def link(self, smap: SockMapBase, key: Any, progs: dict[str, Program | None]) -> None:
        """Take the map's programs, start receive processing, and install the
        protocol's operations (``sock_map_link`` + ``sock_map_add_link``).

        Raises:
            OSError: the errno the protocol's ``psock_update_sk_prot`` returned,
                or the ``OSError`` it raised (the link is not made), or
                EOPNOTSUPP for a stream parser on a socket that is not TCP.
        """
        parser, verdict, skb_verdict = (
            progs["stream_parser"],
            progs["stream_verdict"],
            progs["skb_verdict"],
        )
        if parser and verdict and self.rx_mode is None and not self.sk.is_tcp:
            raise kernel_error(
                errno.EOPNOTSUPP, f"{self.sk.describe()}: a stream parser needs a TCP socket"
            )
        saved = (self.msg_parser, self.stream_parser, self.stream_verdict, self.skb_verdict)
        saved_rx = (self.rx_mode, self.strp)
        if progs["msg_parser"]:
            self.msg_parser = progs["msg_parser"]
        if parser:
            self.stream_parser = parser
        if verdict:
            self.stream_verdict = verdict
        if skb_verdict:
            self.skb_verdict = skb_verdict
        if self.rx_mode is None:
            if parser and verdict:
                self.rx_mode = "strp"
                native = parser.func if isinstance(parser.func, LengthPrefixParser) else None
                self.strp = StrParser(
                    parser.run, max_msg_size=self.rcvbuf, sk=self.sk, native=native
                )
            elif verdict or skb_verdict:
                self.rx_mode = "verdict"
        try:
            err = self._update_proto(restore=False)
            if err < 0:
                raise kernel_error(-err, f"{self.sk.describe()}: protocol refused the psock")
        except OSError:
            self.msg_parser, self.stream_parser, self.stream_verdict, self.skb_verdict = saved
            self.rx_mode, self.strp = saved_rx
            raise
        self.links.append((smap, key))

    def replace_prog(self, slot: str, old: Program, new: Program) -> None:
        """A link update (``BPF_LINK_UPDATE``): the program in ``slot``
        (``"msg_parser"``, ``"stream_parser"``, ``"stream_verdict"`` or
        ``"skb_verdict"``) becomes ``new`` if it is ``old`` (a socket whose
        program in that slot came from another map keeps it). Engines read the
        program at each message, so the next message runs ``new``; a stream
        parser keeps its partial message and frames it with ``new``."""
        if getattr(self, slot) is not old:
            return
        setattr(self, slot, new)
        if slot == "stream_parser" and self.strp is not None:
            native = new.func if isinstance(new.func, LengthPrefixParser) else None
            self.strp.replace_parse(new.run, native=native)

    def unlink(self, smap: SockMapBase, key: Any) -> None:
        """Remove one map slot's link (``sock_map_unref``); the last one drops the psock.

        If that map has receive programs attached now, receive processing stops
        and the psock's stream programs are cleared (``sock_map_del_link``).
        """
        for i, (m, k) in enumerate(self.links):
            if m is smap and k == key:
                del self.links[i]
                break
        else:
            return
        if self.rx_mode is not None:
            strp_stop = smap.progs["stream_parser"] is not None
            verdict_stop = (
                smap.progs["stream_verdict"] is not None or smap.progs["skb_verdict"] is not None
            )
            if strp_stop:
                self.stream_parser = None
            if verdict_stop:
                self.stream_verdict = self.skb_verdict = None
                self.rx_mode = None
                self.strp = None
            elif strp_stop and self.rx_mode == "strp":
                self.rx_mode, self.strp = None, None
            if (strp_stop or verdict_stop) and self.links:
                self._update_proto(restore=False)
        if not self.links:
            self.drop()

    def unlink_all(self) -> None:
        """Leave every map (``sock_map_remove_links``), dropping the psock."""
        for smap, key in list(self.links):
            smap._remove_sock(key, self.sk)

    def drop(self) -> None:
        """``sk_psock_drop``: restore the protocol, free the cork, purge the ingress
        queue (unread redirected bytes are discarded) and detach from the socket."""
        self._update_proto(restore=True)
        self.tx_enabled = False
        self.rx_mode = None
        self.strp = None
        if self.cork is not None:
            self.cork.free()
            self.cork = None
        self._ingress = None
        self.ingress_bytes = 0
        self.sk_redir = None
        if self.sk.psock is self:
            self.sk.psock = None
        observers = loaded_plugins()
        if observers is not None:
            observers.psock_drop(self)

    def _update_proto(self, restore: bool) -> int:
        prot = self.sk.sk_prot
        if prot is None:
            return -errno.EOPNOTSUPP
        return prot.psock_update_sk_prot(self.sk, self, restore)

    # -- TX verdict -------------------------------------------------------------------

    def msg_verdict(self, msg: SkMsg) -> Verdict:
        """``sk_psock_msg_verdict``: run the SK_MSG program on ``msg``, record the
        apply window and the redirect target. No program is PASS."""
        prog = self.msg_parser
        if prog is None:
            return Verdict.PASS
        msg.compute_data_pointers()
        msg.sk = self.sk
        ret = prog.run_verdict(msg)
        self.apply_bytes = msg.apply_bytes
        if ret is _REDIRECT:
            self.sk_redir = msg.sk_redir
            self.redir_ingress = bool(msg.flags & BPF_F_INGRESS)
        return ret

    def new_msg(self) -> SkMsg:
        """A fresh, empty message for this socket (``sk_msg_init``)."""
        return SkMsg(self.max_frags, self.sk)

    # -- RX ---------------------------------------------------------------------------

    def rx_feed(
        self, data: bytes | bytearray | memoryview, *, tails: bool = True
    ) -> list[RxAction]:
        """Run the receive programs on bytes read from the transport.

        In strparser mode the bytes are framed and the stream verdict runs once
        per message; in verdict mode it runs once on ``data``; with no receive
        programs everything passes. Units with the same destination are merged
        into one action (in order), so the I/O layer writes once per
        destination per batch; consecutive messages with one destination are
        one zero-copy slice of ``data``. A message that leaves a tail (see the
        module's "Tails") is the last action, alone, with ``tail`` set; with
        ``tails=False`` (a caller whose bytes are not the socket's own, such as
        a ULP's plaintext: no tail can be read from the socket) none does, and
        a message is verdicted once it is whole, whatever it declared.

        Raises:
            StrParserError: the stream parser failed (the socket is in error); its
                ``actions`` are those of the messages completed before the
                failure, which the caller carries out before failing the socket.
        """
        view = memoryview(data).cast("B").toreadonly()
        batch = _RxBatch()
        if self.rx_mode == "strp":
            strp = self.strp
            assert strp is not None
            prog = self.stream_verdict
            try:
                head, view, start, ends = strp.feed_spans(view)
            except StrParserError as exc:
                exc.actions = batch.actions
                for unit in exc.messages:
                    self._verdict_spans(unit, 0, [unit.nbytes], prog, batch)
                raise
            finally:
                if self.stream_parser is not None:
                    self.stream_parser.run_cnt += strp.take_native_runs()
            for unit in head:
                self._verdict_spans(unit, 0, [unit.nbytes], prog, batch)
            if ends:
                self._verdict_spans(view, start, ends, prog, batch)
            need = strp.pending_length
            if (
                tails
                and need >= self.rx_tail_min
                and prog is not None
                and prog.reads is not None
            ):
                reads = prog.reads
                if strp.pending >= (reads if reads < need else need):
                    self._verdict_tail(strp.take_pending(), need, prog, batch)
            return batch.actions
        if view.nbytes:
            prog = self.stream_verdict or self.skb_verdict if self.rx_mode == "verdict" else None
            self._verdict_spans(view, 0, [view.nbytes], prog, batch)
        return batch.actions

    @program_caller
    def rx_verdict(self, units: list[memoryview]) -> list[RxAction]:
        """Run the stream verdict once per unit, with no parser: a ULP's RX hook
        hands over whole records it framed itself (``sk_psock_tls_strp_read``).
        The verdict is ``SK_SKB_STREAM_VERDICT``, or ``SK_SKB_VERDICT`` when that
        is the one attached; with neither everything passes. Empty units are
        skipped (no verdict, no message). Actions as :meth:`rx_feed`'s; each
        unit stays one buffer of its action."""
        batch = _RxBatch()
        prog = self.stream_verdict or self.skb_verdict
        if prog is None:
            for unit in units:
                if unit.nbytes:
                    self._verdict_spans(unit, 0, [unit.nbytes], prog, batch)
            return batch.actions
        # Each unit is one message in a buffer of its own: what _verdict_spans
        # does for a one-message span, without its per-call set-up (the
        # per-record hot path of a TLS receive). A passed unit only joins the
        # list ``passed``; its action is made at the end, in its first-seen
        # place. Counters summed once.
        func = prog.timed_func()
        skb: Any = self._skb  # Any: the program's helpers set fields the loop resets
        sk_pass, sk_drop = _SK_PASS, _SK_DROP
        passed: list[memoryview] = []
        pass_at = 0  # how many actions came before the first passed unit
        b_pass = n_other = dead = n_redir = b_redir = b_drop = 0
        skb._redir = None  # kept None between units: reset after each redirect
        reads = ALL_BYTES if prog.reads is None else prog.reads
        skb._reads = reads
        for unit in units:
            n = unit.nbytes
            if not n:
                continue
            skb._data = unit if n <= reads else unit[:reads]
            skb._len = n
            try:
                ret = func(skb)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # fail closed: a DROP, whatever was raised
                ret = sk_drop
                prog.record_error(exc)
            if skb._helper_error is not None:
                prog.helper_failed(skb)
            ok = ret is sk_pass or (ret is not sk_drop and prog.is_pass(ret))
            if ok and skb._redir is None:
                passed.append(unit)
                b_pass += n
                continue
            n_other += 1
            target = skb._redir
            skb._redir = None  # flags mean something only with sk_redir
            if ok and target is not None:
                tp = target.psock
                if tp is not None and not target.dead and tp.tx_enabled:
                    n_redir += 1
                    b_redir += n
                    batch.add(RX_REDIRECT, target, bool(skb._flags), unit, 1)
                    if not passed:
                        pass_at = len(batch.actions)
                    continue
                dead += 1
            b_drop += n
            batch.add(RX_DROP, None, False, unit, 1)
            if not passed:
                pass_at = len(batch.actions)
        skb._buf = skb._data = _EMPTY_VIEW
        n_pass = len(passed)
        if n_pass:
            batch.actions.insert(pass_at, RxAction(RX_PASS, None, False, passed, b_pass, n_pass))
        # as _verdict_spans: a redirect to a target that cannot take it is the
        # program's REDIRECT and the psock's drop; a raise is a DROP and an error
        runs = n_pass + n_other
        prog.run_cnt += runs
        prog.passed += n_pass
        prog.redirected += n_redir + dead
        prog.dropped += n_other - n_redir - dead
        self.rx_msgs += runs
        self.rx_passed_bytes += b_pass
        self.rx_redirected_bytes += b_redir
        self.rx_dropped_bytes += b_drop
        return batch.actions

    @program_caller
    def _verdict_spans(
        self,
        view: memoryview,
        start: int,
        ends: list[int],
        prog: Program | None,
        batch: _RxBatch,
    ) -> None:
        """Run ``prog`` on the messages ``view[start:ends[0]]``, ... and add each
        run of consecutive messages with one destination to ``batch``.

        This is the per-message hot path: locals for everything, the
        program called directly (fail-closed as :meth:`Program.verdict_runner`),
        every counter summed once per batch.
        """
        if prog is None:
            nbytes = ends[-1] - start
            self.rx_msgs += len(ends)
            self.rx_passed_bytes += nbytes
            batch.add(RX_PASS, None, False, view[start:], len(ends))
            return
        if len(ends) == 1:  # verdict mode's one unit, or a lone framed message
            self._verdict_one(view, start, ends[0], prog, batch)
            return
        func = prog.timed_func()
        add = batch.add
        skb: Any = self._skb  # Any: the program's helpers set fields the loop resets
        skb._buf = view
        reads = prog.reads
        skb._reads = ALL_BYTES if reads is None else reads
        sk_pass, sk_drop = _SK_PASS, _SK_DROP
        dead = 0
        # the current run: the messages view[run_start:off], bound for one place
        # (a PASS or DROP run has no target; a redirect run has one)
        run_kind = ""
        run_target: Sock | None = None
        run_flags = 0
        run_start = off = start
        run_msgs = 0
        counts = {RX_PASS: [0, 0], RX_REDIRECT: [0, 0], RX_DROP: [0, 0]}  # msgs, bytes
        for end in ends:
            skb._off = off
            skb._len = end - off
            skb._data = None
            skb._redir = None  # flags mean something only with sk_redir: both set together
            try:
                ret = func(skb)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # fail closed: a DROP, whatever was raised
                ret = sk_drop
                prog.record_error(exc)
            if skb._helper_error is not None:
                prog.helper_failed(skb)
            if ret is sk_pass or (ret is not sk_drop and prog.is_pass(ret)):
                target = skb._redir
                if target is None:
                    if run_kind is RX_PASS:
                        run_msgs += 1
                        off = end
                        continue
                    kind, flags = RX_PASS, 0
                else:
                    flags = skb._flags  # the helpers set only BPF_F_INGRESS
                    if target is run_target and flags == run_flags:
                        # the same destination as the previous message, checked then
                        run_msgs += 1
                        off = end
                        continue
                    tp = target.psock
                    if tp is None or target.dead or not tp.tx_enabled:
                        kind, target, flags = RX_DROP, None, 0
                        dead += 1
                    elif target.type != _SOCK_STREAM:
                        # a datagram socket: each message stays one datagram,
                        # its own buffer (the run before it ends here)
                        if run_msgs:
                            c = counts[run_kind]
                            c[0] += run_msgs
                            c[1] += off - run_start
                            add(
                                run_kind, run_target, bool(run_flags), view[run_start:off], run_msgs
                            )
                        c = counts[RX_REDIRECT]
                        c[0] += 1
                        c[1] += end - off
                        add(RX_REDIRECT, target, bool(flags), view[off:end], 1)
                        run_kind, run_target, run_flags, run_msgs = "", None, 0, 0
                        run_start = off = end
                        continue
                    else:
                        kind = RX_REDIRECT
            else:
                if run_kind is RX_DROP:
                    run_msgs += 1
                    off = end
                    continue
                kind, target, flags = RX_DROP, None, 0
            if kind is not run_kind or target is not run_target or flags != run_flags:
                if run_msgs:
                    c = counts[run_kind]
                    c[0] += run_msgs
                    c[1] += off - run_start
                    add(run_kind, run_target, bool(run_flags), view[run_start:off], run_msgs)
                run_kind, run_target, run_flags = kind, target, flags
                run_start, run_msgs = off, 0
            run_msgs += 1
            off = end
        if run_msgs:
            c = counts[run_kind]
            c[0] += run_msgs
            c[1] += off - run_start
            add(run_kind, run_target, bool(run_flags), view[run_start:off], run_msgs)
        skb._buf = skb._data = _EMPTY_VIEW
        # program counters: a redirect to a target that cannot take it is the
        # program's REDIRECT and the psock's drop; a raise is a DROP and an error
        prog.run_cnt += len(ends)
        prog.passed += counts[RX_PASS][0]
        prog.redirected += counts[RX_REDIRECT][0] + dead
        prog.dropped += counts[RX_DROP][0] - dead
        self.rx_msgs += len(ends)
        self.rx_passed_bytes += counts[RX_PASS][1]
        self.rx_redirected_bytes += counts[RX_REDIRECT][1]
        self.rx_dropped_bytes += counts[RX_DROP][1]

    @program_caller
    def _judge(
        self, buf: memoryview, off: int, length: int, prog: Program
    ) -> tuple[str, Sock | None, bool]:
        """Run the stream verdict on one message of ``length`` bytes starting at
        ``buf[off]`` (``buf`` may hold only its first bytes: the program's
        declared reads) and count the outcome as :meth:`_verdict_spans` does.
        Returns the action's kind, target and ingress flag. Never raises but
        Ctrl-C: whatever the program does is a counted DROP at worst."""
        skb: Any = self._skb  # Any: the program's helpers set fields the loop resets
        skb._buf = buf
        reads = prog.reads
        skb._reads = ALL_BYTES if reads is None else reads
        skb._off = off
        skb._len = length
        skb._data = None
        skb._redir = None
        try:
            ret = prog.timed_func()(skb)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # fail closed: a DROP, whatever was raised
            ret = _SK_DROP
            prog.record_error(exc)
        if skb._helper_error is not None:
            prog.helper_failed(skb)
        target = skb._redir
        skb._buf = skb._data = _EMPTY_VIEW
        prog.run_cnt += 1
        self.rx_msgs += 1
        if ret is _SK_PASS or (ret is not _SK_DROP and prog.is_pass(ret)):
            if target is None:
                prog.passed += 1
                self.rx_passed_bytes += length
                return RX_PASS, None, False
            prog.redirected += 1  # the program's REDIRECT, even to a target that is gone
            tp = target.psock
            if tp is not None and not target.dead and tp.tx_enabled:
                self.rx_redirected_bytes += length
                return RX_REDIRECT, target, bool(skb._flags)
        else:
            prog.dropped += 1  # a raise too
        self.rx_dropped_bytes += length
        return RX_DROP, None, False

    def _verdict_one(
        self, view: memoryview, start: int, end: int, prog: Program, batch: _RxBatch
    ) -> None:
        """:meth:`_verdict_spans` for one message, ``view[start:end]``: the same
        outcomes and counters without the runs a batch of messages needs."""
        kind, target, ingress = self._judge(view, start, end - start, prog)
        unit = view if start == 0 and end == view.nbytes else view[start:end]
        batch.add(kind, target, ingress, unit, 1)

    def _verdict_tail(
        self, held: memoryview, length: int, prog: Program, batch: _RxBatch
    ) -> None:
        """The verdict of a message of ``length`` bytes of which ``held`` are in
        (at least the program's declared reads): :meth:`_verdict_one`'s outcomes
        and counters for the whole message, as an action of its own, last in
        ``batch``, whose ``tail`` is the bytes still to come."""
        kind, target, ingress = self._judge(held, 0, length, prog)
        batch.actions.append(
            RxAction(kind, target, ingress, [held], held.nbytes, 1, length - held.nbytes)
        )

    # -- the ingress queue (psock->ingress_msg) ------------------------------------------

    @property
    def ingress_msg(self) -> deque[memoryview]:
        """The queue itself (``psock->ingress_msg``), made on first use."""
        q = self._ingress
        if q is None:
            q = self._ingress = deque()
        return q

    @property
    def ingress_space(self) -> int:
        """Bytes the ingress queue can still take before it reaches ``rcvbuf``."""
        return max(0, self.rcvbuf - self.ingress_bytes)

    def queue_msg(self, bufs: list[memoryview]) -> int:
        """``sk_psock_queue_msg``: append bytes for the application's receive call.

        Returns the bytes queued: all of them, or 0 when the psock is stopped
        (being dropped), in which case they are discarded as in the kernel.
        Flow control (waiting for :attr:`ingress_space`) is the caller's job.
        """
        if not self.tx_enabled:
            return 0
        n = 0
        for b in bufs:
            if b.nbytes:
                self.ingress_msg.append(b)
                n += b.nbytes
        self.ingress_bytes += n
        return n

    def recvmsg(self, max_bytes: int, *, peek: bool = False) -> bytes:
        """``sk_msg_recvmsg``: up to ``max_bytes`` from the ingress queue, with stream
        semantics (queued units are not kept apart). ``peek`` leaves them queued."""
        q = self.ingress_msg
        if peek:
            out: list[memoryview] = []
            want = max_bytes
            for b in q:
                if want <= 0:
                    break
                out.append(b[:want])
                want -= min(want, b.nbytes)
            return b"".join(out)
        data = take_queued(q, max_bytes)
        self.ingress_bytes -= len(data)
        return data

    def statistics(self) -> PsockStats:
        """A snapshot of this psock's counters."""
        return PsockStats(
            len(self.links),
            self.tx_msgs,
            self.tx_passed_bytes,
            self.tx_redirected_bytes,
            self.tx_dropped_bytes,
            self.cork.size if self.cork is not None else 0,
            self.rx_msgs,
            self.rx_passed_bytes,
            self.rx_redirected_bytes,
            self.rx_dropped_bytes,
            self.ingress_bytes,
            self.rcvbuf,
            self.rx_spliced_bytes,
            self.rx_discarded_bytes,
        )

    def __repr__(self) -> str:
        return f"<SkPsock of {self.sk.describe()} links={len(self.links)}>"
