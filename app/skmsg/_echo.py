"""The embedded echo backends of ``skmsg proxy``.

An echo backend frames what it receives with the proxy's framing (the core's
:class:`~skmsg_core.StrParser`, sans-I/O) and answers each message with the
same message tagged with its name (``[backend 0] ...``; an HTTP request gets
a ``200`` response), so a reply shows which backend served it. With a policy
file's own parser it echoes each message unchanged.
"""

from __future__ import annotations

import logging

import trio

import skmsg_core as sk
from skmsg_core import describe_error
from skmsg_core.runtime import RateLimitedLog, escapes_boundary

from ._parsers import DEFAULT_MAX_MESSAGE, Framing

__all__ = ["serve_echo"]

limited_log = RateLimitedLog(logging.getLogger("skmsg"))


async def serve_echo(
    index: int,
    framing: Framing,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an echo backend named ``backend {index}`` on 127.0.0.1 (an ephemeral
    port) until cancelled, for messages of up to ``max_message_size`` bytes;
    ``task_status.started`` gets its ``(host, port)``.

    Raises:
        OSError: it cannot listen.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    tag = f"[backend {index}] ".encode()

    async def echo(stream: trio.SocketStream) -> None:
        # one connection's failure (a policy parser's exception of any kind) ends
        # that connection only, as the proxy's own clients' do
        parser = sk.StrParser(framing.parse, max_msg_size=max_message_size)
        async with stream:
            try:
                async for data in stream:
                    out = b"".join(framing.reply(tag, bytes(m)) for m in parser.feed(data))
                    if out:
                        await stream.send_all(out)
            except BaseException as exc:
                if escapes_boundary(exc):
                    raise
                if not isinstance(exc, (sk.StrParserError, trio.BrokenResourceError)):
                    limited_log.event(
                        ("echo", type(exc)), "echo_error", backend=index,
                        error=describe_error(exc),
                    )

    async with trio.open_nursery() as nursery:
        host, port = listeners[0].socket.getsockname()[:2]
        await nursery.start(trio.serve_listeners, echo, listeners)
        task_status.started((str(host), int(port)))
