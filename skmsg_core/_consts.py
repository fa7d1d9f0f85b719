"""Kernel constants: verdicts, attach types, update flags, socket states.

The values are the kernel's UAPI values (``include/uapi/linux/bpf.h``,
``include/net/tcp_states.h``), so a BPF programmer reads them as numbers too.
"""

from __future__ import annotations

import enum

#: Fragments an sk_msg ring holds (``MAX_MSG_FRAGS`` = ``MAX_SKB_FRAGS``).
MAX_MSG_FRAGS = 17
#: Size of one private fragment chunk (the socket's page_frag, a 32 KiB compound page).
FRAG_SIZE = 32768
#: The TLS maximum plaintext per record (``TLS_MAX_PAYLOAD_SIZE``).
TLS_MAX_PAYLOAD_SIZE = 16384
#: The largest a message may grow by ``msg_push_data``: the kernel's largest
#: page allocation (``MAX_ORDER`` pages: 4 MiB), beyond which its push fails
#: with ``-ENOMEM``.
MSG_SIZE_MAX = 4 << 20
#: ``S32_MAX``: the largest socket fd a map update accepts.
S32_MAX = 2**31 - 1
#: ``MAX_BPF_STACK``: the largest SOCKHASH key, in bytes.
MAX_BPF_STACK = 512
#: Default ``sk_rcvbuf``/``sk_sndbuf``-like limit for queues, in bytes.
DEFAULT_QUEUE_BYTES = 212992


class SkAction(enum.IntEnum):
    """``enum sk_action``: the one verdict enum of SK_MSG and SK_SKB programs."""

    SK_DROP = 0
    SK_PASS = 1


#: The verdict that drops the message (0).
SK_DROP = SkAction.SK_DROP
#: The verdict that lets the message through, or carries out the redirect a
#: helper recorded (1).
SK_PASS = SkAction.SK_PASS


class BpfProgType(enum.IntEnum):
    """``enum bpf_prog_type``: the program types skmsg runs."""

    SK_SKB = 14
    SK_MSG = 16
    SK_REUSEPORT = 21


class BpfAttachType(enum.IntEnum):
    """``enum bpf_attach_type``: where on a socket map a program is attached."""

    SK_SKB_STREAM_PARSER = 4
    SK_SKB_STREAM_VERDICT = 5
    SK_MSG_VERDICT = 7
    SK_REUSEPORT_SELECT = 28
    SK_SKB_VERDICT = 38


#: The stream parser: frames received bytes into messages (``BPF_SK_SKB_STREAM_PARSER``).
SK_SKB_STREAM_PARSER = BpfAttachType.SK_SKB_STREAM_PARSER
#: The receive verdict, once per message the parser framed (``BPF_SK_SKB_STREAM_VERDICT``).
SK_SKB_STREAM_VERDICT = BpfAttachType.SK_SKB_STREAM_VERDICT
#: The send verdict, on every message a socket sends (``BPF_SK_MSG_VERDICT``).
SK_MSG_VERDICT = BpfAttachType.SK_MSG_VERDICT
#: The receive verdict without a parser: once per chunk read, or per datagram
#: (``BPF_SK_SKB_VERDICT``).
SK_SKB_VERDICT = BpfAttachType.SK_SKB_VERDICT
#: A reuseport group's selection program (``BPF_SK_REUSEPORT_SELECT``).
SK_REUSEPORT_SELECT = BpfAttachType.SK_REUSEPORT_SELECT

#: The program type each attach type takes (``attach_type_to_prog_type``).
ATTACH_PROG_TYPE: dict[BpfAttachType, BpfProgType] = {
    BpfAttachType.SK_MSG_VERDICT: BpfProgType.SK_MSG,
    BpfAttachType.SK_SKB_STREAM_PARSER: BpfProgType.SK_SKB,
    BpfAttachType.SK_SKB_STREAM_VERDICT: BpfProgType.SK_SKB,
    BpfAttachType.SK_SKB_VERDICT: BpfProgType.SK_SKB,
    BpfAttachType.SK_REUSEPORT_SELECT: BpfProgType.SK_REUSEPORT,
}

#: Map update flag: create the slot or replace what it holds.
BPF_ANY = 0
#: Map update flag: only an empty slot (``EEXIST`` otherwise).
BPF_NOEXIST = 1
#: Map update flag: only a slot that holds a socket (``ENOENT`` otherwise).
BPF_EXIST = 2

#: Redirect flag: into the target's receive queue, not out of its connection.
BPF_F_INGRESS = 1


class TcpState(enum.IntEnum):
    """``include/net/tcp_states.h``; UDP uses ESTABLISHED (connected) and CLOSE too."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12
