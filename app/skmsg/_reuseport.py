"""Classic BPF programs for a reuseport group (``SO_ATTACH_REUSEPORT_CBPF``).

The kernel runs a group's program for each new connection (a TCP SYN; for
UDP, each datagram no connected socket takes), and hands it to the
socket at the index the program returns, counting the group's sockets in the
order they joined it; an index past the last socket falls back to the
kernel's hash of the addresses (``reuseport_select_sock``).

:func:`select_by_cpu` selects the socket whose index is the position, in a
list, of the CPU the kernel handles the packet on (``SKF_AD_CPU``): with one
worker pinned to each CPU in that order, a connection is accepted on the CPU
its SYN arrived on.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence
from typing import TypeAlias

import trio

#: A socket whose options can be set: the stdlib's or trio's.
AnySocket: TypeAlias = socket.socket | trio.socket.SocketType

__all__ = ["MAX_CPUS", "select_by_cpu"]

_SO_ATTACH_REUSEPORT_CBPF = 51
# classic BPF opcodes (linux/bpf_common.h, linux/filter.h)
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
_SKF_AD_CPU = (-0x1000 + 36) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_CPU
#: ``select_by_cpu`` takes at most this many CPUs (two instructions each, and
#: classic BPF allows 4096).
MAX_CPUS = 1024
_INSN = struct.Struct("HBBI")  # struct sock_filter


def select_by_cpu(raw: AnySocket, cpus: Sequence[int]) -> None:
    """Attach to ``raw``'s reuseport group a program that selects the socket at
    index ``i`` for a packet the kernel handles on CPU ``cpus[i]``; a packet on
    any other CPU is spread by the kernel's hash.

    Raises:
        ValueError: ``cpus`` is empty, longer than :data:`MAX_CPUS`, or holds a
            number that is not a CPU (negative).
        OSError: the kernel refused it (``raw`` has no ``SO_REUSEPORT``).
    """
    if not cpus or len(cpus) > MAX_CPUS:
        raise ValueError(f"select_by_cpu: 1 to {MAX_CPUS} CPUs, not {len(cpus)}")
    if any(type(c) is not int or c < 0 for c in cpus):
        raise ValueError(f"select_by_cpu: CPU numbers are whole numbers >= 0: {list(cpus)}")
    insns = [(_LD_W_ABS, 0, 0, _SKF_AD_CPU)]
    for i, cpu in enumerate(cpus):
        insns += [(_JEQ_K, 0, 1, cpu), (_RET_K, 0, 0, i)]
    insns.append((_RET_K, 0, 0, 0xFFFFFFFF))  # no such socket: the kernel's hash
    _attach(raw, insns)


def _attach(raw: AnySocket, insns: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(_INSN.pack(*insn) for insn in insns)
    buf = (ctypes.c_ubyte * len(code)).from_buffer_copy(code)
    prog = struct.pack("@HP", len(insns), ctypes.addressof(buf))  # struct sock_fprog
    raw.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, prog)
