"""Errors that carry the kernel's errno.

Every error skmsg raises for a kernel-defined condition is an ``OSError``
subclass with ``.errno`` set, so ``except PermissionError`` and
``exc.errno == errno.EACCES`` both work, and a message that names the map,
key or socket at fault.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

#: Where two names share a number, the one the kernel's sockmap code uses
#: (Python's ``errno.errorcode`` says ``ENOTSUP`` for 95; the kernel returns
#: ``EOPNOTSUPP``).
_KERNEL_NAMES = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN"}


def errno_name(err: int) -> str:
    """The kernel's name for errno ``err`` (``EOPNOTSUPP``, not ``ENOTSUP``),
    or ``errno N`` for a number with no name."""
    return _KERNEL_NAMES.get(err) or _errno.errorcode.get(err, f"errno {err}")


def kernel_error(err: int, what: str) -> OSError:
    """Build the ``OSError`` subclass Python uses for ``err`` (``EACCES`` gives
    ``PermissionError``, ``EEXIST`` ``FileExistsError``, ...), with ``what`` naming
    the object at fault and the errno's name in the message."""
    name = errno_name(err)
    return OSError(err, f"{what}: {name} ({os.strerror(err)})")


class StrParserError(ConnectionError):
    """The stream parser of a socket failed; the socket is in error with ``.errno``.

    Raised for a bad length from the parse program (``EMSGSIZE``, ``EPROTO``), a
    negative return (that errno), or a parse program that raised (``EPROTO``,
    chained to the program's exception). ``messages`` holds the messages the
    failing feed completed before the error, which the caller still delivers.
    """

    messages: list[memoryview]
    #: Set by the psock: the receive actions for ``messages``.
    actions: list[Any]

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.messages = []
        self.actions = []
