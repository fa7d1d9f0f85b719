"""L7 policy on TLS end to end (examples/tls_l7_policy.py): an HTTPS server whose
SK_SKB verdict drops requests for /admin after decryption, and a client whose
SK_MSG verdict blocks a secret before encryption, both against unmodified
OpenSSL peers (Python's ssl through trio.SSLStream)."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
from types import ModuleType

import pytest
import trio

import skmsg_tcp
from skmsg._tls import server_context, write_self_signed
from skmsg_core.runtime import open_runtime

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tls_l7_policy.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tls_l7_policy", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load()


@pytest.fixture(scope="module")
def cert() -> tuple[str, str]:
    return write_self_signed(["localhost"])


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 5, 7, 11])
async def test_https_server_drops_admin_however_the_client_cuts_records(
    cert: tuple[str, str], cut: int
) -> None:
    async with open_runtime(), trio.open_nursery() as nursery:
        server = example.HttpsServer(server_context(*cert))
        listeners = await skmsg_tcp.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, server.handle, listeners)
        ok = await example.https_get(port, b"/index.html", cert[0], cut=cut)
        assert ok.startswith(b"HTTP/1.1 200 OK")
        assert ok.endswith(b"served GET /index.html HTTP/1.1\n")
        bad = await example.https_get(port, b"/ADMIN/users", cert[0], cut=cut)
        assert bad.startswith(b"HTTP/1.1 403 Forbidden")
        assert server.served == [b"GET /index.html HTTP/1.1"]  # the app never saw /admin
        assert server.guard.matches_total == 1
        nursery.cancel_scope.cancel()


async def test_client_egress_policy_blocks_the_secret_before_encryption(
    cert: tuple[str, str],
) -> None:
    async with open_runtime(), trio.open_nursery() as nursery:
        received, done = bytearray(), trio.Event()
        port = await nursery.start(
            example.openssl_sink_server, server_context(*cert), received, done
        )
        outcome = await example.policed_client(
            port, cert[0], [b"fine", b"SECRET in one", b"more"]
        )
        await done.wait()
        assert outcome == [
            "send_all(b'fine') -> sent",
            "send_all(b'SECRET in one') -> EACCES",
            "send_all(b'more') -> EACCES",  # fail closed: the DROP sticks
        ]
        assert bytes(received) == b"fine"
        nursery.cancel_scope.cancel()


def test_the_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "GET / (records of any bytes) -> HTTP/1.1 200 OK" in out
    assert "GET /admin (records of any bytes) -> HTTP/1.1 403 Forbidden" in out
    assert "GET /admin (records of 5 bytes) -> HTTP/1.1 403 Forbidden" in out
    assert "the application served: [b'GET / HTTP/1.1']" in out
    assert "send_all(b'RET plans') -> EACCES" in out
    assert "the OpenSSL server received: b'hello over TLSmy SEC'" in out
