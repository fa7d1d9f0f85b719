"""``test_run``: a program on bytes, no socket (the kernel's ``BPF_PROG_TEST_RUN``),
for every attach type it takes, and the examples' policies unit-tested with it."""

from __future__ import annotations

import errno
import runpy
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import pytest

import skmsg_core as sk
from skmsg_core.testing import test_run, test_sock

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def backends(n: int = 2) -> tuple[sk.SockMap, list[sk.Sock]]:
    m = sk.SockMap(n)
    socks = [test_sock(name=f"backend{i}") for i in range(n)]
    for i, s in enumerate(socks):
        m.update(i, s)
    return m, socks


# -- SK_MSG -------------------------------------------------------------------------


def test_sk_msg_pass_with_helpers_reports_the_message_after_them() -> None:
    def prog(msg: sk.SkMsg) -> int:
        assert sk.msg_push_data(msg, 0, 2, 0) == 0
        msg.data[:2] = b">>"
        sk.msg_apply_bytes(msg, 4)
        sk.msg_cork_bytes(msg, 0)
        return sk.SK_PASS

    r = test_run(prog, b"hello", sk.SK_MSG_VERDICT)
    assert (r.verdict, r.retval, r.error) == (sk.Verdict.PASS, sk.SK_PASS, None)
    assert r.data == b">>hello" and r.apply_bytes == 4 and r.cork_bytes == 0
    assert r.redirect is None and r.length is None
    assert r.program.statistics().passed == 1


def test_sk_msg_sees_an_iovec_as_elements() -> None:
    seen: list[int] = []

    def prog(msg: sk.SkMsg) -> int:
        seen.append(len(msg.data))  # the window is the first element
        return sk.SK_PASS

    r = test_run(prog, [b"ab", b"cde"], sk.SK_MSG_VERDICT)
    assert seen == [2] and r.data == b"abcde"


def test_sk_msg_redirect_reports_target_and_flags() -> None:
    m, (_, b1) = backends()
    r = test_run(
        lambda msg: sk.msg_redirect_map(msg, m, 1, sk.BPF_F_INGRESS), b"x", sk.SK_MSG_VERDICT
    )
    assert r.verdict is sk.Verdict.REDIRECT and r.redirect is b1 and r.ingress
    assert r.flags == sk.BPF_F_INGRESS


def test_sk_msg_cork_is_reported() -> None:
    r = test_run(lambda msg: sk.msg_cork_bytes(msg, 100) or sk.SK_PASS, b"x", sk.SK_MSG_VERDICT)
    assert r.cork_bytes == 100 and r.verdict is sk.Verdict.PASS


# -- SK_SKB verdicts -----------------------------------------------------------------


@pytest.mark.parametrize("attach", [sk.SK_SKB_STREAM_VERDICT, sk.SK_SKB_VERDICT])
def test_sk_skb_verdicts(attach: sk.BpfAttachType) -> None:
    m, (_, b1) = backends()
    r = test_run(lambda skb: sk.sk_redirect_map(skb, m, 1, 0), b"data", attach)
    assert r.verdict is sk.Verdict.REDIRECT and r.redirect is b1 and not r.ingress
    assert r.data == b"data"
    r = test_run(lambda skb: sk.SK_DROP, b"data", attach)
    assert r.verdict is sk.Verdict.DROP and r.error is None


def test_the_context_socket_is_the_one_given() -> None:
    me = test_sock(local=("10.0.0.1", 1234), remote=("10.0.0.2", 80))
    ports: list[tuple[int, int, str | None]] = []

    def prog(skb: sk.SkBuff) -> int:
        ports.append((skb.local_port, skb.remote_port, skb.remote_ip4))
        return sk.SK_PASS

    test_run(prog, b"x", sk.SK_SKB_VERDICT, sk=me)
    assert ports == [(1234, 80, "10.0.0.2")]


def test_fail_closed_results_are_reported_as_the_engines_count_them() -> None:
    r = test_run(lambda skb: 1.0, b"x", sk.SK_SKB_VERDICT)
    assert r.verdict is sk.Verdict.DROP and isinstance(r.error, sk.VerdictError)
    assert r.retval == 1.0

    def boom(skb: sk.SkBuff) -> int:
        raise KeyError("nope")

    r = test_run(boom, b"x", sk.SK_SKB_VERDICT)
    assert r.verdict is sk.Verdict.DROP and isinstance(r.error, KeyError)

    def slow(skb: sk.SkBuff) -> int:
        time.sleep(5)
        return sk.SK_PASS

    r = test_run(slow, b"x", sk.SK_SKB_VERDICT, budget=0.1)
    assert r.verdict is sk.Verdict.DROP and isinstance(r.error, sk.ProgramTimeout)


# -- the stream parser ------------------------------------------------------------------


