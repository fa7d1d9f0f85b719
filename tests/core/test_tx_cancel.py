"""The cancellation rule of the TCP TX engine (``tcp_bpf_sendmsg``), as a
property: see :mod:`._cancel_model`."""

from __future__ import annotations

from hypothesis import given

import skmsg_core as sk

from ._cancel_model import MemProto, Model, decisions, drive, make_program, sends, setup


@given(plan=decisions, script=sends)
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
