"""The floor of ``bench_proxy``: a bare trio relay, a proxy that does nothing but relay.

Run as ``python -m bench._relay PORT``: it listens on 127.0.0.1 (a free port,
printed on stdout) and, for each client, connects to ``127.0.0.1:PORT`` and
copies bytes both ways until each side ends: ``trio.serve_listeners``, one
trio socket connected straight to the address (no name lookup, no happy
eyeballs) and two copying tasks per client. No framing, no program, no map,
no session, no counters. The collector is tuned as the
``skmsg`` command tunes it (start-up frozen, cycles looked for on a clock),
so the two differ only in what they do per client.
"""

from __future__ import annotations

import sys

import trio

from skmsg._main import _collect_garbage, _tune_gc

HOST = "127.0.0.1"


async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _serve(port: int) -> None:
    async def relay(client: trio.SocketStream) -> None:
        sock = trio.socket.socket()
        try:
            await sock.connect((HOST, port))
        except OSError:
            sock.close()
            await client.aclose()
            return
        backend = trio.SocketStream(sock)
        async with client, backend, trio.open_nursery() as nursery:
            nursery.start_soon(_copy, client, backend)
            nursery.start_soon(_copy, backend, client)

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    print(listeners[0].socket.getsockname()[1], flush=True)
    _tune_gc()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect_garbage)
        await trio.serve_listeners(relay, listeners)


if __name__ == "__main__":
    trio.run(_serve, int(sys.argv[1]))
