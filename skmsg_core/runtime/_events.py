"""Log lines as events: one line per event, ``key=value`` pairs (logfmt).

Rules
-----
- A line is ``event=NAME`` followed by the event's fields in the order given:
  ``event=client_closed client=127.0.0.1:5555 reason=idle bytes_in=34``.
- A value is written bare when it is a non-empty run of printable characters
  without spaces, ``"`` or ``=``; otherwise it is quoted as a JSON string
  (``error="connection refused (ECONNREFUSED)"``), so every line splits back
  into its pairs unambiguously. ``None`` is written ``-``; ``True``/``False``
  as ``true``/``false``; floats with up to 6 significant digits.
- The event's name and fields also ride on the record (``record.event``,
  ``record.fields``) for handlers that want them without parsing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["format_event", "format_fields", "log_event"]

_PLAIN = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "-_.:/[]()@%+,;*#~!?<>&|^'$"
)


def _value(value: object) -> str:
    if value is None:
        return "-"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def format_fields(fields: dict[str, Any]) -> str:
    """``k=v k=v ...`` for ``fields``, in their order (see the rules)."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def format_event(event: str, fields: dict[str, Any]) -> str:
    """``event=NAME k=v ...``: the line for ``event`` with ``fields`` (see the rules)."""
    return format_fields({"event": event, **fields})


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields`` as one ``key=value`` line at ``level`` (nothing
    is formatted when ``logger`` would drop the record)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", format_event(event, fields),
                   extra={"event": event, "fields": fields})
