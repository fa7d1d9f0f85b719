"""The cancellation rule of the TLS TX engine (``tls_sw_sendmsg``), as a
property: see :mod:`tests.core._cancel_model`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

import skmsg_core as sk
from skmsg_tls._tx import OpenRecord, send_lean
from tests.core._cancel_model import MemProto, Model, decisions, drive, make_program, sends, setup


@given(plan=decisions, script=sends, lean_cut=st.integers(0, 3))
def test_tls_a_cancelled_send_never_widens_a_verdict(
    plan: list[tuple[str, int, int]],
    script: list[tuple[bytes, bool, list[int | None]]],
    lean_cut: int,
) -> None:
    """The TLS engine, records of 64 bytes: the bulk loop (``send_lean``,
    whose batches are passes the ULP seals at once) and the engine after it."""
    _net, c1, txmsg, redir = setup(MemProto())
    model = Model(carry=False, limit=64)
    txmsg.attach(make_program(model, plan, redir), sk.SK_MSG_VERDICT)
    txmsg.update(0, c1)
    psock = c1.psock
    assert psock is not None
    open_rec = OpenRecord()
    for data, more, fates in script:
        src = memoryview(data).toreadonly()
        pos, batches, op = 0, 0, None
        abandoned = False
        while True:
            batch, pos, op = send_lean(psock, open_rec, src, pos, more, limit=64, stop=128)
            for rec in batch:
                model.handed("pass", bytes(rec))
                model.deliver("pass", bytes(rec))
            batches += 1
            if op is not None or pos >= len(data):
                break
            if batches == lean_cut:  # cancelled while a batch was written
                model.cancelled()
                abandoned = True
                break
        if abandoned or op is None:
            continue
        drive(model, op, fates, per_record=True)
