"""The cancellation rule of the TX engines, as a model for property tests.

A verdict covers exactly the bytes its run was shown (and, on TCP, the apply
window the kernel carries into later sends). An I/O layer that abandons a
send at any action (what a trio cancellation does to ``send_all``) must never
leave a verdict behind that a later send uses without running the program.

The model: every program run records what it was shown, where it sent the
bytes and how many its verdict covers; every action an engine hands out
spends that credit, and must match the shown bytes where it lies within
them. An action with no credit left is a policy bypass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import strategies as st

import skmsg_core as sk

from ._support import MemProto, Net

__all__ = ["MemProto", "Model", "decisions", "drive", "make_program", "sends", "setup"]

KINDS = ("pass", "drop", "egress", "ingress")

decisions = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.sampled_from([0, 0, 1, 7, 40, 300]),  # apply_bytes
        st.sampled_from([0, 0, 0, 5, 90]),  # cork_bytes
    ),
    min_size=1,
    max_size=12,
)
# each send: its bytes, MSG_MORE, and what the I/O layer does with each action
# it is handed: deliver it whole (None), or deliver a prefix then cancel
sends = st.lists(
    st.tuples(
        st.binary(min_size=0, max_size=200),
        st.booleans(),
        st.lists(st.one_of(st.none(), st.integers(0, 400)), max_size=6),
    ),
    min_size=1,
    max_size=10,
)


@attrs.define
class Credit:
    """What one run allows: ``dest`` for ``remaining`` more bytes, the first of
    which must be ``shown[offset:]`` (past ``shown``: the apply window the
    kernel carries into later sends)."""

    dest: object
    remaining: int
    shown: bytes
    offset: int = 0


@attrs.define
class Model:
    """The programs' runs and the engines' actions, checked against each other.

    Runs queue their credit in order (a TLS batch hands out several records
    verdicted one after another); each record handed out spends credit from
    the front. A run that drops, or corks and is held, gives none.
    """

    carry: bool  # an apply window carries past the message (TCP), or not (TLS)
    limit: int = 1 << 30  # a record this long is closed whatever its cork says
    credits: list[Credit] = attrs.field(factory=list)
    runs: int = 0
    delivered: dict[object, bytearray] = attrs.field(factory=dict)

    def ran(self, dest: object, shown: bytes, apply: int, cork: int) -> None:
        self.runs += 1
        if self.carry:
            # A run replaces the verdict in force: on TCP one runs while a window
            # is left only when a cork was met (tcp_bpf_sendmsg sets
            # psock->eval = __SK_NONE), and that window's bytes past what its
            # run was shown are no longer its to cover.
            self.credits = [c for c in self.credits if c.offset < len(c.shown)]
        if dest == "drop" or (cork > len(shown) and len(shown) < self.limit):
            return
        covers = apply if apply else len(shown)
        if not self.carry:
            covers = min(covers, len(shown))
        if covers:
            self.credits.append(Credit(dest, covers, shown))

    def handed(self, dest: object, data: bytes) -> None:
        """One record (TLS) or window (TCP) handed out: runs must cover it."""
        pos = 0
        while pos < len(data):
            assert self.credits, f"{len(data) - pos} bytes to {dest} with no verdict left"
            c = self.credits[0]
            assert c.dest == dest, f"bytes to {dest} under a verdict for {c.dest}"
            take = min(c.remaining, len(data) - pos)
            seen = c.shown[c.offset : c.offset + take]
            assert data[pos : pos + len(seen)] == seen, "bytes differ from what was shown"
            c.remaining -= take
            c.offset += take
            pos += take
            if not c.remaining:
                self.credits.pop(0)

    def cancelled(self) -> None:
        """The send was abandoned: verdicts of bytes not handed out are gone,
        but for the apply window the kernel carries (TCP)."""
        if self.carry:
            del self.credits[1:]
        else:
            self.credits.clear()

    def deliver(self, dest: object, data: bytes) -> None:
        self.delivered.setdefault(dest, bytearray()).extend(data)


def make_program(
    model: Model, plan: list[tuple[str, int, int]], maps: sk.SockMap
) -> Callable[[sk.SkMsg], int]:
    """A program that follows ``plan`` run after run (cycling) and tells the model."""
    turn = iter(range(1 << 30))

    def program(msg: sk.SkMsg) -> int:
        kind, apply, cork = plan[next(turn) % len(plan)]
        sk.msg_apply_bytes(msg, apply)
        sk.msg_cork_bytes(msg, cork)
        shown = msg.tobytes()
        if kind == "drop":
            ret = sk.SK_DROP
        elif kind == "pass":
            ret = sk.SK_PASS
        else:
            key, flags = (0, 0) if kind == "egress" else (1, sk.BPF_F_INGRESS)
            ret = sk.msg_redirect_map(msg, maps, key, flags)
        # what the verdict means: SK_PASS with a target the message still
        # carries (the helpers' fields outlive a run on the same message, as
        # in the kernel) is a redirect
        dest = "drop"
        if ret == sk.SK_PASS:
            dest = "pass"
            if msg.sk_redir is not None:
                dest = "ingress" if msg.flags & sk.BPF_F_INGRESS else "egress"
        model.ran(dest, shown, apply, cork)
        return ret

    return program


def dest_of(action: sk.TxAction) -> str:
    if action.kind == "pass":
        return "pass"
    return "ingress" if action.ingress else "egress"


def drive(model: Model, op: Any, fates: list[int | None], *, per_record: bool) -> bool:
    """Carry out ``op``'s actions as an I/O layer would, abandoning the send
    where ``fates`` say; returns whether it was abandoned. ``per_record``: a
    pass action's buffers are one record each (TLS)."""
    fate = iter(fates)
    for action in op:
        dest = dest_of(action)
        parts = action.bufs if per_record and action.kind == "pass" else [b"".join(action.bufs)]
        for part in parts:
            model.handed(dest, bytes(part))
        data = b"".join(action.bufs)
        cut = next(fate, None)
        if cut is not None:  # cancelled while this action went out: a prefix of it
            model.deliver(dest, data[:cut])
            model.cancelled()
            return True
        model.deliver(dest, data)
    op.result()
    return False


def setup(proto: MemProto) -> tuple[Net, sk.Sock, sk.SockMap, sk.SockMap]:
    net = Net(proto)
    c1, c2, p2 = net.sock(), net.sock(), net.sock()
    txmsg, redir = sk.SockMap(4), sk.SockMap(4)
    redir.update(0, c2)
    redir.update(1, p2)
    return net, c1, txmsg, redir


