"""How ``skmsg proxy`` writes its log lines: one event per line, ``key=value``.

Every line the command logs on stderr reads::

    ts=2026-01-02T03:04:05.678Z level=info event=client_closed client=127.0.0.1:5555 reason=idle

``ts`` (UTC, milliseconds) and ``level`` come first, then the event as the
proxy or the runtime logged it (:func:`skmsg_core.runtime.log_event`: its
name and fields). A record logged as free text (by a library below) becomes
``event=log logger=NAME msg="..."``, so every line splits into pairs the same
way. Values with spaces, quotes or ``=`` are JSON-quoted. The events and their
fields are listed in ``docs/proxy.md`` ("Logs").
"""

from __future__ import annotations

import logging
import time

from skmsg_core.runtime import format_event, format_fields

__all__ = ["EventFormatter"]


class EventFormatter(logging.Formatter):
    """Formats every record as one ``ts=... level=... event=...`` line (see the module)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        head = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()}"
        if getattr(record, "event", None) is not None:
            body = record.getMessage()
        else:
            body = format_event("log", {"logger": record.name, "msg": record.getMessage()})
        if record.exc_info:  # one line still: the error, never a traceback
            exc = record.exc_info[1]
            body += " " + format_fields({"exc": f"{type(exc).__name__}: {exc}"})
        return f"{head} {body}"
