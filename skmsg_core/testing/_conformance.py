"""``check_protocol_plugin``: the conformance check every protocol plugin passes.

Theory of operation
-------------------
trio ships ``check_two_way_stream`` so that every stream implementation is
held to one contract; this is the same for skmsg protocol plugins (STYLE
practice 8). A plugin author runs it on a maker of connected pairs of the
plugin's own streams; the built-in TCP plugin runs it on
:func:`tcp_stream_pair`. Each step makes fresh pairs and maps, so one step's
state cannot hide another's bug. The steps, in order:

1. **The socket.** Each stream has ``.sk``, a :class:`skmsg_core.Sock` whose
   ``owner`` is the stream, not dead, in no map, ESTABLISHED (stream plugins),
   with a non-zero cookie equal to the OS's ``SO_COOKIE`` where the OS has one,
   reachable by its file descriptor if it registered one.
2. **The protocol table** implements :class:`skmsg_core.SkProto`: a ``name``,
   and ``sk_state_allowed``/``redirect_allowed`` that admit the socket.
3. **The seam** (``tcp_bpf_update_proto``): entering a map calls
   ``psock_update_sk_prot(restore=False)``, leaving the last map calls it with
   ``restore=True``, and only then; each returns 0. Stream plugins also show it
   in behaviour: receive programs take over reading while the stream is in a
   map, and plain reading is back once it left.
4. **trio's stream contract** (stream plugins): ``check_half_closeable_stream``
   (``check_two_way_stream`` for a stream that cannot half-close) plain, and in
   maps with pass programs (SK_MSG verdict; stream parser + verdict; all three).
   A stream that is not TCP (``sk.is_tcp`` false, as a Unix stream) cannot
   take a stream parser (the kernel runs one on TCP only: ``EOPNOTSUPP``), so
   its maps have a stream verdict alone in the parser's place.
5. **SK_MSG DROP** (stream plugins): ``send_all`` fails with a
   ``PermissionError`` of errno ``EACCES`` and the peer never sees the bytes.
6. **SK_SKB redirect** (stream plugins): between two connections, to the
   target's egress (its peer receives) and, with ``BPF_F_INGRESS``, into its
   receive queue (its own ``receive_some`` returns them).
7. **Close**: a closed stream leaves every map (SOCKMAP and SOCKHASH) through
   the seam, and no map takes it again (``EBADF``).
8. **Registration**: the table is what ``skmsg_core.plugins()`` serves under
   its name, and the plugin that serves it was loaded from the ``skmsg``
   entry-point group, as a third-party plugin would be.

Datagram plugins (``kind="datagram"``) are held to the same steps 1-3, 7 and
8 (their pairs connected, so ESTABLISHED too), and in place of 4-6 to the
datagram contract, on their sockets' ``send(data)`` and ``receive()``:

D1. **Boundaries**: datagrams sent one by one arrive one
    per ``receive``, whole and in order (loopback keeps order), plain and in
    maps with pass programs (SK_MSG verdict; SK_SKB verdict; both), and each
    program runs exactly once per datagram. The seam step (3) shows receive
    programs take over reading and give it back, with datagrams.
D2. **SK_MSG verdict per datagram**: a program that drops some datagrams fails
    those sends with ``EACCES`` and passes the others: the peer gets exactly
    the passed ones (a DROP does not stick, unlike TCP's).
D3. **SK_SKB redirect, one datagram each**: between two connections, to the
    target's egress (its peer receives each datagram whole) and, with
    ``BPF_F_INGRESS``, into its receive queue.

Every failure is an ``AssertionError`` whose message names the protocol, the
step and what is wrong.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeAlias

import attrs
import trio
import trio.testing

import skmsg_core as sk

from ._runtime import aclose_all, ensure_runtime

__all__ = ["Clogger", "PairMaker", "check_protocol_plugin"]

#: An async function returning a new connected pair of a plugin's streams.
PairMaker: TypeAlias = Callable[[], Awaitable[tuple[Any, Any]]]
#: An async function that clogs a connected pair both ways (trio's "clogged" streams).
Clogger: TypeAlias = Callable[[Any, Any], Awaitable[None]]

_SO_COOKIE: int | None = getattr(
    socket, "SO_COOKIE", 57 if sys.platform.startswith("linux") else None
)


async def check_protocol_plugin(
    make_pair: PairMaker,
    *,
    proto: sk.SkProto | None = None,
    kind: Literal["stream", "datagram"] = "stream",
    clog: Clogger | None = None,
    timeout: float = 10.0,
) -> None:
    """Check that a protocol plugin keeps skmsg's contract (see the module docstring).

    ``make_pair`` is called many times; each call returns a new connected pair
    of the plugin's streams (``trio.abc.Stream`` objects with ``.sk``), in no
    map. ``proto`` is the plugin's protocol table (default: the first stream's
    ``sk.sk_prot``); every stream must carry it. ``kind="datagram"`` checks a
    datagram plugin instead: ``make_pair`` returns two connected datagram
    sockets (``async send(data)``, ``async receive()`` returning one datagram,
    ``aclose()``, ``.sk``), held to steps 1-3, 7, 8 and D1-D3. ``clog``, an async function that
    clogs a connected pair both ways (:func:`clog_tcp_pair` for TCP-like
    streams), turns on trio's clogged-stream tests in step 4; pairs in maps are
    clogged after they entered them. ``timeout`` bounds each wait for bytes on
    the wire, in seconds.

    Runs under the current runtime, or opens one for the check. Every stream
    and map it made is closed before it returns.

    Raises:
        AssertionError: the plugin breaks the contract; the message names the
            protocol, the step and what is wrong.
        ValueError: ``kind`` is neither ``"stream"`` nor ``"datagram"``.

    Cancellation closes what the check opened and propagates.
    """
    if kind not in ("stream", "datagram"):
        raise ValueError(f"kind must be 'stream' or 'datagram', not {kind!r}")
    run = _Run(make_pair, timeout, kind == "stream", clog)
    async with ensure_runtime():
        try:
            a, b = await run.pair("make a pair")
            with run.step("the socket (.sk)"):
                proto = _check_sock(a, proto, "first", connected=True)
                _check_sock(b, proto, "second", connected=True)
                if a.sk.cookie == b.sk.cookie:
                    raise AssertionError(f"both streams have cookie {a.sk.cookie}")
            run.label = f"protocol plugin {getattr(proto, 'name', proto)!r}"
            with run.step("the protocol table (SkProto)"):
                _check_table(proto, a.sk)
            await _check_seam(run, proto)
            if run.stream:
                await _check_trio_streams(run)
                await _check_msg_drop(run)
                await _check_skb_redirect(run)
            else:
                await _check_datagrams(run)
                await _check_datagram_msg_verdict(run)
                await _check_datagram_redirect(run)
            await _check_close(run, proto)
            with run.step("registration through the 'skmsg' entry-point group"):
                _check_entry_point(proto)
        finally:
            await run.cleanup()


# -- bookkeeping ---------------------------------------------------------------------------


@attrs.define(eq=False)
class _Run:
    make_pair: PairMaker
    timeout: float
    stream: bool
    clog: Clogger | None
    label: str = "protocol plugin"
    opened: list[Any] = attrs.field(factory=list)
    maps: list[sk.SockMapBase] = attrs.field(factory=list)

    async def pair(self, what: str) -> tuple[Any, Any]:
        with self.step(what):
            got = await self.make_pair()
            if not isinstance(got, tuple) or len(got) != 2:
                raise AssertionError(f"make_pair returned {got!r}, not a pair of streams")
        self.opened.extend(got)
        return got

    def new_map(
        self, progs: dict[str, Callable[[Any], Any]] | None = None, *, hashed: bool = False
    ) -> sk.SockMapBase:
        smap: sk.SockMapBase = sk.SockHash(4) if hashed else sk.SockMap(4)
        self.maps.append(smap)
        for name, prog in (progs or {}).items():
            smap.attach(prog, _ATTACH[name])
        return smap

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Turn a failure into an AssertionError naming the protocol and the step."""
        try:
            yield
        except Exception as exc:
            leaf = _leaf(exc)
            if isinstance(leaf, AssertionError):
                raise AssertionError(f"{self.label}: {what}: {leaf}") from exc
            raise AssertionError(
                f"{self.label}: {what}: unexpected {type(leaf).__name__}: {leaf}"
            ) from exc

    async def cleanup(self) -> None:
        await aclose_all(s for s in self.opened if isinstance(s, trio.abc.AsyncResource))
        for smap in self.maps:
            smap.close()


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


