"""Play a scenario on skmsg: the BPF programs' Python twins, the plugins' sockets, skmsg maps.

The programs here do, line for line, what ``bpf/sockmap_conf.bpf.c`` does with
the same parameters (the ops in order, each limited to its runs; the verdict
rules; the same log). Sends are ``send_all`` on a stream (TCP's ``SkStream``,
``skmsg_unix.UnixStream``) and ``send`` on a datagram socket
(``skmsg_udp.UdpSocket``, ``skmsg_unix.UnixDatagramSocket``); the outcome is
turned into what the kernel's ``sendmsg`` returns: the byte count,
``SendError.sent`` when a DROP or a failed redirect ended it after some bytes
were accepted, else the errno.

``hints`` (what the kernel's run received, per peer, at each ``settle`` and at
the end) only say how long to wait: skmsg's side reads until it has at least
that many bytes (or a timeout) and then until quiet, so a short or long
delivery shows up as a difference, never as a hang.
"""

from __future__ import annotations

import errno
import socket as stdsocket
from typing import Any

import trio

import skmsg_core as sk
import skmsg_tcp
import skmsg_udp
import skmsg_unix
from skmsg_core.runtime import open_runtime

from ._bpf import LOG_RUNS, MAX_OPS, errno_name
from ._kernel import special_unix
from ._results import encode_bytes, queued_bytes, run_length
from ._scenario import Scenario, flag_value

__all__ = ["run_on_skmsg"]

ATTACH = {
    "msg_verdict": sk.SK_MSG_VERDICT,
    "stream_parser": sk.SK_SKB_STREAM_PARSER,
    "stream_verdict": sk.SK_SKB_STREAM_VERDICT,
    "skb_verdict": sk.SK_SKB_VERDICT,
}
PROG_TYPES = {
    "msg_verdict": sk.BpfProgType.SK_MSG,
    "skb_parser": sk.BpfProgType.SK_SKB,
    "skb_verdict": sk.BpfProgType.SK_SKB,
    "skb_verdict_plain": sk.BpfProgType.SK_SKB,
}
SEND_TIMEOUT = 60.0  # a hang guard only: case 11 makes 262144 verdict runs in one send
WAIT_TIMEOUT = 30.0  # reached only when skmsg delivers less than the kernel
QUIET = 0.05


def hash_key(key: int) -> bytes:
    """The SOCKHASH key the BPF side uses: a u32 in host (little-endian) order."""
    return (key & 0xFFFFFFFF).to_bytes(4, "little")


