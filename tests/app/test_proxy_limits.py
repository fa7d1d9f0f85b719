"""``skmsg proxy``: one message size limit for every framing (``--max-message-size``),
and policy results that are no verdict, logged. Real loopback sockets, the
embedded echo backends or real trio backends."""

from __future__ import annotations

import contextlib
import logging
import pathlib
import textwrap

import pytest
import trio

from skmsg import _proxy as proxy_module
from skmsg._parsers import DEFAULT_MAX_MESSAGE
from skmsg_core.runtime import RateLimitedLog

from ._backends import TIMEOUT, Client, Metrics, frame, proxy_running


async def http_exchange(stream: trio.SocketStream, request: bytes) -> bytes:
    """Send ``request``; everything the proxy sends back until it closes."""
    async with trio.open_nursery() as nursery:
        async def send() -> None:
            # it may close before the body is all sent: that is the point
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(request)

        nursery.start_soon(send)
        got = b""
        with trio.fail_after(TIMEOUT):
            try:
                while data := await stream.receive_some():
                    got += data
            except trio.BrokenResourceError:
                pass
    return got


def post(body: bytes) -> bytes:
    return b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def test_an_http_body_over_the_old_receive_buffer_is_served_by_default() -> None:
    body = b"x" * (300 * 1024)  # over 208 KiB, under the default 1 MiB
    async with proxy_running(parser="http") as proxy:
        assert proxy.config.max_message_size == DEFAULT_MAX_MESSAGE
        addr = proxy.listen[0]
        stream = await trio.open_tcp_stream(addr.host, addr.port)
        await stream.send_all(post(body))
        got = b""
        with trio.fail_after(TIMEOUT):
            while not got.endswith(b"\n") or b"HTTP/1.1 200 OK" not in got:
                got += await stream.receive_some()
        assert b"[backend 0] POST /up HTTP/1.1 " + body in got
        await stream.aclose()
        assert proxy.statistics().too_large == 0


async def test_an_http_message_over_the_limit_is_answered_413_naming_it() -> None:
    async with proxy_running(parser="http", max_message_size=100_000) as proxy:
        addr = proxy.listen[0]
        big = await trio.open_tcp_stream(addr.host, addr.port)
        got = await http_exchange(big, post(b"y" * 200_000))
        assert got.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
        assert b"over the proxy's limit of 100000 bytes" in got
        assert b"Connection: close" in got
        await big.aclose()
        ok = await trio.open_tcp_stream(addr.host, addr.port)  # others are served
        await ok.send_all(post(b"z" * 99_000))
        got = b""
        with trio.fail_after(TIMEOUT):
            while b"HTTP/1.1 200 OK" not in got or not got.endswith(b"\n"):
                got += await ok.receive_some()
        await ok.aclose()
        s = proxy.statistics()
        assert (s.too_large, s.client_closed["too_large"], s.parse_errors) == (1, 1, 0)
        m = Metrics(proxy)
        assert m("skmsg_proxy_messages_too_large_total") == 1
        assert m("skmsg_proxy_clients_closed_total", reason="too_large") == 1


@pytest.mark.parametrize(
    ("parser", "wire"),
    [
        pytest.param("length-prefixed", (2_000_000).to_bytes(4, "big") + b"x" * 1000,
                     id="length-prefixed"),
        pytest.param("line", b"z" * 150_000, id="line"),
    ],
)
async def test_other_framings_close_a_client_over_the_limit_and_count_it(
    parser: str, wire: bytes, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from skmsg import _session

    monkeypatch.setattr(_session, "limited_log", RateLimitedLog(_session.log))
    caplog.set_level(logging.WARNING, logger="skmsg")
    async with proxy_running(parser=parser, max_message_size=100_000) as proxy:
        addr = proxy.listen[0]
        stream = await trio.open_tcp_stream(addr.host, addr.port)
        got = await http_exchange(stream, wire)
        assert got == b""  # a clear close, nothing else
        await stream.aclose()
        s = proxy.statistics()
        assert (s.too_large, s.client_closed["too_large"]) == (1, 1)
        assert "limit=100000 closed=client" in caplog.text
        assert "event=message_too_large client=" in caplog.text


NOT_VERDICTS = """
import skmsg_core as sk

def verdict(skb, backends):
    data = bytes(skb.data[4:])
    sk.sk_redirect_map(skb, backends, 0, 0)
    if data.startswith(b"none"):
        return None
    if data.startswith(b"str"):
        return "pass"
    if data.startswith(b"huge"):
        return 2**100
    if data.startswith(b"bool"):
        return True
    return sk.SK_PASS
"""


async def test_a_policy_result_that_is_no_verdict_is_dropped_counted_and_logged_by_type(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proxy_module, "limited_log", RateLimitedLog(proxy_module.log))
    caplog.set_level(logging.WARNING, logger="skmsg")
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(NOT_VERDICTS))
    async with proxy_running(policy=str(path)) as proxy:
        client = await Client.connect(proxy)
        for payload in (b"none", b"str", b"huge", b"bool", b"none again"):
            await client.send(payload)
        assert await client.round_trip(b"fine") == b"[backend 0] fine"  # the only reply
        s = proxy.statistics()
        assert (s.msgs, s.dropped, s.redirected, s.policy_errors) == (6, 5, 1, 5)
        m = Metrics(proxy)
        assert m("skmsg_proxy_errors_total", reason="policy") == 5
        assert m("skmsg_proxy_verdicts_total", verdict="drop") == 5
        events = [r.fields for r in caplog.records  # type: ignore[attr-defined]
                  if getattr(r, "event", None) == "policy_not_a_verdict"]
        assert len(events) == 4, events  # one per type; the second None is counted, not shown
        assert [e["type"] for e in events] == ["NoneType", "str", "int", "bool"]
        assert [e["value"] for e in events] == [
            "NoneType", "str 'pass'", "int 1267650600228229401496703205376", "bool True"]
        assert all(e["policy"] == str(path) and e["dropped"] == "message" for e in events)
        assert not any(r.exc_info for r in caplog.records)
        await client.aclose()


def test_the_frame_helper_is_length_prefixed() -> None:
    assert frame(b"ab") == b"\x00\x00\x00\x02ab"
