"""``skmsg proxy --udp`` under real DNS load: dnslib servers behind the command
with the example policy, dnspython resolving 1,000 names from 16 threads, each
query from a fresh source port. Every query must be answered, correctly."""

from __future__ import annotations

import re

from bench._dns_peers import ask, dns_servers, names, proxy_command

QUERIES = 1000
THREADS = 16


def test_the_servers_alone_answer_every_query() -> None:
    """The peers themselves lose nothing: the baseline the proxy is held to."""
    with dns_servers() as (internal, public):
        targets = {"internal": ("127.0.0.1", internal), "public": ("127.0.0.1", public)}
        got = ask(targets, names(QUERIES), threads=THREADS)
    assert got.unanswered == () and got.answered == QUERIES


def test_every_query_through_the_proxy_is_answered() -> None:
    with dns_servers() as (internal, public), proxy_command(internal, public) as (proc, port):
        targets = {"internal": ("127.0.0.1", port), "public": ("127.0.0.1", port)}
        got = ask(targets, names(QUERIES), threads=THREADS)
    err = proc.stderr_text
    assert got.unanswered == (), (got.unanswered[:10], err[-2000:])
    assert got.answered == QUERIES
    assert "Traceback" not in err
    # the final counters: every query judged and redirected, half to each backend
    assert re.search(rf"all clients +{QUERIES:,} +[\d,]+ +0 +0 +{QUERIES:,} ", err), err
    assert re.search(r"errors: policy 0, parse 0, backend connect 0, redirect 0\b", err), err


def test_more_fresh_clients_than_max_clients_are_all_answered() -> None:
    """Four times --max-clients of fresh source ports: answered sessions give
    their sockets to new clients, and no query goes unanswered."""
    with dns_servers() as (internal, public), \
            proxy_command(internal, public, "--max-clients", "64") as (proc, port):
        targets = {"internal": ("127.0.0.1", port), "public": ("127.0.0.1", port)}
        got = ask(targets, names(256), threads=THREADS)
    err = proc.stderr_text
    assert got.unanswered == (), (got.unanswered[:10], err[-2000:])
    assert re.search(r"errors: policy 0, parse 0, backend connect 0, redirect 0\b", err), err
