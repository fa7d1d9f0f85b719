"""On real sockets: a redirect helper given a key its map never holds fails
that send with EACCES, counts the program's error, and logs the reason."""

from __future__ import annotations

import logging

import pytest

import skmsg_core as sk
from skmsg_tcp import SkStream


async def test_wrong_key_type_is_eacces_counted_and_logged(
    tcp_stream_pair: tuple[SkStream, SkStream],
    sockmap: sk.SockMap,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = tcp_stream_pair
    h = sk.SockHash(max_entries=2, key_size=4)
    h.update(b"\0\0\x07\xd0", b)
    prog = sockmap.attach(lambda msg: sk.msg_redirect_hash(msg, h, 2000), sk.SK_MSG_VERDICT)
    sockmap.update(0, a)
    with caplog.at_level(logging.WARNING, logger="skmsg_core.runtime"), pytest.raises(
        PermissionError
    ):
        await a.send_all(b"hello")
    assert prog.statistics().errors == 1
    assert any(
        "HelperError" in r.getMessage() and "is not 4 bytes" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    h.close()
