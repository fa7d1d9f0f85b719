"""``test_run``: run a program on bytes, with no socket (``BPF_PROG_TEST_RUN``).

How a policy is unit-tested: hand the program the bytes a message would carry
and look at what it did, exactly as a socket's engine would see it. The
program runs through the same fail-closed runner the engines use (a raise,
a value that is not a verdict or a run over budget is a DROP, counted), its
helpers really run on a real :class:`~skmsg_core.SkMsg` or
:class:`~skmsg_core.SkBuff`, and its redirect targets are the sockets of the
maps it was given (:func:`test_sock` makes one that needs no I/O).

Sans-I/O: nothing here touches a socket or imports trio.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .._budget import DEFAULT_BUDGET, program_caller
from .._consts import ATTACH_PROG_TYPE, BPF_F_INGRESS, SK_MSG_VERDICT, BpfAttachType, TcpState
from .._progs import Program, Verdict
from .._ring import SkMsg
from .._skb import SkBuff
from .._sock import SkProtoBase, Sock

__all__ = ["RunResult", "test_run", "test_sock"]

_VERDICTS = {
    BpfAttachType.SK_MSG_VERDICT,
    BpfAttachType.SK_SKB_STREAM_VERDICT,
    BpfAttachType.SK_SKB_VERDICT,
}
_PARSER = BpfAttachType.SK_SKB_STREAM_PARSER


@attrs.frozen
class RunResult:
    """What one program run did (the last of ``repeat`` runs).

    ``verdict`` is the engine's reading of the run (PASS, DROP or REDIRECT:
    ``Verdict.NONE`` for a parser); ``retval`` what the program returned;
    ``error`` the error the run was counted with (a raise, a
    :class:`~skmsg_core.ProgramTimeout`, a :class:`~skmsg_core.VerdictError`,
    a :class:`~skmsg_core.HelperError`), or None. ``data`` is the message
    after the program and its helpers (pushed bytes, popped ranges, writes
    through ``data``). ``redirect`` is the socket a redirect chose, with
    ``flags`` (``ingress``: ``BPF_F_INGRESS`` was set). ``apply_bytes`` and
    ``cork_bytes`` are what ``msg_apply_bytes``/``msg_cork_bytes`` asked for
    (SK_MSG). ``length`` is a parser's answer (the next message's length, 0
    for "need more", a negative errno), None for verdict programs.
    ``duration_ns`` is the mean wall time of one run. ``program`` is the
    loaded program, whose counters include these runs.
    """

    verdict: Verdict
    retval: object
    error: BaseException | None
    data: bytes
    redirect: Sock | None
    flags: int
    ingress: bool
    apply_bytes: int
    cork_bytes: int
    length: int | None
    duration_ns: int
    program: Program


def test_sock(
    *,
    family: int = socket.AF_INET,
    local: tuple[str, int] | None = None,
    remote: tuple[str, int] | None = None,
    kind: str = "tcp",
    name: str = "test",
) -> Sock:
    """A socket that exists only for programs: the context's ``sk`` (its
    addresses and ports), or a slot of a map a program redirects to. It does
    no I/O; a redirect to it is what :class:`RunResult` reports.

    Raises:
        ValueError: ``kind`` is neither ``"tcp"`` nor ``"udp"``.
    """
    if kind not in ("tcp", "udp"):
        raise ValueError(f"test_sock: kind is 'tcp' or 'udp', not {kind!r}")
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    tcp = kind == "tcp"
    proto = SkProtoBase()
    proto.name = f"{name}-{kind}"
    return Sock(
        proto,
        family=family,
        type=socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM,
        protocol=socket.IPPROTO_TCP if tcp else socket.IPPROTO_UDP,
        state=TcpState.ESTABLISHED,
        local_addr=local or (host, 40000),
        remote_addr=remote or (host, 50000),
    )


def test_run(
    program: Program | Callable[[Any], Any],
    data: bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview],
    attach_type: BpfAttachType,
    *,
    sk: Sock | None = None,
    repeat: int = 1,
    budget: float | None = DEFAULT_BUDGET,
) -> RunResult:
    """Run ``program`` as ``attach_type`` runs it, on a message of ``data``.

    ``program``: a loaded :class:`~skmsg_core.Program` or a plain function
    (loaded here, through the verifier, with ``budget``). ``data``: the
    message's bytes; for ``SK_MSG_VERDICT`` a sequence of buffers is the
    message's elements, one each (a ``sendmsg`` iovec's pages). ``sk``: the
    socket the context belongs to (default :func:`test_sock`). ``repeat``:
    run that many times, each on a fresh message of ``data``, and report the
    last run and the mean run time (the kernel's ``repeat``).

    Raises:
        OSError(EINVAL): the program fails the verifier or does not fit
            ``attach_type`` (as :meth:`SockMap.attach` raises).
        ValueError: ``attach_type`` is not one of ``SK_MSG_VERDICT``,
            ``SK_SKB_STREAM_VERDICT``, ``SK_SKB_VERDICT``,
            ``SK_SKB_STREAM_PARSER``; ``repeat`` is below 1; a buffer of
            ``data`` is empty.
    """
    attach_type = BpfAttachType(attach_type)
    if attach_type not in _VERDICTS and attach_type is not _PARSER:
        raise ValueError(
            f"test_run runs SK_MSG_VERDICT, SK_SKB_STREAM_VERDICT, SK_SKB_VERDICT or "
            f"SK_SKB_STREAM_PARSER programs, not {attach_type.name}"
        )
    if repeat < 1:
        raise ValueError(f"test_run: repeat must be at least 1, not {repeat}")
    if not isinstance(program, Program):
        program = Program.load(program, ATTACH_PROG_TYPE[attach_type], budget=budget)
    program.check_attach(attach_type)
    owner = sk or test_sock()
    errors_before = program.errors
    total = 0
    ctx: Any = None
    ret: object = None
    verdict = Verdict.NONE
    for _ in range(repeat):
        ctx = _context(attach_type, data, owner)
        start = time.perf_counter_ns()
        if attach_type is _PARSER:
            try:
                ret = program.run(ctx)
            except KeyboardInterrupt:
                raise
            except BaseException:  # counted by Program.run, kept as last_error
                ret = None
        else:
            ret, verdict = _run_verdict(program, ctx)
        total += time.perf_counter_ns() - start
    error = program.last_error if program.errors > errors_before else None
    is_msg = attach_type is SK_MSG_VERDICT
    redirect = ctx.sk_redir if verdict is Verdict.REDIRECT else None
    flags = ctx.flags if redirect is not None else 0
    return RunResult(
        verdict=verdict,
        retval=ret,
        error=error,
        data=ctx.tobytes() if is_msg else bytes(ctx.data),
        redirect=redirect,
        flags=flags,
        ingress=bool(flags & BPF_F_INGRESS),
        apply_bytes=ctx.apply_bytes if is_msg else 0,
        cork_bytes=ctx.cork_bytes if is_msg else 0,
        length=ret if attach_type is _PARSER and type(ret) is int else None,
        duration_ns=total // repeat,
        program=program,
    )


test_run.__test__ = False  # type: ignore[attr-defined]  # pytest: a helper, not a test
test_sock.__test__ = False  # type: ignore[attr-defined]


@program_caller
def _run_verdict(program: Program, ctx: Any) -> tuple[object, Verdict]:
    """What a runner does (:meth:`Program.run_verdict`), keeping the value the
    program returned: call it, end the run, count and map the result."""
    try:
        ret = program.func(ctx)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # fail closed, as every runner
        program.after_run(ctx)
        return exc, program.account(None, ctx, exc)
    program.after_run(ctx)
    return ret, program.account(ret, ctx)


def _context(
    attach_type: BpfAttachType,
    data: bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview],
    sk: Sock,
) -> SkMsg | SkBuff:
    if attach_type is SK_MSG_VERDICT:
        if isinstance(data, (bytes, bytearray, memoryview)):
            msg = SkMsg.from_bytes(data)
        else:
            msg = SkMsg.from_frags([bytearray(b) for b in data])
        msg.sk = sk
        msg.compute_data_pointers()
        return msg
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = b"".join(data)
    skb = SkBuff(sk)
    skb.reset(memoryview(bytes(data)).toreadonly())
    return skb
