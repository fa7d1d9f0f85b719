"""The outer TLS peers of ``bench_proxy_tls``, run as a child process: a client
and a backend, both Python's ``ssl`` (OpenSSL) on blocking sockets.

Usage (``bench_proxy_tls`` starts it; nothing else should)::

    python bench/_tls_peers.py CERT KEY

It listens for the backend on ``127.0.0.1`` at a free port, prints
``backend PORT``, then reads one command per line from stdin and answers each
with one line on stdout:

- ``open NAME PORT MODE``: connect a TLS client (trusting ``CERT``, name
  ``127.0.0.1``) to ``127.0.0.1:PORT`` (the proxy under test) and send the
  8-byte message ``MODE`` (``bulk`` or ``echo``, length-prefixed) that tells
  the backend connection behind it what to do; answers ``ok``.
- ``bulk NAME NBYTES CHECK``: send ``NBYTES`` (a multiple of 64 KiB) as
  length-prefixed 64 KiB messages on ``NAME`` and wait until the backend has
  read them all; answers ``done``, or with ``CHECK`` = 1 ``done ok`` /
  ``done BAD`` as the SHA-256 of what the backend read matches what was sent.
- ``echo NAME COUNT``: ``COUNT`` round trips of a 200-byte length-prefixed
  message on ``NAME``, each reply read whole and checked; answers ``done``.
- ``quit``: close everything and exit.

The backend is a thread per connection: a ``bulk`` connection counts (and on
request hashes) what it reads, an ``echo`` one writes each 200-byte message
back. OpenSSL releases the GIL while it works, so client and backend run side
by side on the machine's cores, outside the process being measured.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import sys
import threading

MSG = 65536  #: bulk message size on the wire, prefix included
SMALL = 200  #: echo message size on the wire, prefix included
_LEN = struct.Struct(">I")


def _recv_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


class Backend:
    """The TLS backend: one thread per connection, told its mode by its first message."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cond = threading.Condition()
        self.received = 0  # bulk bytes read since the last reset
        self.hasher: hashlib._Hash | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            sock = self.ctx.wrap_socket(raw, server_side=True)
            mode = _recv_exactly(sock, 8)[4:]
            if mode == b"bulk":
                buf = bytearray(1 << 18)
                view = memoryview(buf)
                while n := sock.recv_into(view):
                    if self.hasher is not None:
                        self.hasher.update(view[:n])
                    with self.cond:
                        self.received += n
                        self.cond.notify_all()
            else:
                while True:
                    msg = _recv_exactly(sock, SMALL)
                    sock.sendall(msg)
        except (OSError, EOFError):
            return


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    sctx.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    cctx = ssl.create_default_context(cafile=cert)
    backend = Backend(sctx)
    clients: dict[str, ssl.SSLSocket] = {}
    payload = bytes(range(256)) * ((MSG - 4) // 256) + bytes(range((MSG - 4) % 256))
    message = _LEN.pack(MSG - 4) + payload
    small = _LEN.pack(SMALL - 4) + bytes(range(SMALL - 4))
    print(f"backend {backend.port}", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "open":
            name, port, mode = args
            raw = socket.create_connection(("127.0.0.1", int(port)))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = cctx.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(_LEN.pack(4) + mode.encode())
            clients[name] = sock
            print("ok", flush=True)
        elif cmd == "bulk":
            name, nbytes, check = args[0], int(args[1]), args[2] == "1"
            sock = clients[name]
            with backend.cond:
                backend.received = 0
                backend.hasher = hashlib.sha256() if check else None
            for _ in range(nbytes // MSG):
                sock.sendall(message)
            with backend.cond:
                backend.cond.wait_for(lambda n=nbytes: backend.received >= n)
                got = backend.received
                hasher, backend.hasher = backend.hasher, None
            if not check:
                print("done", flush=True)
            else:
                sent = hashlib.sha256()
                for _ in range(nbytes // MSG):
                    sent.update(message)
                ok = got == nbytes and hasher is not None and hasher.digest() == sent.digest()
                print("done ok" if ok else "done BAD", flush=True)
        elif cmd == "echo":
            name, count = args[0], int(args[1])
            sock = clients[name]
            for _ in range(count):
                sock.sendall(small)
                if _recv_exactly(sock, SMALL) != small:
                    print("done BAD", flush=True)
                    break
            else:
                print("done", flush=True)
        elif cmd == "quit":
            break
    for sock in clients.values():
        sock.close()


if __name__ == "__main__":
    main()
