"""The demo client of ``skmsg proxy`` (``--demo``).

The demo client (``--demo``) sends a few framed messages one at a time. The
proxy runs in the same process, so after each send the client waits for the
verdict to be counted (an event, not a timer) and knows whether to expect a
reply: a message the policy dropped has none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

import skmsg_core as sk

from ._tls import client_context

if TYPE_CHECKING:
    from ._proxy import Proxy

__all__ = ["DEMO_PAYLOADS", "run_demo"]

#: What the demo client sends, one message each.
DEMO_PAYLOADS = (b"hello", b"kiwi", b"zebra", b"!secret")
#: How long the demo client waits for a verdict, then for a reply.
DEMO_TIMEOUT = 5.0


async def run_demo(proxy: Proxy, say: Callable[[str], None]) -> int:
    """Send :data:`DEMO_PAYLOADS` through ``proxy`` and ``say`` what came back.

    Returns 0 when every message the policy redirected got a reply, else 1.

    Raises:
        OSError: the demo client cannot connect to the proxy.
    """
    framing = proxy.framing
    addr = proxy.listen[0]
    parser = sk.StrParser(framing.parse)
    replies: deque[bytes] = deque()
    missing = 0
    stream: trio.abc.Stream = await trio.open_tcp_stream(addr.host, addr.port)
    tls = proxy.config.tls
    if tls is not None and tls.server is not None:  # --tls: the demo client speaks TLS
        stream = trio.SSLStream(
            stream, client_context(tls.cert_path, verify=tls.cert_path is not None),
            server_hostname=addr.host,
        )
    async with stream:
        for payload in DEMO_PAYLOADS:
            message = framing.frame(payload)
            judged = proxy.counters.msgs
            redirected = proxy.verdict.statistics().redirected
            passed = proxy.verdict.statistics().passed
            await stream.send_all(message)
            with trio.move_on_after(DEMO_TIMEOUT):
                await proxy.counters.wait_msgs(judged + 1)
            stats = proxy.verdict.statistics()
            sent = f"demo: sent {framing.show(message)}"
            if stats.redirected == redirected:
                what = "delivered to the proxy (SK_PASS)" if stats.passed > passed else "dropped"
                say(f"{sent}  ->  {what} by the policy")
                continue
            with trio.move_on_after(DEMO_TIMEOUT):
                while not replies:
                    data = await stream.receive_some()
                    if not data:
                        break
                    replies.extend(bytes(m) for m in parser.feed(data))
            if replies:
                say(f"{sent}  ->  reply {framing.show(replies.popleft())}")
            else:
                missing += 1
                say(f"{sent}  ->  no reply within {DEMO_TIMEOUT:g}s")
    return 1 if missing else 0
