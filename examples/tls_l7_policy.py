"""L7 policy on TLS connections, both ways, against unmodified OpenSSL peers.

1. An HTTPS server on skmsg: each accepted stream enters the ``ingress``
   SockHash (SK_SKB stream verdict), then ``start_tls`` takes over its record
   layer. The verdict runs on every *decrypted* record and drops the request
   as soon as the stream mentions ``/admin`` (however the client cut it into
   records: :class:`skmsg_tls.PatternGuard` keeps per-socket state), so the
   application never sees it; the guard's ``on_match`` tells the handler,
   which answers 403. Everything else gets 200.
2. A client on skmsg: its stream enters the ``egress`` SockMap (SK_MSG
   verdict), then ``start_tls`` (client side). The verdict runs on every
   record's plaintext *before* it is sealed: a send carrying ``SECRET`` fails
   with ``PermissionError`` (EACCES) and the secret never leaves the host.

The peers are Python's ``ssl`` (OpenSSL) through ``trio.SSLStream``: an
HTTPS client for (1), a TLS server for (2). Run: ``python
examples/tls_l7_policy.py``.
"""

from __future__ import annotations

import errno
import ssl

import trio

import skmsg_core as sk
import skmsg_tcp
import skmsg_tls
from skmsg._tls import client_context, server_context, write_self_signed
from skmsg_core.runtime import open_runtime

FORBIDDEN_PATH = b"/admin"
SECRET = b"SECRET"


# -- 1. the HTTPS server: ingress policy after decryption ------------------------------------


class HttpsServer:
    """An HTTPS/1.1 server whose SK_SKB verdict drops requests for ``/admin``."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.ingress = sk.SockHash(max_entries=1024)
        self.blocked: dict[int, trio.Event] = {}
        self.guard = skmsg_tls.PatternGuard(
            FORBIDDEN_PATH, ignore_case=True, on_match=self._on_match
        )
        self.ingress.attach(self.verdict, sk.SK_SKB_STREAM_VERDICT)
        #: What the application saw: the request lines it served.
        self.served: list[bytes] = []

    def verdict(self, skb: sk.SkBuff) -> int:
        """The SK_SKB program: runs on each decrypted record."""
        return sk.SK_DROP if self.guard.matches(skb) else sk.SK_PASS

    def _on_match(self, s: sk.Sock) -> None:
        event = self.blocked.get(s.cookie)
        if event is not None:
            event.set()

    async def handle(self, stream: skmsg_tcp.SkStream) -> None:
        cookie = stream.sk.cookie
        self.blocked[cookie] = blocked = trio.Event()
        try:
            self.ingress.update(cookie, stream)  # the kernel's order: the map, then TLS
            await skmsg_tls.start_tls(stream, self.ctx, server_side=True)
            head = bytearray()
            async with trio.open_nursery() as nursery:

                async def read_request() -> None:
                    while b"\r\n\r\n" not in head:
                        chunk = await stream.receive_some()
                        if not chunk:
                            break
                        head.extend(chunk)
                    nursery.cancel_scope.cancel()

                async def wait_blocked() -> None:
                    await blocked.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(read_request)
                nursery.start_soon(wait_blocked)
            if blocked.is_set():
                status, body = b"403 Forbidden", b"forbidden by policy\n"
            else:
                line = bytes(head).split(b"\r\n", 1)[0]
                self.served.append(line)
                status, body = b"200 OK", b"served " + line + b"\n"
            await stream.send_all(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body)
                + b"Connection: close\r\n\r\n" + body
            )
            await stream.send_eof()  # close_notify, then FIN
            with trio.move_on_after(2):  # lingering close: let the client finish first
                while await stream.receive_some():
                    pass
        except (trio.BrokenResourceError, ssl.SSLError, OSError):
            pass
        finally:
            self.blocked.pop(cookie, None)
            await stream.aclose()


async def https_get(port: int, path: bytes, cafile: str, *, cut: int = 0) -> bytes:
    """An unmodified OpenSSL client (``trio.SSLStream``): GET ``path``, return the
    response. ``cut`` > 0 sends the request in pieces of ``cut`` bytes, each its
    own TLS record."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(tcp, client_context(cafile), server_hostname="localhost")
    try:
        request = b"GET " + path + b" HTTP/1.1\r\nHost: localhost\r\n\r\n"
        step = cut or len(request)
        for i in range(0, len(request), step):
            await client.send_all(request[i : i + step])
        response = bytearray()
        while True:
            try:
                chunk = await client.receive_some()
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            response += chunk
        return bytes(response)
    finally:
        await trio.aclose_forcefully(client)


# -- 2. the client: egress policy before encryption -------------------------------------------


async def openssl_sink_server(
    ctx: ssl.SSLContext,
    received: bytearray,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[int],
) -> None:
    """An unmodified OpenSSL TLS server: keeps every byte it receives; ``done``
    is set when a connection ends."""

    async def handler(tcp: trio.SocketStream) -> None:
        server = trio.SSLStream(tcp, ctx, server_side=True)
        try:
            while chunk := await server.receive_some():
                received.extend(chunk)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(server)
            done.set()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def policed_client(port: int, cafile: str, sends: list[bytes]) -> list[str]:
    """Our client: SK_MSG egress policy, then TLS; returns what each send did."""
    guard = skmsg_tls.PatternGuard(SECRET)
    egress = sk.SockMap(max_entries=1)

    def no_secrets(msg: sk.SkMsg) -> int:
        return sk.SK_DROP if guard.matches(msg) else sk.SK_PASS

    egress.attach(no_secrets, sk.SK_MSG_VERDICT)
    stream = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
    outcome: list[str] = []
    try:
        egress.update(0, stream)  # the kernel's order: the map, then TLS
        await skmsg_tls.start_tls(stream, client_context(cafile), server_hostname="localhost")
        for data in sends:
            try:
                await stream.send_all(data)
                outcome.append(f"send_all({data!r}) -> sent")
            except PermissionError as exc:
                assert exc.errno == errno.EACCES
                outcome.append(f"send_all({data!r}) -> EACCES")
        await stream.send_eof()
    finally:
        await stream.aclose()
        egress.close()
    return outcome


async def main() -> None:
    cert, key = write_self_signed(["localhost"])
    async with open_runtime(), trio.open_nursery() as nursery:
        server = HttpsServer(server_context(cert, key))
        listeners = await skmsg_tcp.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, server.handle, listeners)
        for path, cut in ((b"/", 0), (b"/admin", 0), (b"/adm" + b"in", 5)):
            status = (await https_get(port, path, cert, cut=cut)).split(b"\r\n", 1)[0]
            print(f"GET {path.decode()} (records of {cut or 'any'} bytes) -> {status.decode()}")
        print(f"the application served: {server.served}")

        received, done = bytearray(), trio.Event()
        sink_port = await nursery.start(
            openssl_sink_server, server_context(cert, key), received, done
        )
        for line in await policed_client(
            sink_port, cert, [b"hello over TLS", b"my SEC", b"RET plans"]
        ):
            print(line)
        await done.wait()
        print(f"the OpenSSL server received: {bytes(received)!r}")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
