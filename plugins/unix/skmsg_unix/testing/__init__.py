"""Testing helpers of the Unix plugin: socketpairs, and clogging a stream pair.

Everything is real: kernel socketpairs, the plugin's own sockets, the
runtime's receive pumps. :func:`clog_unix_pair` is what
``skmsg_core.testing.check_protocol_plugin(clog=...)`` takes to run trio's
clogged-stream tests on :class:`~skmsg_unix.UnixStream`. This module only
re-exports.
"""

from __future__ import annotations

from .._open import unix_dgram_pair as unix_dgram_pair
from .._open import unix_stream_pair as unix_stream_pair
from ._clog import clog_unix_pair as clog_unix_pair