_ATTACH = {
    "msg_verdict": sk.SK_MSG_VERDICT,
    "stream_parser": sk.SK_SKB_STREAM_PARSER,
    "stream_verdict": sk.SK_SKB_STREAM_VERDICT,
    "skb_verdict": sk.SK_SKB_VERDICT,
}


def _pass(ctx: Any) -> int:
    return sk.SK_PASS


def _drop(ctx: Any) -> int:
    return sk.SK_DROP


def _whole(skb: sk.SkBuff) -> int:
    return skb.len


async def _receive_exactly(stream: Any, n: int, timeout: float, what: str) -> bytes:
    buf = bytearray()
    try:
        with trio.fail_after(timeout):
            while len(buf) < n:
                chunk = await stream.receive_some(n - len(buf))
                if not chunk:
                    break
                buf += chunk
    except trio.TooSlowError:
        pass
    if len(buf) < n:
        raise AssertionError(
            f"{what}: {len(buf)} of {n} bytes arrived within {timeout}s ({bytes(buf)!r})"
        )
    return bytes(buf)


class _SeamRecorder:
    """Stands in for a socket's protocol table: delegates every call and records
    the seam's (``restore``, return value)."""

    def __init__(self, proto: sk.SkProto) -> None:
        self.proto = proto
        self.name = proto.name
        self.calls: list[tuple[bool, int]] = []

    def sk_state_allowed(self, s: sk.Sock) -> bool:
        return self.proto.sk_state_allowed(s)

    def redirect_allowed(self, s: sk.Sock) -> bool:
        return self.proto.redirect_allowed(s)

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        ret = self.proto.psock_update_sk_prot(s, psock, restore)
        self.calls.append((restore, ret))
        return ret

    def restores(self) -> int:
        return sum(1 for restore, _ in self.calls if restore)


