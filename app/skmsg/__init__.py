"""The ``skmsg`` command: ``skmsg proxy``, a message-based L7 proxy and load
balancer on socket maps. This module only re-exports.

``main`` is the console script; :func:`run_proxy` runs the proxy inside a
trio program (``await nursery.start(run_proxy, ProxyConfig(...))`` returns the
running :class:`Proxy`).
"""

from __future__ import annotations

from ._main import build_parser as build_parser
from ._main import main as main
from ._parsers import FRAMINGS as FRAMINGS
from ._parsers import Framing as Framing
from ._parsers import FramingError as FramingError
from ._policy import Policy as Policy
from ._policy import PolicyError as PolicyError
from ._proxy import Address as Address
from ._proxy import Proxy as Proxy
from ._proxy import ProxyConfig as ProxyConfig
from ._proxy import ProxyError as ProxyError
from ._proxy import run_proxy as run_proxy
from ._stats import ProxyStats as ProxyStats
from ._stats import format_table as format_table