def test_parser_lengths_and_errors() -> None:
    parse = sk.LengthPrefixParser(4)
    assert test_run(parse, b"\0\0\0\5hello", sk.SK_SKB_STREAM_PARSER).length == 9
    assert test_run(parse, b"\0\0", sk.SK_SKB_STREAM_PARSER).length == 0  # need more
    r = test_run(lambda skb: -errno.EBADMSG, b"x", sk.SK_SKB_STREAM_PARSER)
    assert r.length == -errno.EBADMSG and r.verdict is sk.Verdict.NONE

    def broken(skb: sk.SkBuff) -> int:
        raise ValueError("bad header")

    r = test_run(broken, b"x", sk.SK_SKB_STREAM_PARSER)
    assert r.length is None and isinstance(r.error, ValueError)


# -- the API's own rules ------------------------------------------------------------------


def test_repeat_runs_fresh_messages_and_averages_the_time() -> None:
    sizes: list[int] = []

    def grow(msg: sk.SkMsg) -> int:
        sizes.append(msg.size)
        sk.msg_push_data(msg, 0, 1, 0)
        return sk.SK_PASS

    r = test_run(grow, b"ab", sk.SK_MSG_VERDICT, repeat=5)
    assert sizes == [2] * 5 and r.data == b"\0ab" and r.duration_ns > 0
    assert r.program.statistics().run_cnt == 5


def test_a_loaded_program_keeps_its_counters() -> None:
    prog = sk.Program.load(lambda skb: sk.SK_PASS, sk.BpfProgType.SK_SKB)
    test_run(prog, b"x", sk.SK_SKB_VERDICT)
    test_run(prog, b"y", sk.SK_SKB_STREAM_VERDICT)
    assert prog.statistics().run_cnt == 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="SK_REUSEPORT_SELECT"):
        test_run(lambda md: sk.SK_PASS, b"x", sk.SK_REUSEPORT_SELECT)
    with pytest.raises(ValueError, match="repeat"):
        test_run(lambda skb: sk.SK_PASS, b"x", sk.SK_SKB_VERDICT, repeat=0)
    with pytest.raises(OSError, match="exactly one argument") as info:
        test_run(lambda a, b: sk.SK_PASS, b"x", sk.SK_SKB_VERDICT)  # type: ignore[misc]
    assert info.value.errno == errno.EINVAL
    msg_prog = sk.Program.load(lambda msg: sk.SK_PASS, sk.BpfProgType.SK_MSG)
    with pytest.raises(OSError, match="SK_SKB_VERDICT takes SK_SKB"):
        test_run(msg_prog, b"x", sk.SK_SKB_VERDICT)
    with pytest.raises(ValueError, match="'sctp'"):
        test_sock(kind="sctp")


# -- the examples' policies, unit-tested ------------------------------------------------


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def test_examples_route_policy() -> None:
    verdict = runpy.run_path(str(EXAMPLES / "route.py"))["verdict"]
    m, (b0, b1) = backends()

    def run(payload: bytes) -> Any:
        return test_run(lambda skb: verdict(skb, m), frame(payload), sk.SK_SKB_STREAM_VERDICT)

    assert run(b"apple").redirect is b0
    assert run(b"zebra").redirect is b1
    assert run(b"!secret").verdict is sk.Verdict.DROP


def dns_query(name: str, *, response: bool = False) -> bytes:
    flags = 0x8180 if response else 0x0100
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", 0x1234, flags, 1, 0, 0, 0) + labels + b"\0" + b"\0\1\0\1"


def test_examples_dns_route_policy() -> None:
    verdict = runpy.run_path(str(EXAMPLES / "dns_route.py"))["verdict"]
    m, (internal, public) = backends()

    def run(data: bytes) -> Any:
        return test_run(lambda skb: verdict(skb, m), data, sk.SK_SKB_VERDICT)

    assert run(dns_query("db.corp.example")).redirect is internal
    assert run(dns_query("CORP.example")).redirect is internal
    assert run(dns_query("www.example.org")).redirect is public
    assert run(dns_query("db.corp.example", response=True)).verdict is sk.Verdict.DROP
    assert run(b"\0" * 5).verdict is sk.Verdict.DROP


def test_examples_tls_policy_drops_admin_even_split_across_records() -> None:
    """The TLS example's verdict runs per decrypted record and keeps per-socket
    state: /admin is dropped whole, and when split across two records."""
    example = runpy.run_path(str(EXAMPLES / "tls_l7_policy.py"))
    server = example["HttpsServer"](ssl.create_default_context())
    client = test_sock(remote=("127.0.0.1", 40001))
    ok = test_run(server.verdict, b"GET /index HTTP/1.1\r\n\r\n", sk.SK_SKB_STREAM_VERDICT,
                  sk=client)
    assert ok.verdict is sk.Verdict.PASS
    whole = test_run(server.verdict, b"GET /admin HTTP/1.1\r\n\r\n", sk.SK_SKB_STREAM_VERDICT,
                     sk=client)
    assert whole.verdict is sk.Verdict.DROP
    other = test_sock(remote=("127.0.0.1", 40002))
    first = test_run(server.verdict, b"GET /ad", sk.SK_SKB_STREAM_VERDICT, sk=other)
    second = test_run(server.verdict, b"min HTTP/1.1\r\n\r\n", sk.SK_SKB_STREAM_VERDICT, sk=other)
    assert first.verdict is sk.Verdict.PASS and second.verdict is sk.Verdict.DROP