@contextlib.contextmanager
def _recording(stream: Any, proto: sk.SkProto) -> Iterator[_SeamRecorder]:
    recorder = _SeamRecorder(proto)
    stream.sk.sk_prot = recorder
    try:
        yield recorder
    finally:
        stream.sk.sk_prot = proto


# -- 1 and 2: the socket and the table ----------------------------------------------------


def _check_sock(
    stream: Any, proto: sk.SkProto | None, which: str, *, connected: bool
) -> sk.SkProto:
    s = getattr(stream, "sk", None)
    if not isinstance(s, sk.Sock):
        raise AssertionError(
            f"the {which} stream {stream!r} has no .sk attribute holding a skmsg_core.Sock "
            f"(found {s!r})"
        )
    if s.owner is not stream:
        raise AssertionError(f"{which} stream: sk.owner is {s.owner!r}, not the stream")
    if s.dead or s.psock is not None:
        raise AssertionError(f"{which} stream: a new stream must be open and in no map")
    if proto is None:
        if s.sk_prot is None:
            raise AssertionError(f"{which} stream: sk.sk_prot is None (no protocol table)")
        proto = s.sk_prot
    if s.sk_prot is not proto:
        raise AssertionError(
            f"{which} stream: sk.sk_prot is {s.sk_prot!r}, not the plugin's table {proto!r}"
        )
    if connected and s.state != sk.TcpState.ESTABLISHED:
        raise AssertionError(
            f"{which} stream: sk.state is {sk.TcpState(s.state).name}, not ESTABLISHED"
        )
    if not isinstance(s.cookie, int) or s.cookie <= 0 or s.cookie >= 2**64:
        raise AssertionError(f"{which} stream: sk.cookie {s.cookie!r} is not a non-zero u64")
    os_cookie = _os_cookie(stream, s)
    if os_cookie is not None and os_cookie != s.cookie:
        raise AssertionError(
            f"{which} stream: sk.cookie is {s.cookie}, the OS's SO_COOKIE is {os_cookie}"
        )
    if s.fileno >= 0:
        try:
            found = sk.sock_from(s.fileno)
        except OSError as exc:
            raise AssertionError(
                f"{which} stream: sk.fileno {s.fileno} does not resolve to it ({exc})"
            ) from exc
        if found is not s:
            raise AssertionError(f"{which} stream: fd {s.fileno} resolves to {found!r}")
    return proto