class Programs:
    """The conformance programs for one scenario, with the BPF object's counters and logs."""

    def __init__(self, sc: Scenario, maps: dict[str, sk.SockMapBase]) -> None:
        self.maps = maps
        self.ops = sc.msg_ops
        self.msg_v = sc.msg_verdicts
        self.skb_v = sc.skb_verdicts
        self.parser_len = sc.parser_len
        self.msg_runs = 0
        self.skb_runs = 0
        self.parser_runs = 0
        self.msg_log: list[dict[str, Any]] = []
        self.skb_log: list[int] = []
        self.loaded = {
            "msg_verdict": sk.Program.load(
                self.msg_verdict, PROG_TYPES["msg_verdict"], name="msg_verdict"
            ),
            "skb_parser": sk.Program.load(
                self.skb_parser, PROG_TYPES["skb_parser"], name="skb_parser"
            ),
            "skb_verdict": sk.Program.load(
                self.skb_verdict, PROG_TYPES["skb_verdict"], name="skb_verdict"
            ),
            "skb_verdict_plain": sk.Program.load(
                self.skb_verdict, PROG_TYPES["skb_verdict_plain"], name="skb_verdict_plain"
            ),
        }

    @staticmethod
    def _pick(verdicts: list[dict[str, Any]], run: int) -> dict[str, Any]:
        if len(verdicts) > 1 and run >= int(verdicts[1].get("from_run", 0)):
            return verdicts[1]
        return verdicts[0]

    def _redirect(self, ctx: Any, v: dict[str, Any], *, msg: bool) -> int:
        name = v.get("map", "map_a")
        key = int(v.get("key", 0))
        flags = int(v.get("flags", 0))
        target = self.maps[name]
        if name == "hash_a":
            fn_h = sk.msg_redirect_hash if msg else sk.sk_redirect_hash
            return int(fn_h(ctx, target, hash_key(key), flags))  # type: ignore[arg-type]
        fn_m = sk.msg_redirect_map if msg else sk.sk_redirect_map
        return int(fn_m(ctx, target, key, flags))  # type: ignore[arg-type]

    @staticmethod
    def _finish(v: dict[str, Any], redir: int) -> int:
        if v["verdict"] == "drop":
            return sk.SK_DROP
        if v["verdict"] != "redirect":
            return sk.SK_PASS
        ret = v.get("ret", "helper")
        if ret == "pass":
            return sk.SK_PASS
        if ret == "drop":
            return sk.SK_DROP
        return redir

    def msg_verdict(self, msg: sk.SkMsg) -> int:
        """``msg_verdict`` of sockmap_conf.bpf.c."""
        run = self.msg_runs
        self.msg_runs += 1
        ent: dict[str, Any] = {"size_in": msg.size, "size_out": 0, "rets": [0] * MAX_OPS}
        verdict: int | None = None
        for i, op in enumerate(self.ops):
            to_run = int(op.get("to_run", 0))
            if run < int(op.get("from_run", 0)) or (to_run and run >= to_run):
                continue
            a, b = int(op.get("a", 0)) & 0xFFFFFFFF, int(op.get("b", 0)) & 0xFFFFFFFF
            code = op["op"]
            if code == "apply":
                ret = sk.msg_apply_bytes(msg, a)
            elif code == "cork":
                ret = sk.msg_cork_bytes(msg, a)
            elif code == "pull":
                ret = sk.msg_pull_data(msg, a, b, 0)
            elif code == "push":
                ret = sk.msg_push_data(msg, a, b, 0)
            else:
                ret = sk.msg_pop_data(msg, a, b, 0)
            ent["rets"][i] = ret
            if ret and op.get("drop_on_error", False):
                verdict = sk.SK_DROP
                break
        if verdict is None:
            v = self._pick(self.msg_v, run)
            redir = self._redirect(msg, v, msg=True) if v["verdict"] == "redirect" else sk.SK_DROP
            verdict = self._finish(v, redir)
        ent["size_out"] = msg.size
        ent["verdict"] = int(verdict)
        if run < LOG_RUNS:
            self.msg_log.append(ent)
        return verdict

    def skb_parser(self, skb: sk.SkBuff) -> int:
        self.parser_runs += 1
        return self.parser_len or skb.len

    def skb_verdict(self, skb: sk.SkBuff) -> int:
        run = self.skb_runs
        self.skb_runs += 1
        if run < LOG_RUNS:
            self.skb_log.append(skb.len)
        v = self._pick(self.skb_v, run)
        redir = self._redirect(skb, v, msg=False) if v["verdict"] == "redirect" else sk.SK_DROP
        return self._finish(v, redir)


def _is_stream(sock: Any) -> bool:
    return hasattr(sock, "receive_some")


