"""Drive the sans-I/O core with real policies, no sockets needed.

Two programs from USAGE.md run on in-memory sockets (a protocol table written
the way a plugin writes one): an SK_MSG egress policy that drops any send
starting with b"SECRET", and a message-based load balancer (stream parser +
stream verdict) that routes 4-byte-length-prefixed messages to two backends
by their first byte. Run: ``./dev demo``.
"""

from __future__ import annotations

import errno
import socket

import skmsg_core as sk


class DemoProto(sk.SkProtoBase):
    """A protocol table as a plugin writes one: the generic rules, a name."""

    name = "demo"


def make_sock(port: int) -> sk.Sock:
    return sk.Sock(
        DemoProto(),
        family=socket.AF_INET,
        state=sk.TcpState.ESTABLISHED,
        local_addr=("127.0.0.1", port),
        remote_addr=("127.0.0.1", 40000 + port),
    )


# -- 1. an egress policy (SK_MSG) --------------------------------------------------------


def no_secrets(msg: sk.SkMsg) -> int:
    if sk.msg_pull_data(msg, 0, 6, 0) == 0 and bytes(msg.data) == b"SECRET":
        return sk.SK_DROP
    return sk.SK_PASS


def egress_demo() -> None:
    policed = sk.SockMap(max_entries=8, name="policed")
    policed.attach(no_secrets, sk.SK_MSG_VERDICT)
    stream = make_sock(8080)
    policed.update(0, stream)
    assert stream.psock is not None
    wire = bytearray()
    for data in (b"hello world", b"SECRET plans"):
        op = sk.SendOp(stream.psock, data)
        for action in op:  # the I/O layer's job: carry out each action
            wire += b"".join(action.bufs)
        result = op.result()
        outcome = f"{result.retval} bytes" if result.err == 0 else errno.errorcode[result.err]
        print(f"  send_all({data!r}) -> {outcome}")
    print(f"  on the wire: {bytes(wire)!r}")
    print(f"  {policed.statistics()}")
    assert policed.progs["msg_parser"] is not None
    print(f"  {policed.progs['msg_parser'].statistics()}")


# -- 2. a message-based load balancer (SK_SKB parser + verdict + redirect) ----------------


def lb_demo() -> None:
    backends = sk.SockHash(max_entries=16, name="backends")
    clients = sk.SockMap(max_entries=1024, name="clients")

    def parse(skb: sk.SkBuff) -> int:
        if skb.len < 4:
            return 0
        return 4 + int.from_bytes(skb.data[:4], "big")

    def route(skb: sk.SkBuff) -> int:
        key = b"a" if bytes(skb.data[4:5]) < b"m" else b"b"
        return sk.sk_redirect_hash(skb, backends, key, 0)

    clients.attach(parse, sk.SK_SKB_STREAM_PARSER)
    clients.attach(route, sk.SK_SKB_STREAM_VERDICT)
    a, b, client = make_sock(9001), make_sock(9002), make_sock(7000)
    backends.update(b"a", a)
    backends.update(b"b", b)
    clients.update(0, client)
    assert client.psock is not None
    frames = b"".join(len(m).to_bytes(4, "big") + m for m in (b"apple", b"zebra", b"kiwi"))
    # bytes arrive split at an awkward place, as TCP may deliver them
    for chunk in (frames[:7], frames[7:]):
        for action in client.psock.rx_feed(chunk):
            target = action.target.local_addr if action.target else "-"
            print(f"  {action.kind:8} {action.msgs} msg(s) -> {target}: {b''.join(action.bufs)!r}")
    print(f"  {client.psock.statistics()}")


def main() -> None:
    print("1. egress policy on a stream (SK_MSG):")
    egress_demo()
    print("2. message-based load balancer (SK_SKB parser + verdict + redirect):")
    lb_demo()


if __name__ == "__main__":
    main()
