"""A plain blocking ``ssl`` peer, run as a subprocess by the hand-off tests.

Run with ``OPENSSL_CONF`` naming a config that restricts the TLS 1.3 cipher
suites: Python 3.11 has no ``set_ciphersuites``, and OpenSSL reads the config
once per process, so a forced suite needs its own process.

Usage: ``python _ssl_peer.py '<json config>'``. As a server it prints
``port <n>`` on stdout and accepts one connection; as a client it connects to
``port``. Either way it echoes every application byte until the other side's
close_notify, answers with its own, and prints one JSON line describing the
session (version, cipher, ALPN, SNI seen, whether a ticket arrived).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys


def main() -> None:
    cfg = json.loads(sys.argv[1])
    server = cfg["role"] == "server"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion[cfg["version"]]
    if cfg.get("ciphers"):
        ctx.set_ciphers(cfg["ciphers"])
    ctx.set_alpn_protocols(cfg["alpn"])
    seen: dict[str, object] = {}
    if server:
        ctx.load_cert_chain(cfg["certfile"])
        ctx.num_tickets = cfg["tickets"]

        def sni(obj: object, name: str | None, c: ssl.SSLContext) -> None:
            seen["sni"] = name

        ctx.sni_callback = sni
        lsock = socket.create_server(("127.0.0.1", 0))
        print("port", lsock.getsockname()[1], flush=True)
        raw, _ = lsock.accept()
        conn = ctx.wrap_socket(raw, server_side=True)
    else:
        ctx.load_verify_locations(cfg["cafile"])
        raw = socket.create_connection(("127.0.0.1", cfg["port"]))
        conn = ctx.wrap_socket(raw, server_hostname=cfg["server_hostname"])
    echoed = 0
    while True:
        data = conn.recv(65536)
        if not data:  # the other side's close_notify
            break
        conn.sendall(data)
        echoed += len(data)
    seen.update(
        version=conn.version(),
        cipher=conn.cipher()[0],
        alpn=conn.selected_alpn_protocol(),
        echoed=echoed,
        has_ticket=None if server else bool(conn.session and conn.session.has_ticket),
    )
    conn.unwrap()
    conn.close()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
