"""Testing helpers shipped with skmsg (as trio ships ``trio.testing``).

Real loopback streams (:func:`tcp_stream_pair`), a running test server whose
accepted streams sit in a socket map with programs attached
(:func:`open_test_server`), and the conformance check every protocol plugin
passes (:func:`check_protocol_plugin`). This module only re-exports; it
imports trio, as testing helpers may.
"""

from __future__ import annotations

from ._conformance import Clogger as Clogger
from ._conformance import PairMaker as PairMaker
from ._conformance import check_protocol_plugin as check_protocol_plugin
from ._streams import Handler as Handler
from ._streams import ProgramLike as ProgramLike
from ._streams import TestServer as TestServer
from ._streams import aclose_all as aclose_all
from ._streams import clog_tcp_pair as clog_tcp_pair
from ._streams import echo as echo
from ._streams import ensure_runtime as ensure_runtime
from ._streams import open_test_server as open_test_server
from ._streams import tcp_stream_pair as tcp_stream_pair
