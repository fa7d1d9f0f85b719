"""The ``skmsg`` command line: help, bad inputs (exit 2, one line, no traceback),
``--demo``, and Ctrl-C, through ``main()`` in process and as a subprocess."""

from __future__ import annotations

import gc
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import weakref

import pytest
import trio
import trio.testing

from skmsg import main
from skmsg._demo import DEMO_PAYLOADS
from skmsg._main import GC_VALVE, _collect_garbage, _tune_gc

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 20


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``: it must exit 2 with one line on stderr, no traceback; return it."""
    code, _out, err = run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "skmsg", *args]


# -- help -----------------------------------------------------------------------------------


def test_help_names_the_proxy_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    assert "proxy" in out
    assert "skmsg proxy --demo" in out


def test_proxy_help_documents_every_option_and_the_policy_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(["proxy", "--help"], capsys)
    assert code == 0
    for option in ("--listen HOST:PORT", "--backend HOST:PORT", "--parser",
                   "--policy FILE", "--stats-interval SECONDS", "--demo", "--max-clients",
                   "--policy-budget SECONDS", "--connect-timeout SECONDS",
                   "--handshake-timeout SECONDS", "--idle-timeout SECONDS",
                   "--write-timeout SECONDS", "--health-interval SECONDS",
                   "--max-message-size BYTES"):
        assert option in out
    for word in ("length-prefixed", "line", "http", "verdict(skb, backends)", "parse(skb)",
                 "sk_redirect_map", "SK_DROP", "round-robin", "embedded echo", "Ctrl-C",
                 "status 2", "sys.exit()", "runs longer than --policy-budget",
                 "backends.up(i)", "load balancing, health and timeouts", "docs/proxy.md",
                 "413 Payload Too Large", "(default 300)", "(default 30)", "(default 5)",
                 "(default 10)", "(default 1M)",
                 "SIGHUP reloads the --policy file"):
        assert word in " ".join(out.split())  # wherever argparse wraps the lines


def test_no_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "required: COMMAND" in refused([], capsys)


# -- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--listen", "localhost"], "'localhost' is not HOST:PORT"),
        (["--listen", "127.0.0.1:http"], "'127.0.0.1:http' is not HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "port must be 0-65535"),
        (["--backend", "127.0.0.1:0"], "'127.0.0.1:0': port must be 1-65535"),
        (["--backend", ":9000"], "':9000' is not HOST:PORT"),
        (["--backend", "::1:9000"], "write an IPv6 address as [ADDR]:PORT"),
        (["--parser", "xml"], "invalid choice: 'xml'"),
        (["--stats-interval", "-1"], "'-1' is not a number of seconds"),
        (["--max-clients", "0"], "'0' is not a positive integer"),
        (["--policy-budget", "0"], "'0' is not a number of seconds > 0"),
        (["--policy-budget", "-0.5"], "'-0.5' is not a number of seconds > 0"),
        (["--policy-budget", "nan"], "'nan' is not a number of seconds > 0"),
        (["--policy-budget", "inf"], "'inf' is not a number of seconds > 0"),
        (["--policy-budget", "soon"], "'soon' is not a number of seconds > 0"),
        (["--connect-timeout", "0"], "--connect-timeout: '0' is not a number of seconds > 0"),
        (["--idle-timeout", "-1"], "--idle-timeout: '-1' is not a number of seconds > 0"),
        (["--write-timeout", "nan"], "--write-timeout: 'nan' is not a number of seconds"),
        (["--handshake-timeout", "inf"], "'inf' is not a number of seconds > 0 and <= 86400"),
        (["--health-interval", "often"], "--health-interval: 'often' is not a number"),
        (["--max-message-size", "10"], "'10' is not between 16 bytes and 1024 MiB"),
        (["--max-message-size", "2G"], "'2G' is not between 16 bytes and 1024 MiB"),
        (["--max-message-size", "lots"], "'lots' is not a size in bytes"),
        (["--max-message-size", "1.5M"], "'1.5M' is not a size in bytes"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(["proxy", *argv], capsys)
    assert line.startswith("skmsg proxy: error: argument ")
    assert named in line


BAD_POLICIES = [
    ("missing", None, "no such file"),
    ("syntax", "def verdict(skb, backends)\n    return 1\n", "syntax error at line 1"),
    ("raises", "import skmsg_core\nx = 1 / 0\n",
     "raised ZeroDivisionError at line 2 while loading: division by zero"),
    ("no-verdict", "def parse(skb):\n    return 4\n", "defines no verdict(skb, backends)"),
    ("not-callable", "verdict = 3\n", "verdict is a int, not a function"),
    ("one-arg", "def verdict(skb):\n    return 1\n",
     "verdict(skb) must take two arguments: verdict(skb, backends)"),
    ("three-args", "def verdict(skb, backends, extra):\n    return 1\n",
     "must take two arguments"),
    ("async", "async def verdict(skb, backends):\n    return 1\n",
     "verdict must be a plain function"),
    ("generator", "def verdict(skb, backends):\n    yield 1\n", "cannot await or yield"),
    ("bad-parse", "def verdict(skb, backends):\n    return 1\n"
     "def parse(skb, more):\n    return 4\n", "parse: program parse(skb, more) must take "
     "exactly one argument"),
    ("async-parse", "def verdict(skb, backends):\n    return 1\n"
     "async def parse(skb):\n    return 4\n", "parse: program parse must be a plain function"),
]


@pytest.mark.parametrize(("source", "named"), [(s, n) for _, s, n in BAD_POLICIES],
                         ids=[i for i, _, _ in BAD_POLICIES])
def test_a_bad_policy_file_is_refused(
    source: str | None, named: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "route.py"
    if source is not None:
        path.write_text(source)
    line = refused(["proxy", "--policy", str(path)], capsys)
    assert line.startswith(f"skmsg proxy: error: --policy: policy file '{path}': ")
    assert named in line


def test_a_directory_as_policy_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "not a regular file" in refused(["proxy", "--policy", str(tmp_path)], capsys)


def test_a_taken_port_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(["proxy", "--listen", f"127.0.0.1:{port}"], capsys)
    assert line == (
        f"skmsg proxy: error: --listen 127.0.0.1:{port}: cannot listen: "
        "address already in use (EADDRINUSE)"
    )


def test_an_unreachable_backend_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        line = refused(["proxy", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:1",
                        "--backend", f"127.0.0.1:{port}"], capsys)
    assert line == (
        "skmsg proxy: error: --backend 127.0.0.1:1: unreachable: "
        "connection refused (ECONNREFUSED)"
    )


def test_bad_input_from_the_installed_command_has_no_traceback(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "route.py"
    policy.write_text("def verdict(skb):\n    return 1\n")
    skmsg = pathlib.Path(sys.executable).with_name("skmsg")  # the console script
    assert skmsg.exists()
    done = subprocess.run([str(skmsg), "proxy", "--policy", str(policy)], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"skmsg proxy: error: --policy: policy file '{policy}': "
        "verdict(skb) must take two arguments: verdict(skb, backends)\n"
    )


# -- running ------------------------------------------------------------------------------


def test_demo_exits_0_and_prints_the_replies() -> None:
    done = subprocess.run(command("proxy", "--demo"), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^skmsg proxy: listening on 127\.0\.0\.1:\d+$", out, re.M)
    assert "(embedded echo)" in out
    for i, payload in enumerate(DEMO_PAYLOADS):
        assert f"demo: sent {payload!r}  ->  reply {b'[backend %d] ' % (i % 2) + payload!r}" in out
    assert done.stderr.count("all clients") == 1  # only the final counters: not a tty
    assert "Traceback" not in done.stderr


def test_demo_with_the_example_policy_shows_a_drop() -> None:
    done = subprocess.run(
        command("proxy", "--demo", "--policy", str(ROOT / "examples" / "route.py")),
        capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "demo: sent b'hello'  ->  reply b'[backend 0] hello'" in done.stdout
    assert "demo: sent b'zebra'  ->  reply b'[backend 1] zebra'" in done.stdout
    assert "demo: sent b'!secret'  ->  dropped by the policy" in done.stdout
    assert re.search(r"all clients\s+4\s+\d+\s+0\s+1\s+3\s", done.stderr)


async def test_sigint_shuts_down_cleanly_with_final_counters() -> None:
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(lambda task_status: trio.run_process(
            command("proxy", "--listen", "127.0.0.1:0", "--stats-interval", "0.05"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, task_status=task_status,
        ))
        out, err = Pipe(proc.stdout), Pipe(proc.stderr)
        with trio.fail_after(TIMEOUT):
            line = await out.until(rb"listening on 127\.0\.0\.1:(\d+)\n")
            port = int(re.search(rb":(\d+)\n", line).group(1))  # type: ignore[union-attr]
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"\x00\x00\x00\x02hi")
            assert await client.receive_some() == b"\x00\x00\x00\x0e[backend 0] hi"
            await err.until(rb"all clients +1 ")  # the live counters saw it
            proc.send_signal(signal.SIGINT)
            rest = await err.until_eof()
            assert await client.receive_some() == b""  # the proxy closed the client
            await client.aclose()
            assert await proc.wait() == 0
    assert b"SIGINT: shutting down" in rest
    assert b"Traceback" not in rest
    tail = rest[rest.index(b"SIGINT"):]
    assert re.search(rb"clients 0 open, 1 total", tail)
    assert re.search(rb"all clients +1 +6 +0 +0 +1 ", tail)


class Pipe:
    """Reads a subprocess pipe until a pattern shows up."""

    def __init__(self, stream: trio.abc.ReceiveStream | None) -> None:
        assert stream is not None
        self.stream = stream
        self.data = b""

    async def until(self, pattern: bytes) -> bytes:
        while (m := re.search(pattern, self.data)) is None:
            chunk = await self.stream.receive_some()
            assert chunk, f"EOF before {pattern!r}: {self.data!r}"
            self.data += chunk
        return self.data[: m.end()]

    async def until_eof(self) -> bytes:
        while chunk := await self.stream.receive_some():
            self.data += chunk
        return self.data


def test_example_policy_file_loads() -> None:
    from skmsg import Policy

    path = ROOT / "examples" / "route.py"
    policy = Policy.from_file(path)
    assert (policy.name, policy.parse) == (str(path), None)


def test_the_command_collects_cycles_on_a_clock_not_on_allocations() -> None:
    """Tuned, the collector's own trigger sits at the safety valve and start-up
    is frozen; restoring puts both back."""
    saved = gc.get_threshold()
    frozen = gc.get_freeze_count()
    restore = _tune_gc()
    try:
        assert gc.get_threshold() == (GC_VALVE, saved[1], saved[2])
        assert gc.get_freeze_count() > frozen
    finally:
        restore()
    assert gc.get_threshold() == saved
    assert gc.get_freeze_count() == 0


async def test_the_clock_frees_a_cycle_and_lets_python_choose_the_generation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each tick runs one collection, of the generation Python's own trigger
    would choose (with ``threshold1`` = 2, the middle one at every fourth);
    a cycle made between two ticks is gone after the next, and nothing is
    collected between ticks."""
    class Node:
        other: object = None

    generations: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    saved = gc.get_threshold()
    gc.collect()  # every generation's count from zero
    gc.set_threshold(10**9, 2, 100)  # only the clock may find the cycle
    freed = trio.Event()
    a, b = Node(), Node()
    a.other, b.other = b, a
    weakref.finalize(a, freed.set)
    del a, b
    gc.callbacks.append(record)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect_garbage, 1.0)
            await trio.sleep(0.5)
            assert not freed.is_set() and generations == []
            await trio.sleep(1.0)
            assert freed.is_set() and generations == [0]
            await trio.sleep(7.0)
            nursery.cancel_scope.cancel()
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*saved)
    assert generations == [0, 0, 0, 1, 0, 0, 0, 1]
    assert gc.get_threshold() == saved