def _os_cookie(stream: Any, s: sk.Sock) -> int | None:
    """The OS's cookie of the stream's socket, or None where there is none to read."""
    fd = s.fileno
    if fd < 0:
        fileno = getattr(stream, "fileno", None)
        fd = fileno() if callable(fileno) else -1
    if fd < 0 or _SO_COOKIE is None:
        return None
    try:
        probe = socket.fromfd(fd, s.family, s.type)
    except OSError:
        return None
    try:
        raw = probe.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8)
    except OSError:
        return None
    finally:
        probe.close()
    return int(struct.unpack("=Q", raw)[0])


def _check_table(proto: object, s: sk.Sock) -> None:
    if not isinstance(proto, sk.SkProto):
        missing = [
            name
            for name in ("name", "sk_state_allowed", "redirect_allowed", "psock_update_sk_prot")
            if not hasattr(proto, name)
        ]
        raise AssertionError(f"{proto!r} does not implement SkProto (missing {missing})")
    if not isinstance(proto.name, str) or not proto.name:
        raise AssertionError(f"{proto!r}: name {proto.name!r} is not a non-empty str")
    for method in ("sk_state_allowed", "redirect_allowed", "psock_update_sk_prot"):
        if not callable(getattr(proto, method)):
            raise AssertionError(f"{proto!r}: {method} is not callable")
    if not proto.sk_state_allowed(s):
        raise AssertionError(f"sk_state_allowed refuses a new stream ({s.describe()})")
    if not proto.redirect_allowed(s):
        raise AssertionError(f"redirect_allowed refuses a new stream ({s.describe()})")


# -- 3: the seam ---------------------------------------------------------------------------


