"""The TCP plugin's testing helpers (as trio ships ``trio.testing``).

Real loopback streams (:func:`tcp_stream_pair`, :func:`clog_tcp_pair`) and a
running test server whose accepted streams sit in a socket map with programs
attached (:func:`open_test_server`). The protocol-generic helpers
(:func:`skmsg_core.testing.check_protocol_plugin`, ``aclose_all``,
``ensure_runtime``) are the core's. This module only re-exports.
"""

from __future__ import annotations

from ._streams import Handler as Handler
from ._streams import ProgramLike as ProgramLike
from ._streams import TestServer as TestServer
from ._streams import clog_tcp_pair as clog_tcp_pair
from ._streams import echo as echo
from ._streams import open_test_server as open_test_server
from ._streams import tcp_stream_pair as tcp_stream_pair
