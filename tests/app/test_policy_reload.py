"""``skmsg proxy`` reloads its ``--policy`` file on SIGHUP: the real command in a
subprocess, real trio backends, a client connected across the reloads, the
signal sent with ``os.kill``. A file that fails to load or verify keeps the
running policy; the log, the counters and ``/metrics`` say which policy
generation judged each message."""

from __future__ import annotations

import os
import pathlib
import signal
import textwrap
import urllib.request

import trio
from prometheus_client.parser import text_string_to_metric_families

from ._backends import Backend, Client, proxy_running, serving
from .test_proxy_load import SKMSG, TIMEOUT, Lines

ROUTE_TO = """
import skmsg_core as sk

def verdict(skb, backends):
    return sk.sk_redirect_map(skb, backends, {index}, 0)
"""

BROKEN = {
    "a syntax error": ("def verdict(skb, backends)\n    return 0\n", "syntax error at line 1"),
    "a verdict that awaits": (
        "async def verdict(skb, backends):\n    return 0\n", "must be a plain function"),
    "no verdict": ("def judge(skb, backends):\n    return 0\n", "defines no verdict"),
    "a parse of its own": (
        ROUTE_TO.format(index=0) + "\ndef parse(skb):\n    return skb.len\n",
        "framing of connected clients cannot change"),
    "no file": (None, "no such file"),
}


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    keep = {"generation", "reason"}
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k in keep))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_sighup_reloads_the_policy_for_connected_clients_and_keeps_it_on_a_bad_file(
    tmp_path: pathlib.Path,
) -> None:
    a, b = Backend("a"), Backend("b")
    path = tmp_path / "route.py"
    path.write_text(textwrap.dedent(ROUTE_TO.format(index=0)))
    async with serving(a, b):
        proc = await trio.lowlevel.open_process(
            [str(SKMSG), "proxy", "--listen", "127.0.0.1:0", "--backend", str(a.address),
             "--backend", str(b.address), "--policy", str(path), "--stats-interval", "0",
             "--metrics", "127.0.0.1:0"],
            stdout=-1, stderr=-1,
        )
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            with trio.fail_after(TIMEOUT):
                port = int((await out.until(r"listening on 127\.0\.0\.1:(\d+)"))[1])
                metrics = (await out.until(r"metrics on (http://\S+/metrics)"))[1]
                client = Client(await trio.open_tcp_stream("127.0.0.1", port))
                assert await client.round_trip(b"one") == b"[a] one"

                # a new file, the same connection: judged by generation 2 from now on
                path.write_text(textwrap.dedent(ROUTE_TO.format(index=1)))
                os.kill(proc.pid, signal.SIGHUP)
                await err.until(r"event=policy_reloaded policy=\S+ generation=2")
                await err.until(r"SIGHUP: policy \S+ reloaded \(generation 2\)")
                assert await client.round_trip(b"two") == b"[b] two"
                assert await client.round_trip(b"three") == b"[b] three"

                # files that fail: each refused, named, generation 2 kept
                for n, (what, (source, why)) in enumerate(BROKEN.items(), start=1):
                    if source is None:
                        path.unlink()
                    else:
                        path.write_text(source)
                    os.kill(proc.pid, signal.SIGHUP)
                    told = await err.until(r"SIGHUP: policy not reloaded, generation 2 kept.*\n")
                    failed = [text for text in err.text[:told.end()].splitlines()
                              if "event=policy_reload_failed" in text]
                    err.text = err.text[told.end():]  # the next one's lines are new
                    assert len(failed) == 1, (what, failed)
                    assert why in failed[0], (what, failed[0])
                    assert " kept=" in failed[0] and " generation=2" in failed[0], failed[0]
                    assert await client.round_trip(b"still %d" % n) == b"[b] still %d" % n

                got = await trio.to_thread.run_sync(samples, metrics)
                assert got[("skmsg_proxy_policy_generation", ())] == 2
                assert got[("skmsg_proxy_policy_reloads_total", ())] == 1
                assert got[("skmsg_proxy_errors_total", (("reason", "policy_reload"),))] == len(
                    BROKEN)
                by_generation = {k[1][0][1]: v for k, v in got.items()
                                 if k[0] == "skmsg_proxy_policy_verdicts_total"}
                assert by_generation == {"1": 1, "2": 2 + len(BROKEN)}
                assert a.received == [b"one"]
                assert b.received == [b"two", b"three"] + [
                    b"still %d" % n for n in range(1, len(BROKEN) + 1)]

                await client.aclose()
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
                text = await err.rest()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "Traceback" not in text
    assert (f"policy generation 2 (reloads 1, failed {len(BROKEN)}); verdicts by "
            f"generation: 1: 1, 2: {2 + len(BROKEN)}") in text


async def test_without_a_policy_file_a_reload_keeps_round_robin() -> None:
    async with proxy_running() as proxy:
        assert not proxy.reload_policy()
        s = proxy.statistics()
        assert (s.policy_generation, s.policy_reloads, s.policy_reload_errors) == (1, 0, 1)
        client = await Client.connect(proxy)
        assert (await client.round_trip(b"x")).endswith(b"] x")
        assert proxy.statistics().policy_verdicts == {"1": 1}
        await client.aclose()
