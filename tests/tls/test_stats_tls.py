"""TLS counters: per stream (``stream.statistics().ulp``) and ``tls_stat`` totals."""

from __future__ import annotations

import skmsg_tls as tls
from skmsg_core.testing import aclose_all
from skmsg_tcp import SkStream
from skmsg_tcp.testing import tcp_stream_pair

from ._ulp_helpers import enable_both, read_exactly

Pair = tuple[SkStream, SkStream]


async def test_tls_stat_counts_contexts_records_and_rekeys(skmsg_runtime: object) -> None:
    before = tls.tls_stat()
    assert list(before) == list(tls.TLS_STAT_NAMES)
    a, b = await tcp_stream_pair()
    try:
        ta, tb = await enable_both(a, b)
        now = tls.tls_stat()
        for name in ("TlsCurrTxSw", "TlsCurrRxSw", "TlsTxSw", "TlsRxSw"):
            assert now[name] == before[name] + 2, name
        await a.send_all(b"x" * 20000)
        assert await read_exactly(b, 20000) == b"x" * 20000
        await ta.update_keys(request_peer=True)
        await a.send_all(b"y")
        assert await read_exactly(b, 1) == b"y"
        await b.send_all(b"z")  # carries b's answer to the update request first
        assert await read_exactly(a, 1) == b"z"
        sa, sb = a.statistics().ulp, b.statistics().ulp
        assert (sa.tx_records, sa.tx_bytes, sa.tx_rekeys, sa.rx_rekeys) == (3, 20001, 1, 1)
        assert (sb.rx_records, sb.rx_bytes, sb.rx_key_updates_received) == (3, 20001, 1)
        assert (sb.tx_records, sb.tx_bytes, sb.tx_control_records) == (1, 1, 1)
        assert (sa.version, sa.cipher_type) == (tls.TLS_1_3_VERSION, tls.TLS_CIPHER_AES_GCM_128)
        after = tls.tls_stat()
        assert after["TlsTxRekeyOk"] == before["TlsTxRekeyOk"] + 2
        assert after["TlsRxRekeyOk"] == before["TlsRxRekeyOk"] + 2
        assert after["TlsRxRekeyReceived"] == before["TlsRxRekeyReceived"] + 2
        assert ta.statistics() == sa and tb.statistics() == sb
    finally:
        await aclose_all((a, b))
    closed = tls.tls_stat()
    assert closed["TlsCurrTxSw"] == before["TlsCurrTxSw"]
    assert closed["TlsCurrRxSw"] == before["TlsCurrRxSw"]
    assert closed["TlsTxSw"] == before["TlsTxSw"] + 2