class Peers:
    """Reader tasks, one per connected socket, collecting what each receives
    (a datagram socket's datagrams joined, as the kernel side's)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.received: dict[str, bytearray] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.streams: dict[str, Any] = {}
        self.done: set[str] = set()
        #: how a peer's reading ended: "EOF" or an errno name (absent: still open)
        self.ends: dict[str, str] = {}
        self.changed = trio.Event()
        self.last = trio.current_time()

    def add(self, name: str, stream: Any) -> None:
        self.received[name] = bytearray()
        self.streams[name] = stream
        scope = trio.CancelScope()
        self.scopes[name] = scope
        self.nursery.start_soon(self._read, name, stream, scope)

    async def _read(self, name: str, stream: Any, scope: trio.CancelScope) -> None:
        receive = stream.receive_some if _is_stream(stream) else stream.receive
        try:
            with scope:
                while True:
                    try:
                        data = await receive(1 << 20)
                    except trio.BrokenResourceError as exc:
                        cause = exc.__cause__
                        err = cause.errno if isinstance(cause, OSError) else None
                        self.ends[name] = errno_name(err or errno.EIO)
                        return
                    except trio.ClosedResourceError:
                        return
                    if not data:
                        self.ends[name] = "EOF"
                        return
                    self.received[name] += data
                    self.last = trio.current_time()
        finally:
            self.done.add(name)

    def forget(self, name: str) -> None:
        self.scopes[name].cancel()

    def _busy(self) -> bool:
        """Bytes are still on their way: in a socket's queues or a psock's ingress queue."""
        for name, stream in self.streams.items():
            if name in self.done:
                continue  # its reader saw EOF or was stopped: nothing more is read
            psock = stream.sk.psock
            if psock is not None and psock.ingress_bytes:
                return True
            if not _is_stream(stream) and stream.statistics().queued:
                return True
            fd = stream.sk.fileno if not stream.sk.dead else -1
            if fd >= 0 and queued_bytes(fd):
                return True
        return False

    async def wait(self, want: dict[str, int] | None) -> dict[str, int]:
        """Wait until each peer has what ``want`` says, and nothing is on its way
        any more, then until quiet (all within a timeout)."""
        with trio.move_on_after(WAIT_TIMEOUT):
            while want and any(len(self.received.get(k, b"")) < n for k, n in want.items()):
                await trio.sleep(0.005)
            while True:
                if self._busy() or trio.current_time() - self.last < QUIET:
                    await trio.sleep(0.01)
                    continue
                await trio.sleep(QUIET)  # nothing queued: does anything still come?
                if not self._busy() and trio.current_time() - self.last >= QUIET:
                    break
        return {k: len(v) for k, v in self.received.items()}


def _send_result(exc: BaseException) -> int | str:
    if isinstance(exc, sk.SendError):  # every plugin's send errors
        return exc.sent if exc.sent > 0 else errno_name(exc.errno or errno.EIO)
    if isinstance(exc, OSError):
        return errno_name(exc.errno or errno.EIO)
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno:
        return errno_name(cause.errno)
    return type(exc).__name__


async def run_on_skmsg(sc: Scenario, hints: dict[str, Any] | None = None) -> dict[str, Any]:
    """Play ``sc`` on skmsg; its results in the kernel side's shape.

    ``hints``: the kernel's results for the same scenario (only the received
    byte counts are used, to know how long to wait; where a declared
    difference says skmsg receives more, that count is awaited instead, so a
    pause in a loaded machine's delivery cannot end the wait early).
    """
    settle_hints: list[dict[str, int]] = []
    final_hint: dict[str, int] | None = None
    if hints is not None:
        from ._results import decode_bytes

        settle_hints = [
            r for s, r in zip(sc.steps, hints["steps"], strict=True) if s["op"] == "settle"
        ]
        final_hint = {k: len(decode_bytes(v)) for k, v in hints["received"].items()}
        for d in sc.declared:  # skmsg delivers more there, by design: wait for it all
            field, more = d["field"], d.get("skmsg")
            if field.startswith("received.") and type(more) is int:
                peer = field.removeprefix("received.")
                final_hint[peer] = max(final_hint.get(peer, 0), more)
    maps: dict[str, sk.SockMapBase] = {
        "map_a": sk.SockMap(max_entries=20, name="map_a"),
        "map_b": sk.SockMap(max_entries=20, name="map_b"),
        "map_c": sk.SockMap(max_entries=20, name="map_c"),
        "hash_a": sk.SockHash(max_entries=20, key_size=4, name="hash_a"),
        "map_v4": sk.SockMap(max_entries=4, value_size=4, name="map_v4"),
    }
    progs = Programs(sc, maps)
    listeners: dict[str, skmsg_tcp.SkListener] = {}
    streams: dict[str, Any] = {}
    extra: list[stdsocket.socket] = []
    results: list[Any] = []
    async with open_runtime(), trio.open_nursery() as nursery:
        peers = Peers(nursery)
        try:
            for name in sc.listeners:
                [listeners[name]] = await skmsg_tcp.open_tcp_listeners(0, host="127.0.0.1")
            for client, server, listener in sc.pairs:
                port = listeners[listener].socket.getsockname()[1]
                streams[client] = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
                streams[server] = await listeners[listener].accept()
                peers.add(client, streams[client])
                peers.add(server, streams[server])
            for a_name, b_name, kind in sc.socketpairs:
                streams[a_name], streams[b_name] = await _socketpair(kind)
                peers.add(a_name, streams[a_name])
                peers.add(b_name, streams[b_name])
            settles = iter(settle_hints)
            for step in sc.steps:
                results.append(
                    await _step(
                        sc,
                        step=step,
                        maps=maps,
                        progs=progs,
                        listeners=listeners,
                        streams=streams,
                        extra=extra,
                        peers=peers,
                        settles=settles,
                    )
                )
            await peers.wait(final_hint)
            received = {k: bytes(v) for k, v in peers.received.items()}
            ends = dict(sorted(peers.ends.items()))  # before closing makes more
        finally:
            for m in maps.values():
                m.close()
            for s in streams.values():
                await s.aclose()
            for lst in listeners.values():
                await lst.aclose()
            for raw in extra:
                raw.close()
            nursery.cancel_scope.cancel()
    return {
        "steps": results,
        "received": {k: encode_bytes(v) for k, v in received.items()},
        "ends": ends,
        "msg_runs": progs.msg_runs,
        "msg_log": progs.msg_log,
        "skb_runs": progs.skb_runs,
        "skb_log": progs.skb_log,
    }


async def _socketpair(kind: str) -> tuple[Any, Any]:
    if kind == "unix_stream":
        return await skmsg_unix.unix_stream_pair()
    if kind == "unix_dgram":
        return await skmsg_unix.unix_dgram_pair()
    return await skmsg_udp.udp_socket_pair("127.0.0.1")


def _key(maps: dict[str, sk.SockMapBase], name: str, key: int) -> Any:
    return hash_key(key) if name == "hash_a" else key


async def _step(
    sc: Scenario,
    *,
    step: dict[str, Any],
    maps: dict[str, sk.SockMapBase],
    progs: Programs,
    listeners: dict[str, skmsg_tcp.SkListener],
    streams: dict[str, Any],
    extra: list[stdsocket.socket],
    peers: Peers,
    settles: Any,
) -> Any:
    op = step["op"]
    await trio.lowlevel.checkpoint()
    try:
        if op == "attach":
            maps[step["map"]].attach(progs.loaded[step["prog"]], ATTACH[step["type"]])
            return "ok"
        if op == "detach":
            maps[step["map"]].detach(progs.loaded[step["prog"]], ATTACH[step["type"]])
            return "ok"
        if op == "update":
            value: object
            if "fd" in step:
                fd = int(step["fd"])
                value = fd
            else:
                name = step["sock"]
                if name in streams:
                    value = streams[name]
                elif name in listeners:
                    value = listeners[name]
                else:
                    value = _special(name, extra).fileno()
            m = maps[step["map"]]
            m.update(
                _key(maps, step["map"], int(step["key"])), value, flag_value(step.get("flags", 0))
            )
            return "ok"
        if op == "delete":
            maps[step["map"]].delete(_key(maps, step["map"], int(step["key"])))
            return "ok"
        if op == "lookup":
            cookie = maps[step["map"]].lookup(_key(maps, step["map"], int(step["key"])))
            owners: dict[str, Any] = {**listeners, **streams}
            for name, s in owners.items():
                if s.sk.cookie == cookie:
                    return f"cookie:{name}"
            return "cookie:?"
    except OSError as exc:
        return errno_name(exc.errno or errno.EIO)
    if op == "send":
        stream = streams[step["sock"]]
        out: list[int | str] = []
        for s in sc.sends(step):
            data = s.data
            try:
                with trio.fail_after(SEND_TIMEOUT):
                    if isinstance(stream, skmsg_tcp.SkStream):
                        await stream.send_all(data, more=s.more)
                    elif _is_stream(stream):
                        await stream.send_all(data)
                    else:
                        await stream.send(data)
            except trio.TooSlowError:
                out.append("ETIMEDOUT")
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                out.append(_send_result(exc))
            else:
                out.append(len(data))
        return run_length(out)
    if op == "close":
        name = step["sock"]
        if name in streams:
            peers.forget(name)
            await streams[name].aclose()
        else:
            await listeners[name].aclose()
        return "ok"
    if op == "shutdown":
        await streams[step["sock"]].send_eof()
        return "ok"
    if op == "connect":
        port = listeners[step["listener"]].socket.getsockname()[1]
        streams[step["client"]] = await skmsg_tcp.open_tcp_stream("127.0.0.1", port)
        peers.add(step["client"], streams[step["client"]])
        return "ok"
    if op == "accept":
        with trio.fail_after(SEND_TIMEOUT):
            streams[step["server"]] = await listeners[step["listener"]].accept()
        peers.add(step["server"], streams[step["server"]])
        return "ok"
    if op == "settle":
        return await peers.wait(next(settles, None))
    raise AssertionError(f"unhandled step {op}")


def _special(name: str, extra: list[stdsocket.socket]) -> stdsocket.socket:
    if "unix" in name:
        return special_unix(name, extra)
    if name in ("fresh_udp", "bound_udp"):
        s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_DGRAM)
        if name == "bound_udp":
            s.bind(("127.0.0.1", 0))
    else:
        s = stdsocket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        if name == "bound_tcp":
            s.bind(("127.0.0.1", 0))
    extra.append(s)
    return s
