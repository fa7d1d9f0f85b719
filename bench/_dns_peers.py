"""Real DNS peers for load through ``skmsg proxy --udp``: dnslib servers, dnspython
clients asking from a fresh source port per query (as resolvers do), from
many threads, and the real command in front of the servers. Used by
``bench_proxy_udp.py`` and by ``tests/udp/test_udp_proxy_dns_load.py``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import dns.exception
import dns.message
import dns.query
import dns.rdatatype
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

ROOT = Path(__file__).resolve().parents[1]
POLICY = str(ROOT / "examples" / "dns_route.py")
INTERNAL_ADDRESS, PUBLIC_ADDRESS = "10.0.0.1", "192.0.2.7"
#: dnslib logs every request and reply by default; these peers log nothing.
QUIET = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-error,-data")


class FixedResolver(BaseResolver):  # type: ignore[misc]
    """Answers every question with one A record holding ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.address), ttl=60))
        return reply


@contextlib.contextmanager
def dns_servers() -> Iterator[tuple[int, int]]:
    """Two dnslib DNS servers on 127.0.0.1 (the internal one answering
    :data:`INTERNAL_ADDRESS`, the public one :data:`PUBLIC_ADDRESS`); yields
    their ports."""
    servers = [DNSServer(FixedResolver(a), address="127.0.0.1", port=0, logger=QUIET)
               for a in (INTERNAL_ADDRESS, PUBLIC_ADDRESS)]
    for s in servers:
        s.start_thread()
    try:
        yield servers[0].server.server_address[1], servers[1].server.server_address[1]
    finally:
        for s in servers:
            s.server.shutdown()
            s.server.server_close()


def names(n: int) -> list[str]:
    """``n`` names, every other one under corp.example (routed to backend 0)."""
    return [f"host{i}.corp.example" if i % 2 else f"www{i}.example.org" for i in range(n)]


def expected(name: str) -> str:
    return INTERNAL_ADDRESS if name.endswith("corp.example") else PUBLIC_ADDRESS


@attrs.frozen
class Outcome:
    """What ``ask`` saw: the answered count, and each query that got no
    answer (timeout) or a wrong one, with why."""

    answered: int
    unanswered: tuple[tuple[str, str], ...]


def ask(targets: dict[str, tuple[str, int]], queries: list[str], *, threads: int = 16,
        timeout: float = 5.0) -> Outcome:
    """Resolve every name in ``queries`` with ``dns.query.udp`` (a new socket, so a
    fresh source port, per query) from ``threads`` threads; ``targets`` maps
    "internal"/"public" to where a name of that kind is sent."""

    def one(name: str) -> str | None:
        where = targets["internal" if name.endswith("corp.example") else "public"]
        q = dns.message.make_query(name, dns.rdatatype.A)
        try:
            r = dns.query.udp(q, where[0], port=where[1], timeout=timeout)
        except dns.exception.Timeout:
            return "no answer"
        except dns.query.BadResponse:
            return "an answer to another question"
        got = [rd.address for rrset in r.answer for rd in rrset]
        return None if got == [expected(name)] else f"wrong answer {got}"

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, queries))
    bad = tuple((name, why) for name, why in zip(queries, results, strict=True) if why)
    return Outcome(len(queries) - len(bad), bad)


@contextlib.contextmanager
def proxy_command(internal: int, public: int, *args: str) -> Iterator[tuple[Any, int]]:
    """``skmsg proxy --udp`` (the real command, in a subprocess) with the example
    DNS policy in front of the two servers; yields the process and its port.
    SIGTERM at the end; its stderr is kept on ``proc.stderr_text``."""
    argv = [sys.executable, "-m", "skmsg", "proxy", "--udp", "--listen", "127.0.0.1:0",
            "--policy", POLICY, "--backend", f"127.0.0.1:{internal}",
            "--backend", f"127.0.0.1:{public}", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)$", line.strip())
        if m is None:
            proc.kill()
            raise RuntimeError(f"skmsg proxy did not start: {line!r} {proc.communicate()}")
        yield proc, int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.terminate()
        _, err = proc.communicate(timeout=60)
        proc.stderr_text = err  # type: ignore[attr-defined]