async def _check_seam(run: _Run, proto: sk.SkProto) -> None:
    a, b = await run.pair("the seam: make a pair")
    with run.step("the seam: map insert and delete"), _recording(a, proto) as rec:
        first, second = run.new_map(), run.new_map(hashed=True)
        first.update(0, a)
        if not rec.calls or rec.calls[0][0]:
            raise AssertionError(
                "entering a map did not call psock_update_sk_prot(restore=False) "
                f"(calls: {rec.calls})"
            )
        second.update(b"key", a)
        first.delete(0)
        if rec.restores() or a.sk.psock is None:
            raise AssertionError(
                f"leaving one of two maps restored the protocol (calls: {rec.calls})"
            )
        second.delete(b"key")
        if rec.restores() != 1 or not rec.calls[-1][0]:
            raise AssertionError(
                "leaving the last map did not call psock_update_sk_prot(restore=True) "
                f"once, last (calls: {rec.calls})"
            )
        bad = [ret for _, ret in rec.calls if ret != 0]
        if bad:
            raise AssertionError(f"psock_update_sk_prot returned {bad} on success, not 0")
        if a.sk.psock is not None:
            raise AssertionError("the socket kept its psock after leaving its last map")
        if isinstance(proto, sk.SkProtoBase) and a.sk.ops_psock is not None:
            raise AssertionError(
                "psock_update_sk_prot(restore=True) did not restore the operations: "
                "sk.ops_psock still holds the dropped psock (call "
                "SkProtoBase.psock_update_sk_prot on restore too)"
            )
    if not run.stream:
        await _check_datagram_seam(run, proto)
        return
    with run.step("the seam: receive programs take over reading, and give it back"):
        seen = trio.Event()

        def drop_and_tell(skb: sk.SkBuff) -> int:
            seen.set()
            return sk.SK_DROP

        smap = run.new_map({"stream_verdict": drop_and_tell})
        with _recording(b, proto) as rec:
            smap.update(0, b)
            await a.send_all(b"d")
            with trio.move_on_after(run.timeout):
                await seen.wait()
            if not seen.is_set():
                raise AssertionError(
                    "a stream verdict never ran on bytes the peer sent: the protocol "
                    "did not install receive processing when the stream entered a map"
                )
            smap.delete(0)
            if rec.restores() != 1:
                raise AssertionError(f"leaving the map did not restore (calls: {rec.calls})")
        # Let every task settle, so a receive pump that should have stopped would
        # read the bytes first (a plain read tries the socket before it waits and
        # could otherwise win the race and hide the bug).
        await trio.testing.wait_all_tasks_blocked()
        await a.send_all(b"after")
        await trio.testing.wait_all_tasks_blocked()
        got = await _receive_exactly(
            b, 5, run.timeout, "after the stream left its last map, plain receive_some"
        )
        if got != b"after":
            raise AssertionError(
                f"after leaving its last map the stream received {got!r}, not b'after' "
                "(bytes the verdict dropped came through?)"
            )


# -- 4: trio's stream contract --------------------------------------------------------------

_IN_MAPS: tuple[tuple[str, dict[str, Callable[[Any], Any]]], ...] = (
    ("an SK_MSG pass verdict", {"msg_verdict": _pass}),
    ("a stream parser and a pass verdict", {"stream_parser": _whole, "stream_verdict": _pass}),
    (
        "SK_MSG, stream parser and stream verdict, all pass",
        {"msg_verdict": _pass, "stream_parser": _whole, "stream_verdict": _pass},
    ),
)


#: For a stream that is not TCP: no stream parser (the kernel's rule), a verdict alone.
_IN_MAPS_NOT_TCP: tuple[tuple[str, dict[str, Callable[[Any], Any]]], ...] = (
    ("an SK_MSG pass verdict", {"msg_verdict": _pass}),
    ("a stream verdict alone, pass", {"stream_verdict": _pass}),
    ("SK_MSG and stream verdict, both pass", {"msg_verdict": _pass, "stream_verdict": _pass}),
)


async def _check_trio_streams(run: _Run) -> None:
    a, _ = await run.pair("trio's stream contract: make a pair")
    configs = _IN_MAPS if a.sk.is_tcp else _IN_MAPS_NOT_TCP
    half = isinstance(a, trio.abc.HalfCloseableStream)
    if not half and not isinstance(a, trio.abc.Stream):
        with run.step("trio's stream contract"):
            raise AssertionError(f"{a!r} is not a trio.abc.Stream")
    check = (
        trio.testing.check_half_closeable_stream if half else trio.testing.check_two_way_stream
    )
    name = check.__name__

    async def plain() -> tuple[Any, Any]:
        return await run.pair("make a pair")

    with run.step(f"trio.testing.{name} on a plain stream"):
        await check(plain, _clogged(run, plain))
    for label, progs in configs:

        async def in_map(progs: dict[str, Callable[[Any], Any]] = progs) -> tuple[Any, Any]:
            x, y = await run.pair("make a pair")
            smap = run.new_map(progs)
            smap.update(0, x)
            smap.update(1, y)
            return x, y

        with run.step(f"trio.testing.{name} on streams in a map with {label}"):
            await check(in_map, _clogged(run, in_map))


def _clogged(run: _Run, maker: PairMaker) -> PairMaker | None:
    clog = run.clog
    if clog is None:
        return None

    async def clogged() -> tuple[Any, Any]:
        x, y = await maker()
        await clog(x, y)
        return x, y

    return clogged


