"""In-test sockets for the sans-I/O core: a minimal protocol through the seam,
and a synchronous wire that carries out the TX engine's actions.

Real sockets come with the TCP plugin; here a socket is a ``Sock`` whose
protocol (``MemProto``) records every ``psock_update_sk_prot`` call, and
"the network" is a dict of bytes each socket put on its connection.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from typing import Any

import skmsg_core as sk


class MemProto(sk.SkProtoBase):
    """A protocol table as a plugin would write one, recording seam calls."""

    name = "memtcp"

    def __init__(self) -> None:
        self.calls: list[tuple[sk.Sock, bool]] = []

    def psock_update_sk_prot(self, s: sk.Sock, psock: sk.SkPsock, restore: bool) -> int:
        self.calls.append((s, restore))
        return super().psock_update_sk_prot(s, psock, restore)


class Net:
    """Where bytes go: ``wire[sk]`` is what ``sk`` sent on its connection."""

    def __init__(self, proto: MemProto) -> None:
        self.proto = proto
        self.wire: dict[sk.Sock, bytearray] = {}
        self._port = 10000

    def sock(
        self,
        state: int = sk.TcpState.ESTABLISHED,
        *,
        kind: str = "tcp",
        family: int = socket.AF_INET,
    ) -> sk.Sock:
        self._port += 1
        if kind == "tcp":
            type_, proto = socket.SOCK_STREAM, socket.IPPROTO_TCP
        else:
            type_, proto = socket.SOCK_DGRAM, socket.IPPROTO_UDP
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        s = sk.Sock(
            self.proto,
            family=family,
            type=type_,
            protocol=proto,
            state=state,
            local_addr=(host, self._port),
            remote_addr=(host, 40000 + self._port),
        )
        self.wire[s] = bytearray()
        return s

    def deliver(self, sender: sk.Sock) -> Callable[[sk.TxAction], None]:
        def carry_out(action: sk.TxAction) -> None:
            data = b"".join(action.bufs)
            assert len(data) == action.nbytes
            if action.kind == "pass":
                self.wire[sender] += data
                return
            target = action.target
            assert target is not None
            if target.psock is None or target.dead:
                raise OSError(errno.EPIPE, "redirect target has no psock")
            if action.ingress:
                target.psock.queue_msg([memoryview(data)])
            else:
                self.wire[target] += data

        return carry_out

    def send(self, s: sk.Sock, data: bytes, *, more: bool = False) -> sk.SendResult:
        """``sendmsg`` on ``s``: through the TX engine when it has a psock."""
        if s.psock is None:
            self.wire[s] += data
            return sk.SendResult(len(data), 0, len(data), False)
        return sk.SendOp(s.psock, data, more=more).run(self.deliver(s))


def payload(n: int) -> bytes:
    """test_sockmap's payload: byte j of a chunk is ``j mod 256``."""
    return bytes(j % 256 for j in range(n))


# test_sockmap send shapes: (iov_len, iov_count, rate)
SEND_ONE = [(1, 1, 1), (1, 1024, 1), (1024, 1, 1)]
SEND_MANY = [(3, 1, 512), (5, 1, 100)]
SEND_LARGE = [(8192, 32, 2)]
TEST_SEND = SEND_ONE + SEND_MANY + SEND_LARGE


def sends(shape: list[tuple[int, int, int]]) -> Iterator[bytes]:
    for iov_len, iov_count, rate in shape:
        chunk = payload(iov_len * iov_count)
        for _ in range(rate):
            yield chunk


def prog4(
    *,
    apply: int = 0,
    cork: int = 0,
    pull: tuple[int, int] = (0, 0),
    push: tuple[int, int] = (0, 0),
    pop: tuple[int, int] = (0, 0),
    redirect: tuple[Any, Any, int] | None = None,
    drop: bool = False,
) -> Callable[[sk.SkMsg], int]:
    """test_sockmap_kern.h's bpf_prog4 / bpf_prog6 / bpf_prog10, with its parameters."""

    def program(msg: sk.SkMsg) -> int:
        sk.msg_apply_bytes(msg, apply)
        sk.msg_cork_bytes(msg, cork)
        sk.msg_pull_data(msg, pull[0], pull[1], 0)
        if sk.msg_push_data(msg, push[0], push[1], 0):
            return sk.SK_DROP
        sk.msg_pop_data(msg, pop[0], pop[1], 0)
        if drop:
            return sk.SK_DROP
        if redirect is not None:
            smap, key, flags = redirect
            return sk.msg_redirect_map(msg, smap, key, flags)
        return sk.SK_PASS

    return program
