"""Many-client load for ``bench_proxy``: a fast echo backend, and clients, both on ``selectors``.

Nothing here is trio: the backend and the clients must cost as little as can
be, so that what a figure shows is the path between them (the proxy, or
nothing). Both are length-prefixed (a 4-byte big-endian length, then the
payload), one message in flight per client.

- :func:`echo_main` is the backend: run as ``python -m bench._load`` it listens
  on 127.0.0.1 (a free port, printed on stdout), accepts every connection
  waiting whenever the listener is readable, and answers each message with
  itself.
- :func:`burst` opens ``n`` connections at once, each sends one message and
  waits for its reply: the seconds from the start to each client's reply.
- :func:`steady` keeps ``n`` connections each with one message in flight
  (send, await the reply, send again) for a while: replies per second.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time

__all__ = ["burst", "echo_main", "hold", "steady"]

_LEN = 4


def _message(i: int, size: int) -> bytes:
    body = (b"%08d" % i).ljust(size, b".")
    return len(body).to_bytes(_LEN, "big") + body


def echo_main() -> None:
    """Serve the echo backend until killed (see the module)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    print(listener.getsockname()[1], flush=True)
    bufs: dict[socket.socket, bytearray] = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE):
                            time.sleep(0.01)
                            break
                        raise
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    bufs[conn] = bytearray()
                    sel.register(conn, selectors.EVENT_READ, None)
                continue
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                del bufs[sock]
                continue
            buf = bufs[sock]
            buf += data
            end = 0
            while len(buf) - end >= _LEN:
                n = _LEN + int.from_bytes(buf[end : end + _LEN], "big")
                if len(buf) - end < n:
                    break
                end += n
            if end:
                with contextlib.suppress(OSError):  # small replies: the buffer takes them
                    sock.sendall(bytes(buf[:end]))
                del buf[:end]


class _Client:
    __slots__ = ("buf", "done", "i", "sent_at", "sock", "want")

    def __init__(self, i: int, sock: socket.socket, want: int) -> None:
        self.i = i
        self.sock = sock
        self.buf = b""
        self.want = want
        self.sent_at = 0.0
        self.done = 0


def _open(addr: tuple[str, int], n: int, sel: selectors.BaseSelector, size: int) -> list[_Client]:
    clients = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            raise OSError(err, f"connect to {addr}: {errno.errorcode.get(err, err)}")
        c = _Client(i, s, _LEN + size)
        clients.append(c)
        sel.register(s, selectors.EVENT_WRITE, c)
    return clients


def _read(c: _Client) -> bool:
    """Read what is there; True once a whole reply came."""
    data = c.sock.recv(65536)
    if not data:
        raise ConnectionError(f"client {c.i}: the server closed the connection")
    c.buf += data
    if len(c.buf) >= c.want:
        c.buf = c.buf[c.want :]
        return True
    return False


def burst(addr: tuple[str, int], n: int, *, size: int = 64, deadline: float = 120.0) -> list[float]:
    """Open ``n`` connections at once, send one ``size``-byte message on each
    and wait for every reply; the seconds from the start to each reply,
    sorted. The connections are closed after.

    Raises:
        TimeoutError: not every reply came within ``deadline`` seconds.
        ConnectionError, OSError: a connection failed.
    """
    times: list[float] = []
    for sock in _served(addr, n, size, deadline, times):
        sock.close()
    return sorted(times)


def hold(
    addr: tuple[str, int], n: int, *, size: int = 64, deadline: float = 120.0
) -> list[socket.socket]:
    """As :func:`burst`, but the ``n`` connections are kept open, each answered
    once: the caller closes them.

    Raises:
        TimeoutError, ConnectionError, OSError: as :func:`burst` (then the
            connections are closed).
    """
    return _served(addr, n, size, deadline, [])


def _served(
    addr: tuple[str, int], n: int, size: int, deadline: float, times: list[float]
) -> list[socket.socket]:
    """Open ``n`` connections at once and send one message on each; when every
    reply came (the seconds from the start to each appended to ``times``),
    the open sockets. On an error they are all closed."""
    sel = selectors.DefaultSelector()
    t0 = time.perf_counter()
    clients = _open(addr, n, sel, size)
    try:
        while len(times) < n:
            if time.perf_counter() - t0 > deadline:
                raise TimeoutError(f"{n - len(times)} of {n} replies missing after {deadline}s")
            for key, events in sel.select(1.0):
                c = key.data
                if events & selectors.EVENT_WRITE:
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"client {c.i}: connect failed")
                    c.sock.send(_message(c.i, size))
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                elif _read(c):
                    times.append(time.perf_counter() - t0)
                    sel.unregister(c.sock)
    except BaseException:
        for c in clients:
            c.sock.close()
        raise
    finally:
        sel.close()
    return [c.sock for c in clients]


def steady(addr: tuple[str, int], n: int, seconds: float, *, size: int = 64) -> float:
    """Replies per second over ``seconds`` (after every one of ``n`` connections
    had its first reply), each connection with one ``size``-byte message in
    flight at a time.

    Raises:
        ConnectionError, OSError: a connection failed.
    """
    sel = selectors.DefaultSelector()
    clients = _open(addr, n, sel, size)
    msg = {c.i: _message(c.i, size) for c in clients}
    ready = 0
    count = 0
    t0 = end = 0.0
    try:
        while True:
            for key, events in sel.select(1.0):
                c = key.data
                if events & selectors.EVENT_WRITE:
                    c.sock.send(msg[c.i])
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                    continue
                if not _read(c):
                    continue
                if not c.done:
                    c.done = 1
                    ready += 1
                    if ready == n:
                        t0 = time.perf_counter()
                        end = t0 + seconds
                elif t0:
                    count += 1
                c.sock.send(msg[c.i])
            if t0 and time.perf_counter() >= end:
                return count / (time.perf_counter() - t0)
    finally:
        for c in clients:
            c.sock.close()
        sel.close()


if __name__ == "__main__":
    echo_main()
