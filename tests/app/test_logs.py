"""``skmsg proxy``'s log lines: one event per line, ``key=value``; ``-v`` shows each
connection's life. Checked on the records (caplog) and on the real command's
stderr."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys

import pytest
import trio

from skmsg import Address, Proxy, ProxyConfig, run_proxy
from skmsg._events import EventFormatter
from skmsg_core.runtime import RateLimitedLog, format_event, log_event

TIMEOUT = 10
PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)(?: |$)')


def pairs(line: str) -> dict[str, str]:
    """Split a ``key=value`` line back into its pairs; the whole line must be pairs."""
    out: dict[str, str] = {}
    pos = 0
    for m in PAIR.finditer(line):
        assert m.start() == pos, f"not key=value at {line[pos:]!r} in {line!r}"
        raw = m.group(2)
        out[m.group(1)] = json.loads(raw) if raw.startswith('"') else raw
        pos = m.end()
    assert pos == len(line), f"left over {line[pos:]!r} in {line!r}"
    return out


@pytest.mark.parametrize(("value", "written"), [
    ("127.0.0.1:5555", "127.0.0.1:5555"),
    ("[::1]:53", "[::1]:53"),
    ("connection refused (ECONNREFUSED)", '"connection refused (ECONNREFUSED)"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a=b", '"a=b"'),
    ("", '""'),
    ("line\nbreak", '"line\\nbreak"'),
    ("naïve", '"naïve"'),
    (None, "-"),
    (True, "true"),
    (0.1234567, "0.123457"),
    (42, "42"),
])
def test_a_value_is_bare_or_json_quoted(value: object, written: str) -> None:
    line = format_event("x", {"k": value})
    assert line == f"event=x k={written}"
    assert pairs(line)["k"] == (written if not written.startswith('"') else value)


def test_an_event_record_carries_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("skmsg.test")
    caplog.set_level(logging.INFO, "skmsg.test")
    log_event(logger, logging.INFO, "client_closed", client="127.0.0.1:5555", reason="idle")
    log_event(logger, logging.DEBUG, "not_shown", x=1)  # below the level: not even formatted
    (record,) = caplog.records
    assert record.getMessage() == "event=client_closed client=127.0.0.1:5555 reason=idle"
    assert record.event == "client_closed"  # type: ignore[attr-defined]
    assert record.fields == {"client": "127.0.0.1:5555", "reason": "idle"}  # type: ignore[attr-defined]


def test_a_rate_limited_event_counts_what_it_held_back(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.WARNING, "skmsg.test")
    limited = RateLimitedLog(logging.getLogger("skmsg.test"), interval=3600)
    for _ in range(3):
        limited.event("k", "client_error", client="a", error="ValueError: x")
    assert [r.getMessage() for r in caplog.records] == [
        'event=client_error client=a error="ValueError: x"']
    limited._last["k"] = (0.0, 2)  # the interval is over: the next line reports the two
    limited.event("k", "client_error", client="a", error="ValueError: x")
    assert caplog.records[-1].getMessage().endswith(" suppressed=2")


def test_the_formatter_writes_every_record_as_pairs() -> None:
    fmt = EventFormatter()
    rec = logging.LogRecord("skmsg", logging.INFO, __file__, 1, "%s",
                            (format_event("client_closed", {"client": "1.2.3.4:5"}),), None)
    rec.event = "client_closed"
    line = fmt.format(rec)
    assert re.fullmatch(r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=info "
                        r"event=client_closed client=1\.2\.3\.4:5", line), line
    plain = logging.LogRecord("skmsg_tls", logging.WARNING, __file__, 1, "odd %s = thing",
                              ("stuff",), None)
    assert pairs(fmt.format(plain))["msg"] == "odd stuff = thing"
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        with_exc = logging.LogRecord("skmsg", logging.ERROR, __file__, 1, "boom", (),
                                     sys.exc_info())
    line = fmt.format(with_exc)
    assert "\n" not in line and "Traceback" not in line
    assert pairs(line)["exc"] == "ValueError: bad\nthing"


# -- a connection's life, on the records ----------------------------------------------------


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def test_verbose_shows_each_connections_life(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "skmsg")
    async with trio.open_nursery() as nursery:
        proxy: Proxy = await nursery.start(run_proxy, ProxyConfig(listen=Address("127.0.0.1", 0)))
        addr = proxy.listen[0]
        client = await trio.open_tcp_stream(addr.host, addr.port)
        me = f"127.0.0.1:{client.socket.getsockname()[1]}"
        await client.send_all(frame(b"hello"))
        got = b""
        with trio.fail_after(TIMEOUT):
            while len(got) < 4 + len(b"[backend 0] hello"):
                got += await client.receive_some()
        await client.send_eof()
        with trio.fail_after(TIMEOUT):
            while await client.receive_some():
                pass
            await proxy.counters.wait_for(lambda: proxy.closed["done"] == 1)
        await client.aclose()
        nursery.cancel_scope.cancel()
    events = [pairs(r.getMessage()) for r in caplog.records if r.name == "skmsg"]
    mine = [e for e in events if e.get("client") == me]
    assert [e["event"] for e in mine] == ["client_accepted", "client_connected",
                                          "backend_connected", "client_closed"]
    accepted, connected, backend, closed = mine
    assert accepted["proto"] == "tcp"
    assert connected["userspace"] == "false"
    # one connection, to the one backend its one message was routed to, when it was
    assert (backend["backend"], backend["index"]) == (str(proxy.backends[0]), "0")
    assert closed["reason"] == "done" and closed["proto"] == "tcp"
    assert int(closed["bytes_in"]) == 4 + 5 and int(closed["bytes_out"]) == len(got)
    assert float(closed["seconds"]) >= 0


# -- through the real command ----------------------------------------------------------------


def test_the_commands_stderr_is_one_event_per_line_and_the_table() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "skmsg", "proxy", "-v", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on 127\.0\.0\.1:(\d+)$", line.strip())
    assert m, line
    with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=TIMEOUT) as c:
        me = f"127.0.0.1:{c.getsockname()[1]}"
        c.sendall(frame(b"ping") + b"\0\0\0\x05")  # and the start of a frame never finished
        got = b""
        while len(got) < 4 + len(b"[backend 0] ping"):
            got += c.recv(100)
        c.shutdown(socket.SHUT_WR)
        while c.recv(100):
            pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    logged, rest = [], []
    for text in err.splitlines():
        (logged if text.startswith("ts=") else rest).append(text)
    events = [pairs(text) for text in logged]  # every log line is key=value, whole
    assert all(e["level"] in ("info", "warning") for e in events)
    life = [e for e in events if e.get("client") == me]
    assert [e["event"] for e in life] == ["client_accepted", "client_connected",
                                          "backend_connected", "client_closed"], logged
    assert life[-1]["reason"] == "done" and life[-1]["bytes_in"] == "12"
    # the human-readable table is still there, after the signal line
    assert rest[0] == "skmsg proxy: SIGTERM: shutting down", rest
    assert rest[1].startswith("skmsg proxy 127.0.0.1:") and "clients 0 open, 1 total" in rest[1]
    assert re.match(r"all clients +1 +8 ", rest[3]), rest
