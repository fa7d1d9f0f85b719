"""test_sockmap's "TS" topology on real loopback sockets, and exact-read helpers.

The kernel selftest ``tools/testing/selftests/bpf/test_sockmap.c`` builds, per
test, two listeners and two connections and wires them into three maps
(reference §7). Here the same, over 127.0.0.1 with ephemeral ports:

- listeners ``s1`` and ``s2`` (the selftest's ports 10000 and 10001);
  ``c1 -> p1`` is a connection to ``s1``, ``c2 -> p2`` one to ``s2``;
- ``sock_map``: STREAM_PARSER ``bpf_prog1`` (returns ``sock_skb_opts[2]`` if
  set, else ``skb->len``) and STREAM_VERDICT ``bpf_prog2`` (redirect egress to
  ``sock_map[10]`` when the local port is ``s1``'s, else to ``[1]``; with
  ``sock_skb_opts[0]`` set, to ``[3]`` with those flags). The selftest's
  sock_ops program inserts ``p1`` at ``[1]`` (passive, local port of ``s1``)
  and ``c2`` at ``[10]`` (active, remote port of ``s2``) with ``BPF_NOEXIST``;
  we make the same two updates once the connections are up;
- ``sock_map_txmsg``: the SK_MSG program, ``c1`` at key 0;
- ``sock_map_redir``: ``[0]`` = ``c2`` when the program redirects, else ``c1``;
  for ingress tests ``sock_redir_flags[0] = BPF_F_INGRESS``, ``txmsg[1] = p1``,
  ``redir[2] = p2`` and ``sock_map[3] = p2``.

Data path ("non-base"): ``c1`` => SK_MSG => ``p1`` => SK_SKB redirect egress
=> ``c2`` => ``p2``; the receiver is always ``p2``.

Everything here must run inside ``skmsg_core.runtime.open_runtime()``: the
receive programs of ``p1``/``c2`` (and ``p2`` in ingress tests) run in its
pumps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal

import trio

import skmsg_core as sk
import skmsg_tcp
from tests.core._support import prog4

__all__ = [
    "QUIET",
    "READ_TIMEOUT",
    "Mode",
    "Topology",
    "assert_quiet",
    "open_listener",
    "open_topology",
    "read_exact",
    "tcp_pair",
    "transfer",
    "wait_until",
]

#: How long a read for an exact byte total may take (a few seconds, loaded VM).
READ_TIMEOUT = 10.0
#: How long "nothing more arrives" is watched for.
QUIET = 0.15

#: What ``c1``'s SK_MSG program does: ``bpf_prog4`` passes, ``bpf_prog6``
#: redirects (egress to ``c2``, or ``BPF_F_INGRESS`` into ``p2``), ``bpf_prog10``
#: drops; ``None`` attaches no SK_MSG program.
Mode = Literal["pass", "redir", "ingress", "drop"] | None


# -- sockets -----------------------------------------------------------------------------------


async def open_listener(*, reuseport: bool = False, port: int = 0) -> skmsg_tcp.SkListener:
    """One listener on 127.0.0.1 (an ephemeral port unless ``port`` is given)."""
    [listener] = await skmsg_tcp.open_tcp_listeners(port, host="127.0.0.1", reuseport=reuseport)
    return listener


def port_of(listener: skmsg_tcp.SkListener) -> int:
    return int(listener.socket.getsockname()[1])


async def tcp_pair(
    listener: skmsg_tcp.SkListener,
) -> tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream]:
    """Connect to ``listener``: ``(client, accepted server side)``."""
    client = await skmsg_tcp.open_tcp_stream("127.0.0.1", port_of(listener))
    server = await listener.accept()
    return client, server


# -- reading exactly ---------------------------------------------------------------------------


async def read_exact(stream: skmsg_tcp.SkStream, n: int, *, timeout: float = READ_TIMEOUT) -> bytes:
    """Read exactly ``n`` bytes (never asking for more than are still due).

    Fails the test, saying how many bytes came, if they do not all arrive within
    ``timeout`` or the stream reaches EOF first.
    """
    buf = bytearray()
    eof = False
    with trio.move_on_after(timeout):
        while len(buf) < n:
            data = await stream.receive_some(n - len(buf))
            if not data:
                eof = True
                break
            buf += data
    assert not eof, f"EOF after {len(buf)} of {n} bytes"
    assert len(buf) == n, f"only {len(buf)} of {n} bytes arrived within {timeout}s"
    return bytes(buf)


async def assert_quiet(stream: skmsg_tcp.SkStream, wait: float = QUIET) -> None:
    """Nothing more arrives on ``stream`` for ``wait`` seconds (EOF counts as nothing)."""
    with trio.move_on_after(wait):
        data = await stream.receive_some()
        assert data == b"", f"expected nothing more, got {len(data)} bytes: {data[:32]!r}..."


async def send_chunks(stream: skmsg_tcp.SkStream, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        await stream.send_all(chunk)


async def transfer(
    sender: skmsg_tcp.SkStream,
    receiver: skmsg_tcp.SkStream,
    chunks: Iterable[bytes],
    n: int,
    *,
    timeout: float = READ_TIMEOUT,
) -> bytes:
    """Send ``chunks`` (one ``send_all`` each) on ``sender`` while reading exactly
    ``n`` bytes from ``receiver``; both must finish within ``timeout``."""
    got = b""
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunks, sender, list(chunks))
            got = await read_exact(receiver, n, timeout=timeout)
    return got


async def wait_until(cond: Callable[[], bool], *, timeout: float = READ_TIMEOUT) -> None:
    """Poll ``cond`` (state the runtime's pumps change) until true, or fail."""
    with trio.move_on_after(timeout):
        while not cond():
            await trio.sleep(0.002)
        return
    raise AssertionError(f"condition not met within {timeout}s")


# -- the TS topology ---------------------------------------------------------------------------


class Topology:
    """The sockets, maps and programs of one test_sockmap run."""

    def __init__(
        self,
        *,
        s1: skmsg_tcp.SkListener,
        s2: skmsg_tcp.SkListener,
        c1: skmsg_tcp.SkStream,
        p1: skmsg_tcp.SkStream,
        c2: skmsg_tcp.SkStream,
        p2: skmsg_tcp.SkStream,
    ) -> None:
        self.s1, self.s2 = s1, s2
        self.c1, self.p1, self.c2, self.p2 = c1, p1, c2, p2
        self.sock_map = sk.SockMap(max_entries=20, name="sock_map")
        self.sock_map_txmsg = sk.SockMap(max_entries=20, name="sock_map_txmsg")
        self.sock_map_redir = sk.SockMap(max_entries=20, name="sock_map_redir")
        #: ``sock_skb_opts``: [0] redirect flags for bpf_prog2 (set ⇒ key 3),
        #: [2] the length bpf_prog1 returns (0 ⇒ ``skb->len``).
        self.sock_skb_opts = [0, 0, 0]
        #: ``skb->len`` of every message bpf_prog2 saw (on any socket).
        self.verdict_lens: list[int] = []
        self.parser: sk.Program | None = None
        self.verdict: sk.Program | None = None
        self.txmsg: sk.Program | None = None

    @property
    def maps(self) -> tuple[sk.SockMap, sk.SockMap, sk.SockMap]:
        return self.sock_map, self.sock_map_txmsg, self.sock_map_redir

    @property
    def streams(self) -> tuple[skmsg_tcp.SkStream, ...]:
        return self.c1, self.p1, self.c2, self.p2

    def bpf_prog1(self, skb: sk.SkBuff) -> int:
        """STREAM_PARSER: ``sock_skb_opts[2]`` if set, else the whole skb."""
        return self.sock_skb_opts[2] or skb.len

    def bpf_prog2(self, skb: sk.SkBuff) -> int:
        """STREAM_VERDICT: forward p1's bytes out of c2 (and c2's out of p1)."""
        self.verdict_lens.append(skb.len)
        key = 10 if skb.local_port == port_of(self.s1) else 1
        flags = 0
        if self.sock_skb_opts[0]:
            key, flags = 3, self.sock_skb_opts[0]
        return sk.sk_redirect_map(skb, self.sock_map, key, flags)


@asynccontextmanager
async def open_topology(
    mode: Mode = "pass",
    *,
    program: Callable[[sk.SkMsg], int] | None = None,
    parser_len: int = 0,
    skb_flags: int = 0,
    **prog4_params: int | tuple[int, int],
) -> AsyncIterator[Topology]:
    """Build TS as test_sockmap's ``run_options`` does, yield it, close it all.

    ``mode`` picks the SK_MSG program (``prog4`` with ``prog4_params``: apply,
    cork, pull, push, pop); ``program`` replaces it with any SK_MSG program in
    the "pass" wiring. ``parser_len`` is ``sock_skb_opts[2]`` (what bpf_prog1
    returns), ``skb_flags`` ``sock_skb_opts[0]`` (bpf_prog2 then redirects to
    ``sock_map[3]`` = p2 with those flags).
    """
    async with AsyncExitStack() as stack:
        s1 = await open_listener()
        stack.push_async_callback(s1.aclose)
        s2 = await open_listener()
        stack.push_async_callback(s2.aclose)
        c1, p1 = await tcp_pair(s1)
        c2, p2 = await tcp_pair(s2)
        for stream in (c1, p1, c2, p2):
            stack.push_async_callback(stream.aclose)
        ts = Topology(s1=s1, s2=s2, c1=c1, p1=p1, c2=c2, p2=p2)
        for m in ts.maps:
            stack.callback(m.close)
        ts.sock_skb_opts[0] = skb_flags
        ts.sock_skb_opts[2] = parser_len

        # programs on sock_map, then what sock_ops inserts at connect time
        ts.parser = ts.sock_map.attach(ts.bpf_prog1, sk.SK_SKB_STREAM_PARSER)
        ts.verdict = ts.sock_map.attach(ts.bpf_prog2, sk.SK_SKB_STREAM_VERDICT)
        ts.sock_map.update(1, p1, sk.BPF_NOEXIST)
        ts.sock_map.update(10, c2, sk.BPF_NOEXIST)

        # the SK_MSG program on sock_map_txmsg, c1 at key 0
        if mode is not None:
            if program is None:
                redirect: tuple[sk.SockMap, int, int] | None = None
                if mode == "redir":
                    redirect = (ts.sock_map_redir, 0, 0)
                elif mode == "ingress":
                    redirect = (ts.sock_map_redir, 2, sk.BPF_F_INGRESS)
                program = prog4(
                    redirect=redirect,
                    drop=mode == "drop",
                    **prog4_params,  # type: ignore[arg-type]
                )
            ts.txmsg = ts.sock_map_txmsg.attach(program, sk.SK_MSG_VERDICT)
            ts.sock_map_txmsg.update(0, c1)
            ts.sock_map_redir.update(0, c2 if mode in ("redir", "ingress") else c1)
        if mode == "ingress":
            ts.sock_map_txmsg.update(1, p1)
            ts.sock_map_redir.update(2, p2)
        if mode == "ingress" or skb_flags:
            ts.sock_map.update(3, p2)
        yield ts
