"""Play a scenario on the live kernel: the BPF object, plain blocking sockets.

Each scenario gets a fresh copy of the BPF object (its maps, attachments and
counters die with it) and fresh loopback sockets. A reader thread collects
what every connected socket receives while the main thread carries out the
steps; sends block (with a timeout), as test_sockmap's do.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import threading
import time
from typing import Any

from ._bpf import BpfObject, compile_object, errno_name, pack_msg_cfg, pack_skb_cfg
from ._results import encode_bytes, queued_bytes, run_length
from ._scenario import Scenario, flag_value

__all__ = ["run_on_kernel"]

SO_COOKIE = getattr(socket, "SO_COOKIE", 57)
SEND_TIMEOUT = 5.0
#: the kernel has finished when no socket received anything for this long
QUIET = 0.12
MAX_WAIT = 5.0


class Reader:
    """A thread that reads every registered socket, without blocking, into buffers."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.received: dict[str, bytearray] = {}
        #: how a peer's reading ended: "EOF" or an errno name (absent: still open)
        self.ends: dict[str, str] = {}
        self.last = time.monotonic()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, name: str, sock: socket.socket) -> None:
        with self.lock:
            self.received.setdefault(name, bytearray())
            self.sel.register(sock, selectors.EVENT_READ, name)

    def forget(self, sock: socket.socket) -> None:
        with self.lock, contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _run(self) -> None:
        while not self._stop:
            with self.lock:
                events = self.sel.select(timeout=0.01) if self.sel.get_map() else []
                for key, _ in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        self.ends[key.data] = errno_name(exc.errno or errno.EIO)
                        self.sel.unregister(sock)
                        continue
                    if not data:  # EOF: nothing more from it
                        self.ends[key.data] = "EOF"
                        self.sel.unregister(sock)
                        continue
                    self.received[key.data] += data
                    self.last = time.monotonic()
            if not events:
                time.sleep(0.002)

    def _busy(self) -> bool:
        with self.lock:
            fds = [key.fileobj.fileno() for key in self.sel.get_map().values()]  # type: ignore[union-attr]
        return any(queued_bytes(fd) for fd in fds if fd >= 0)

    def wait_quiet(self, quiet: float = QUIET) -> dict[str, int]:
        """Wait until no socket holds bytes on their way and nothing arrived for
        ``quiet`` seconds; bytes per peer."""
        start = time.monotonic()
        deadline = start + MAX_WAIT
        while time.monotonic() < deadline:
            # quiet counts from the last byte or from now, whichever is later: what
            # the last step set off (a FIN, a redirect) must have time to arrive
            if not self._busy() and time.monotonic() - max(self.last, start) >= quiet:
                break
            time.sleep(0.01)
        with self.lock:
            return {k: len(v) for k, v in self.received.items()}

    def stop(self) -> dict[str, bytes]:
        self._stop = True
        self.thread.join()
        self.sel.close()
        return {k: bytes(v) for k, v in self.received.items()}


def _cookie(sock: socket.socket) -> int:
    try:
        return int(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0])
    except OSError:
        return -1


def _send(sock: socket.socket, iov: list[bytes], more: bool) -> int | str:
    try:
        return sock.sendmsg(iov, [], socket.MSG_MORE if more else 0)
    except TimeoutError:
        return "ETIMEDOUT"
    except OSError as exc:
        return errno_name(exc.errno or errno.EIO)


def run_on_kernel(sc: Scenario) -> dict[str, Any]:
    """Play ``sc`` on the kernel; its results (see ``_results``)."""
    obj = BpfObject(compile_object())
    socks: dict[str, socket.socket] = {}
    extra: list[socket.socket] = []
    reader = Reader()
    try:
        obj.set_array("msg_cfg_map", 0, pack_msg_cfg(sc.msg_ops, sc.msg_verdicts))
        obj.set_array("skb_cfg_map", 0, pack_skb_cfg(sc.parser_len, sc.skb_verdicts))
        for name in sc.listeners:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            socks[name] = s
        for client, server, listener in sc.pairs:
            c = socket.create_connection(socks[listener].getsockname(), timeout=SEND_TIMEOUT)
            p, _ = socks[listener].accept()
            for name, s in ((client, c), (server, p)):
                s.settimeout(SEND_TIMEOUT)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[name] = s
                reader.add(name, s)
        for a_name, b_name, kind in sc.socketpairs:
            for name, s in zip((a_name, b_name), _socketpair(kind), strict=True):
                s.settimeout(SEND_TIMEOUT)
                socks[name] = s
                reader.add(name, s)
        results = [
            _step(sc, step=step, obj=obj, socks=socks, extra=extra, reader=reader)
            for step in sc.steps
        ]
        reader.wait_quiet()
        received = reader.stop()
        msg_runs, skb_runs = obj.counter(0), obj.counter(1)
        return {
            "steps": results,
            "received": {k: encode_bytes(v) for k, v in received.items()},
            "ends": dict(sorted(reader.ends.items())),
            "msg_runs": msg_runs,
            "msg_log": obj.msg_log(msg_runs),
            "skb_runs": skb_runs,
            "skb_log": obj.skb_log(skb_runs),
        }
    finally:
        if not reader._stop:
            reader.stop()
        for s in [*socks.values(), *extra]:
            s.close()
        obj.close()