# -- 5 and 6: verdicts on the wire ------------------------------------------------------------


async def _check_msg_drop(run: _Run) -> None:
    a, b = await run.pair("SK_MSG DROP: make a pair")
    with run.step("SK_MSG DROP"):
        smap = run.new_map({"msg_verdict": _drop})
        smap.update(0, a)
        try:
            await a.send_all(b"dropped")
        except PermissionError as exc:
            if exc.errno != errno.EACCES:
                raise AssertionError(
                    f"send_all raised PermissionError with errno {exc.errno}, not EACCES"
                ) from exc
        else:
            raise AssertionError("send_all did not fail when the SK_MSG program dropped")
        smap.delete(0)
        await a.send_all(b"ok")
        got = await _receive_exactly(b, 2, run.timeout, "the first bytes after the drop")
        if got != b"ok":
            raise AssertionError(f"the peer received {got!r}: the dropped bytes reached it")


def _redirect_maps(run: _Run, slot: str, source: Any, target: Any) -> None:
    """``target`` in a map of its own, and ``source`` in a map whose receive
    verdict (``slot``) redirects every message to ``target``: into its receive
    queue when the message starts with ``i``, else out of its connection
    (the run keeps both maps until it ends)."""
    targets = run.new_map()
    targets.update(0, target)
    assert isinstance(targets, sk.SockMap)

    def route(skb: sk.SkBuff) -> int:
        ingress = bytes(skb.data[:1]) == b"i"
        return sk.sk_redirect_map(skb, targets, 0, sk.BPF_F_INGRESS if ingress else 0)

    run.new_map({slot: route}).update(0, source)


async def _check_skb_redirect(run: _Run) -> None:
    a1, b1 = await run.pair("SK_SKB redirect: make a pair")
    a2, b2 = await run.pair("SK_SKB redirect: make a pair")
    with run.step("SK_SKB redirect to another connection"):
        _redirect_maps(run, "stream_verdict", b1, a2)
        await a1.send_all(b"egress")
        got = await _receive_exactly(
            b2, 6, run.timeout, "bytes redirected to the target's egress, at its peer"
        )
        if got != b"egress":
            raise AssertionError(f"the target's peer received {got!r}, not b'egress'")
        await a1.send_all(b"ingress")
        got = await _receive_exactly(
            a2, 7, run.timeout, "bytes redirected into the target's receive queue (BPF_F_INGRESS)"
        )
        if got != b"ingress":
            raise AssertionError(f"the target received {got!r}, not b'ingress'")


# -- D1-D3: datagrams ------------------------------------------------------------------------


async def _send_datagram(sock: Any, data: bytes) -> None:
    send = getattr(sock, "send", None)
    if send is None or not callable(send):
        raise AssertionError(f"{sock!r} has no send(data) method (a datagram socket's)")
    await send(data)


async def _receive_datagrams(sock: Any, n: int, timeout: float, what: str) -> list[bytes]:
    receive = getattr(sock, "receive", None)
    if receive is None or not callable(receive):
        raise AssertionError(f"{sock!r} has no receive() method (a datagram socket's)")
    got: list[bytes] = []
    with trio.move_on_after(timeout):
        while len(got) < n:
            got.append(bytes(await receive()))
    if len(got) < n:
        raise AssertionError(f"{what}: {len(got)} of {n} datagrams arrived within {timeout}s "
                             f"({got!r})")
    return got


