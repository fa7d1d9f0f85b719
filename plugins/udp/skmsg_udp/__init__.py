"""skmsg's built-in UDP plugin.

Registered through the ``skmsg`` entry-point group exactly as a third-party
plugin is, so it is also the template for writing one. It registers no
protocol object yet: the UDP streams arrive with their own issue.
"""

from __future__ import annotations

from collections.abc import Sequence

from skmsg_core import SkProto, hookimpl

__all__ = ["skmsg_protocols"]


@hookimpl
def skmsg_protocols() -> Sequence[SkProto]:
    """No UDP protocol table yet."""
    return ()
