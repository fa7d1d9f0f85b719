"""skmsg: the Linux sk_msg / sockmap / kTLS programming model in user space.

``skmsg_core`` is the generic sk_msg layer (the kernel's ``net/core/skmsg.c``): the
message ring and its helpers, programs and verdicts, socket maps, psocks, the
TX verdict engine and the stream parser. It is sans-I/O: it imports neither
trio nor a socket API, and protocols plug in through :mod:`.hookspecs`.
This module only re-exports.
"""

from __future__ import annotations

from ._budget import DEFAULT_BUDGET as DEFAULT_BUDGET
from ._budget import ProgramTimeout as ProgramTimeout
from ._budget import program_caller as program_caller
from ._consts import BPF_ANY as BPF_ANY
from ._consts import BPF_EXIST as BPF_EXIST
from ._consts import BPF_F_INGRESS as BPF_F_INGRESS
from ._consts import BPF_NOEXIST as BPF_NOEXIST
from ._consts import FRAG_SIZE as FRAG_SIZE
from ._consts import MAX_MSG_FRAGS as MAX_MSG_FRAGS
from ._consts import MSG_SIZE_MAX as MSG_SIZE_MAX
from ._consts import SK_DROP as SK_DROP
from ._consts import SK_MSG_VERDICT as SK_MSG_VERDICT
from ._consts import SK_PASS as SK_PASS
from ._consts import SK_REUSEPORT_SELECT as SK_REUSEPORT_SELECT
from ._consts import SK_SKB_STREAM_PARSER as SK_SKB_STREAM_PARSER
from ._consts import SK_SKB_STREAM_VERDICT as SK_SKB_STREAM_VERDICT
from ._consts import SK_SKB_VERDICT as SK_SKB_VERDICT
from ._consts import TLS_MAX_PAYLOAD_SIZE as TLS_MAX_PAYLOAD_SIZE
from ._consts import BpfAttachType as BpfAttachType
from ._consts import BpfProgType as BpfProgType
from ._consts import SkAction as SkAction
from ._consts import TcpState as TcpState
from ._errors import StrParserError as StrParserError
from ._errors import errno_name as errno_name
from ._errors import kernel_error as kernel_error
from ._helpers import msg_apply_bytes as msg_apply_bytes
from ._helpers import msg_cork_bytes as msg_cork_bytes
from ._helpers import msg_pop_data as msg_pop_data
from ._helpers import msg_pull_data as msg_pull_data
from ._helpers import msg_push_data as msg_push_data
from ._maps import MapStats as MapStats
from ._maps import SockHash as SockHash
from ._maps import SockMap as SockMap
from ._maps import SockMapBase as SockMapBase
from ._maps import SockMapLink as SockMapLink
from ._plugins import Plugins as Plugins
from ._plugins import get_plugin_manager as get_plugin_manager
from ._plugins import plugins as plugins
from ._plugins import sock_from as sock_from
from ._progs import HelperError as HelperError
from ._progs import Program as Program
from ._progs import ProgramShapeError as ProgramShapeError
from ._progs import ProgStats as ProgStats
from ._progs import Verdict as Verdict
from ._progs import VerdictError as VerdictError
from ._progs import check_program_callable as check_program_callable
from ._progs import describe_error as describe_error
from ._progs import describe_value as describe_value
from ._progs import enable_stats as enable_stats
from ._progs import set_error_observer as set_error_observer
from ._progs import stats_enabled as stats_enabled
from ._progs import verdict_of as verdict_of
from ._psock import PsockStats as PsockStats
from ._psock import RxAction as RxAction
from ._psock import SkPsock as SkPsock
from ._psock import take_queued as take_queued
from ._redirect import msg_redirect_hash as msg_redirect_hash
from ._redirect import msg_redirect_map as msg_redirect_map
from ._redirect import sk_redirect_hash as sk_redirect_hash
from ._redirect import sk_redirect_map as sk_redirect_map
from ._reuseport import ReuseportGroup as ReuseportGroup
from ._reuseport import ReuseportMd as ReuseportMd
from ._reuseport import sk_select_reuseport as sk_select_reuseport
from ._ring import FileSpan as FileSpan
from ._ring import PageFrag as PageFrag
from ._ring import Sge as Sge
from ._ring import SkMsg as SkMsg
from ._ring import pread_exactly as pread_exactly
from ._skb import SkBuff as SkBuff
from ._sock import SkProto as SkProto
from ._sock import SkProtoBase as SkProtoBase
from ._sock import Sock as Sock
from ._sock import next_cookie as next_cookie
from ._strparser import LengthPrefixParser as LengthPrefixParser
from ._strparser import StrParser as StrParser
from ._tx import FILE_MSG_BYTES as FILE_MSG_BYTES
from ._tx import FileSendOp as FileSendOp
from ._tx import SendOp as SendOp
from ._tx import SendOpBase as SendOpBase
from ._tx import SendResult as SendResult
from ._tx import TxAction as TxAction
from .hookspecs import hookimpl as hookimpl
from .hookspecs import hookspec as hookspec

__version__ = "0.1.0"