async def _nothing_more(sock: Any, what: str) -> None:
    """Assert nothing more arrives at ``sock`` once every task went quiet."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    with trio.move_on_after(0.2):
        extra = await sock.receive()
        raise AssertionError(f"{what}: an unexpected datagram arrived: {bytes(extra)!r}")


_DATAGRAMS = (b"a", b"bb", b"ccc", b"d" * 1200)
_IN_MAPS_DGRAM: tuple[tuple[str, dict[str, Callable[[Any], Any]]], ...] = (
    ("an SK_MSG pass verdict", {"msg_verdict": _pass}),
    ("an SK_SKB pass verdict", {"skb_verdict": _pass}),
    ("SK_MSG and SK_SKB pass verdicts", {"msg_verdict": _pass, "skb_verdict": _pass}),
)


async def _check_datagram_seam(run: _Run, proto: sk.SkProto) -> None:
    a, b = await run.pair("the seam: make a pair")
    with run.step("the seam: receive programs take over reading, and give it back"):
        smap = run.new_map({"skb_verdict": _drop})
        with _recording(b, proto) as rec:
            smap.update(0, b)
            await _send_datagram(a, b"dropped")
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            prog = smap.progs["skb_verdict"]
            assert prog is not None
            with trio.move_on_after(run.timeout):
                while prog.run_cnt < 1:
                    await trio.sleep(0.005)
            if prog.run_cnt != 1:
                raise AssertionError(
                    f"the SK_SKB verdict ran {prog.run_cnt} times on one datagram: the "
                    "protocol did not install receive processing when the socket entered a map"
                )
            smap.delete(0)
            if rec.restores() != 1:
                raise AssertionError(f"leaving the map did not restore (calls: {rec.calls})")
        await trio.testing.wait_all_tasks_blocked()
        await _send_datagram(a, b"after")
        got = await _receive_datagrams(
            b, 1, run.timeout, "after the socket left its last map, plain receive"
        )
        if got != [b"after"]:
            raise AssertionError(
                f"after leaving its last map the socket received {got!r}, not [b'after'] "
                "(the datagram the verdict dropped came through?)"
            )


async def _check_datagrams(run: _Run) -> None:
    a, b = await run.pair("datagram boundaries: make a pair")
    with run.step("datagram boundaries on a plain socket"):
        for d in _DATAGRAMS:
            await _send_datagram(a, d)
        got = await _receive_datagrams(b, len(_DATAGRAMS), run.timeout, "plain datagrams")
        if got != list(_DATAGRAMS):
            raise AssertionError(f"sent {list(_DATAGRAMS)!r}, received {got!r}")
    for label, progs in _IN_MAPS_DGRAM:
        x, y = await run.pair("make a pair")
        with run.step(f"datagram boundaries in a map with {label}, one run per datagram"):
            smap = run.new_map(progs)
            smap.update(0, x)
            smap.update(1, y)
            for d in _DATAGRAMS:
                await _send_datagram(x, d)
            got = await _receive_datagrams(y, len(_DATAGRAMS), run.timeout, "datagrams")
            if got != list(_DATAGRAMS):
                raise AssertionError(f"sent {list(_DATAGRAMS)!r}, received {got!r}")
            for slot in progs:
                prog = smap.progs[_SLOT_OF[slot]]
                assert prog is not None
                if prog.run_cnt != len(_DATAGRAMS):
                    raise AssertionError(
                        f"the {slot} program ran {prog.run_cnt} times for "
                        f"{len(_DATAGRAMS)} datagrams, not once each"
                    )


_SLOT_OF = {"msg_verdict": "msg_parser", "skb_verdict": "skb_verdict",
            "stream_verdict": "stream_verdict", "stream_parser": "stream_parser"}


def _drop_x(msg: Any) -> int:
    return sk.SK_DROP if bytes(msg.data[:1]) == b"x" else sk.SK_PASS


async def _check_datagram_msg_verdict(run: _Run) -> None:
    a, b = await run.pair("SK_MSG verdict per datagram: make a pair")
    with run.step("SK_MSG verdict per datagram: DROP fails that send with EACCES only"):
        smap = run.new_map({"msg_verdict": _drop_x})
        smap.update(0, a)
        for d in (b"x1", b"ok1", b"x2", b"ok2"):
            try:
                await _send_datagram(a, d)
            except PermissionError as exc:
                if d[:1] != b"x":
                    raise AssertionError(
                        f"send({d!r}) failed though the program passed it"
                    ) from exc
                if exc.errno != errno.EACCES:
                    raise AssertionError(
                        f"send raised PermissionError with errno {exc.errno}, not EACCES"
                    ) from exc
            else:
                if d[:1] == b"x":
                    raise AssertionError(f"send({d!r}) did not fail when the program dropped it")
        got = await _receive_datagrams(b, 2, run.timeout, "the passed datagrams")
        if got != [b"ok1", b"ok2"]:
            raise AssertionError(f"the peer received {got!r}, not [b'ok1', b'ok2']")
        await _nothing_more(b, "after the passed datagrams")


async def _check_datagram_redirect(run: _Run) -> None:
    a1, b1 = await run.pair("SK_SKB redirect: make a pair")
    a2, b2 = await run.pair("SK_SKB redirect: make a pair")
    with run.step("SK_SKB redirect to another connection, one datagram each"):
        _redirect_maps(run, "skb_verdict", b1, a2)
        for d in (b"egress-1", b"egress-22"):
            await _send_datagram(a1, d)
        got = await _receive_datagrams(b2, 2, run.timeout, "datagrams redirected to egress")
        if got != [b"egress-1", b"egress-22"]:
            raise AssertionError(f"the target's peer received {got!r}")
        for d in (b"ingress-1", b"ingress-22"):
            await _send_datagram(a1, d)
        got = await _receive_datagrams(
            a2, 2, run.timeout, "datagrams redirected into the target's receive queue"
        )
        if got != [b"ingress-1", b"ingress-22"]:
            raise AssertionError(f"the target received {got!r}")


# -- 7: close ------------------------------------------------------------------------------


async def _check_close(run: _Run, proto: sk.SkProto) -> None:
    a, b = await run.pair("close: make a pair")
    with run.step("closing a stream removes it from every map"), _recording(a, proto) as rec:
        array, hashed = run.new_map(), run.new_map(hashed=True)
        array.update(0, a)
        array.update(1, b)
        hashed.update(b"a", a)
        await a.aclose()
        left = [m.name for m, key in ((array, 0), (hashed, b"a")) if key in m]
        if left:
            raise AssertionError(f"the closed stream is still in {left}")
        if 1 not in array:
            raise AssertionError("closing one stream removed the other from its map")
        if a.sk.psock is not None or not a.sk.dead:
            raise AssertionError("the closed stream's sk kept its psock or is not dead")
        if rec.restores() != 1:
            raise AssertionError(
                f"closing did not call psock_update_sk_prot(restore=True) once ({rec.calls})"
            )
        try:
            array.update(0, a)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise AssertionError(
                    f"inserting a closed stream failed with errno {exc.errno}, not EBADF"
                ) from exc
        else:
            raise AssertionError("a map took the closed stream again")


# -- 8: registration -------------------------------------------------------------------------


def _check_entry_point(proto: sk.SkProto) -> None:
    served = sk.plugins().protocols()
    if served.get(proto.name) is not proto:
        raise AssertionError(
            f"skmsg_core.plugins().protocols() serves {served.get(proto.name)!r} under "
            f"{proto.name!r}, not this table: the plugin's skmsg_protocols hook must "
            f"return it (registered: {sorted(served)})"
        )
    pm = sk.get_plugin_manager()
    for impl in pm.hook.skmsg_protocols.get_hookimpls():
        tables: Any = impl.function()
        if any(p is proto for p in tables):
            plugin, name = impl.plugin, impl.plugin_name
            break
    else:  # pragma: no cover - served above, so some hook returned it
        raise AssertionError("no plugin's skmsg_protocols hook returns the table")
    points = {ep.name: ep for ep in importlib.metadata.entry_points(group="skmsg")}
    ep = points.get(name)
    if ep is None or ep.load() is not plugin:
        raise AssertionError(
            f"plugin {name!r} serving {proto.name!r} was not loaded from the 'skmsg' "
            f"entry-point group (entry points: {sorted(points)}); declare "
            f"[project.entry-points.skmsg] {name} = \"<module>\""
        )
