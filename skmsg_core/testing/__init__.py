"""Testing helpers shipped with skmsg's core (as trio ships ``trio.testing``).

The conformance check every protocol plugin passes
(:func:`check_protocol_plugin`); a program's test run on bytes, with no
socket (:func:`test_run`, the kernel's ``BPF_PROG_TEST_RUN``, and
:func:`test_sock` for its context and redirect targets); and helpers for
tests that use the runtime (:func:`ensure_runtime`, :func:`aclose_all`), and
the clogging a plugin's clogged-pair helper is built on (:func:`clog_both_ways`).
Streams on real sockets come with their protocol plugin
(``skmsg_tcp.testing``). This module only re-exports; it imports trio, as
testing helpers may.
"""

from __future__ import annotations

from ._clog import clog_both_ways as clog_both_ways
from ._conformance import Clogger as Clogger
from ._conformance import PairMaker as PairMaker
from ._conformance import check_protocol_plugin as check_protocol_plugin
from ._runtime import aclose_all as aclose_all
from ._runtime import ensure_runtime as ensure_runtime
from ._test_run import RunResult as RunResult
from ._test_run import test_run as test_run
from ._test_run import test_sock as test_sock
