"""The skmsg runtime: the one part of ``skmsg_core`` that imports trio.

It carries out the sans-I/O core's actions and runs the receive pumps in a
nursery the application owns. This module only re-exports.
"""

from __future__ import annotations

from ._events import format_event as format_event
from ._events import format_fields as format_fields
from ._events import log_event as log_event
from ._runtime import DatagramEndpoint as DatagramEndpoint
from ._runtime import Endpoint as Endpoint
from ._runtime import RateLimitedLog as RateLimitedLog
from ._runtime import Runtime as Runtime
from ._runtime import current_runtime as current_runtime
from ._runtime import data_ready as data_ready
from ._runtime import escapes_boundary as escapes_boundary
from ._runtime import ingress_put as ingress_put
from ._runtime import ingress_try as ingress_try
from ._runtime import open_runtime as open_runtime
from ._runtime import socket_error as socket_error
from ._runtime import space_freed as space_freed
from ._runtime import tx_redirect as tx_redirect