def _step(
    sc: Scenario,
    *,
    step: dict[str, Any],
    obj: BpfObject,
    socks: dict[str, socket.socket],
    extra: list[socket.socket],
    reader: Reader,
) -> Any:
    op = step["op"]
    if op == "attach":
        return errno_name(obj.attach(step["prog"], step["map"], step["type"]))
    if op == "detach":
        return errno_name(obj.detach(step["prog"], step["map"], step["type"]))
    if op == "update":
        if "fd" in step:
            fd = int(step["fd"])
        else:
            name = step["sock"]
            if name in socks:
                fd = socks[name].fileno()
            else:
                fd = _special(name, extra).fileno()
        return errno_name(
            obj.update(step["map"], int(step["key"]), fd, flag_value(step.get("flags", 0)))
        )
    if op == "delete":
        return errno_name(obj.delete(step["map"], int(step["key"])))
    if op == "lookup":
        err, value = obj.lookup(step["map"], int(step["key"]))
        if err:
            return errno_name(err)
        for name, s in socks.items():
            if s.fileno() >= 0 and _cookie(s) == value:
                return f"cookie:{name}"
        return "cookie:?"
    if op == "send":
        sock = socks[step["sock"]]
        return run_length([_send(sock, s.iov, s.more) for s in sc.sends(step)])
    if op == "close":
        sock = socks[step["sock"]]
        reader.forget(sock)
        sock.close()
        return "ok"
    if op == "shutdown":
        socks[step["sock"]].shutdown(socket.SHUT_WR)
        return "ok"
    if op == "connect":
        c = socket.create_connection(socks[step["listener"]].getsockname(), timeout=SEND_TIMEOUT)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[step["client"]] = c
        reader.add(step["client"], c)
        return "ok"
    if op == "accept":
        listener = socks[step["listener"]]
        listener.settimeout(SEND_TIMEOUT)
        try:
            p, _ = listener.accept()
        except OSError as exc:
            return errno_name(exc.errno or errno.EIO)
        p.settimeout(SEND_TIMEOUT)
        p.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[step["server"]] = p
        reader.add(step["server"], p)
        return "ok"
    if op == "settle":
        return reader.wait_quiet()
    raise AssertionError(f"unhandled step {op}")


def _socketpair(kind: str) -> tuple[socket.socket, socket.socket]:
    """Two sockets of ``kind`` connected to each other (see ``socketpairs``)."""
    if kind == "unix_stream":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if kind == "unix_dgram":
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    return a, b


def special_unix(name: str, extra: list[socket.socket]) -> socket.socket:
    """The throw-away AF_UNIX sockets of the scenarios (shared by both sides)."""
    if name == "unix_seqpacket":
        s, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        extra.append(peer)
    else:
        stype = socket.SOCK_DGRAM if name.endswith("dgram") else socket.SOCK_STREAM
        s = socket.socket(socket.AF_UNIX, stype)
        if not name.startswith("fresh"):
            s.bind(b"")  # autobind: a fresh abstract name
        if name.startswith("listening"):
            s.listen(4)
    extra.append(s)
    return s


def _special(name: str, extra: list[socket.socket]) -> socket.socket:
    if "unix" in name:
        return special_unix(name, extra)
    if name in ("fresh_udp", "bound_udp"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if name == "bound_udp":
            s.bind(("127.0.0.1", 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if name == "bound_tcp":
            s.bind(("127.0.0.1", 0))
    extra.append(s)
    return s
