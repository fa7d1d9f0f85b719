"""The cancellation rule of the TCP TX engine (``tcp_bpf_sendmsg``), as a
property: see :mod:`._cancel_model`."""

from __future__ import annotations

from hypothesis import example, given

import skmsg_core as sk

from ._cancel_model import MemProto, Model, decisions, drive, make_program, sends, setup


@given(plan=decisions, script=sends)
@example(  # a cork met inside an apply window: the rerun replaces that window
    plan=[("pass", 7, 5)],
    script=[(b"\0\0", False, []), (b"\0\0\0", False, []), (b"\x01", False, []),
            (b"\0\0", False, []), (b"\0\0", False, [])],
)
def test_tcp_a_cancelled_send_never_widens_a_verdict(
    plan: list[tuple[str, int, int]], script: list[tuple[bytes, bool, list[int | None]]]
) -> None:
    _net, c1, txmsg, redir = setup(MemProto())
    model = Model(carry=True)
    txmsg.attach(make_program(model, plan, redir), sk.SK_MSG_VERDICT)
    txmsg.update(0, c1)
    assert c1.psock is not None
    for data, more, fates in script:
        op = sk.SendOp(c1.psock, data, more=more)
        drive(model, op, fates, per_record=False)
