"""Programs: loading (our verifier), running, verdicts and statistics.

A program is a plain Python callable of one argument, the context: an
:class:`SkMsg` for ``SK_MSG``, an :class:`SkBuff` for ``SK_SKB``, a
:class:`ReuseportMd` for ``SK_REUSEPORT``. :meth:`Program.load` is the
verifier: it rejects at load time what cannot be a program of that type.

Running is fail-closed: a verdict program that raises is a DROP, counted in
``errors`` with the exception kept as ``last_error``; a return value other
than ``SK_PASS`` is a DROP, as the kernel maps it (``sk_psock_map_verd``).
The core does not log; the runtime that drives it does.

Run time is measured only while :func:`enable_stats` is on, as the kernel's
``kernel.bpf_stats_enabled``: timing every run costs more than a small
program does.
"""

from __future__ import annotations

import enum
import errno
import functools
import inspect
import itertools
import time
from collections.abc import Callable
from typing import Any

import attrs

from ._consts import ATTACH_PROG_TYPE, SK_PASS, BpfAttachType, BpfProgType
from ._errors import kernel_error

__all__ = [
    "ProgStats",
    "Program",
    "ProgramShapeError",
    "Verdict",
    "check_program_callable",
    "enable_stats",
    "map_verdict",
]

_prog_ids = itertools.count(1)
_stats_enabled = False


def enable_stats(on: bool = True) -> None:
    """Turn run-time accounting of every program on or off (``bpf_stats_enabled``)."""
    global _stats_enabled
    _stats_enabled = on


class Verdict(enum.IntEnum):
    """The kernel's internal verdicts (``__SK_DROP`` ...), after mapping a return."""

    DROP = 0
    PASS = 2
    REDIRECT = 3
    NONE = 4


_PASS, _DROP, _REDIRECT = Verdict.PASS, Verdict.DROP, Verdict.REDIRECT
_SK_PASS = int(SK_PASS)


def map_verdict(ret: object, redirected: bool) -> Verdict:
    """``sk_psock_map_verd``: ``SK_PASS`` with a redirect target set is REDIRECT,
    ``SK_PASS`` alone is PASS, anything else is DROP."""
    if ret == _SK_PASS and type(ret) is not bool:
        return _REDIRECT if redirected else _PASS
    return _DROP


class ProgramShapeError(TypeError):
    """A callable that cannot be a program: ``kind`` is ``"plain"`` (``async``
    or a generator) or ``"arity"`` (cannot take ``nargs`` arguments); ``sig``
    is its signature text where known."""

    def __init__(self, kind: str, message: str, sig: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.sig = sig


def check_program_callable(func: Callable[..., Any], *, nargs: int = 1) -> None:
    """The verifier's shape rules for a program callable (also used for the CLI's
    two-argument verdicts): a plain function, ``functools.partial`` and callable
    objects seen through, that can be called with ``nargs`` positional arguments.
    A builtin without a signature is trusted.

    Raises:
        ProgramShapeError: it is ``async`` or a generator, or takes other arguments.
    """
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    if not inspect.isroutine(target):
        target = getattr(target, "__call__", target)  # noqa: B004
    if any(
        check(f)
        for f in (func, target)
        for check in (
            inspect.iscoroutinefunction,
            inspect.isasyncgenfunction,
            inspect.isgeneratorfunction,
        )
    ):
        raise ProgramShapeError("plain", "must be a plain function")
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*(object() for _ in range(nargs)))
    except TypeError as exc:
        count = {1: "exactly one argument", 2: "two arguments"}.get(nargs, f"{nargs} arguments")
        raise ProgramShapeError("arity", f"must take {count}", str(sig)) from exc


@attrs.frozen
class ProgStats:
    """What a program did, as ``bpftool prog show`` and our verdict counters tell."""

    id: int
    name: str
    prog_type: BpfProgType
    run_cnt: int
    run_time_ns: int
    passed: int
    dropped: int
    redirected: int
    errors: int


@attrs.define(eq=False)
class Program:
    """A loaded program: a callable, its type, an id and its counters.

    Build one with :meth:`load`. Calling :meth:`run_verdict` or :meth:`run`
    counts the run; the counters are read with :meth:`statistics`.
    """

    func: Callable[[Any], Any]
    prog_type: BpfProgType
    name: str
    id: int = attrs.field(factory=lambda: next(_prog_ids))
    run_cnt: int = 0
    run_time_ns: int = 0
    passed: int = 0
    dropped: int = 0
    redirected: int = 0
    errors: int = 0
    last_error: BaseException | None = None
    # run_verdict's runners, made on first use: untimed and timed (enable_stats)
    _runners: list[Callable[[Any], Verdict] | None] = attrs.field(
        factory=lambda: [None, None], init=False, repr=False, eq=False
    )

    @classmethod
    def load(
        cls, func: Callable[[Any], Any], prog_type: BpfProgType, *, name: str | None = None
    ) -> Program:
        """Verify ``func`` as a program of ``prog_type`` and load it.

        Raises:
            OSError(EINVAL): ``func`` is not callable, is ``async`` or a generator
                function, or cannot be called with exactly one argument (the context).
        """
        prog_type = BpfProgType(prog_type)
        label = name or getattr(func, "__qualname__", None) or type(func).__qualname__
        if isinstance(func, Program):
            raise kernel_error(errno.EINVAL, f"program {label} is already loaded")
        if not callable(func):
            raise kernel_error(errno.EINVAL, f"program {label!r} is not callable")
        try:
            check_program_callable(func, nargs=1)
        except ProgramShapeError as exc:
            if exc.kind == "plain":
                why = (
                    f"must be a plain function: a {prog_type.name} program runs to "
                    "completion and cannot await or yield"
                )
            else:
                why = f"{exc}, the context"
            raise kernel_error(errno.EINVAL, f"program {label}{exc.sig} {why}") from exc
        return cls(func, prog_type, str(label))

    def check_attach(self, attach_type: BpfAttachType) -> None:
        """Raise ``OSError(EINVAL)`` unless this program may attach at ``attach_type``."""
        want = ATTACH_PROG_TYPE[attach_type]
        if self.prog_type != want:
            raise kernel_error(
                errno.EINVAL,
                f"program {self.name} is {self.prog_type.name}, "
                f"{attach_type.name} takes {want.name}",
            )

    def run_verdict(self, ctx: Any) -> Verdict:
        """Run as a verdict program on ``ctx`` (an SkMsg or SkBuff) and map the result.

        Never raises: an exception from the program is a DROP, counted in
        ``errors`` and kept in ``last_error``. The runner is made once (per
        :func:`enable_stats` state), not per call.
        """
        return self.verdict_runner()(ctx)

    def verdict_runner(self) -> Callable[[Any], Verdict]:
        """A function that runs this program as :meth:`run_verdict` does, bound
        once for a hot loop. Run time is measured if :func:`enable_stats` was on
        when the runner was asked for. Made once per program and stats state,
        not per call (engines ask for it per send)."""
        timed = 1 if _stats_enabled else 0
        run = self._runners[timed]
        if run is None:
            run = self._runners[timed] = self._make_runner(timed == 1)
        return run

    def _make_runner(self, timed: bool) -> Callable[[Any], Verdict]:
        func = self.func
        account = self.account
        sk_pass = SK_PASS

        def run(ctx: Any) -> Verdict:
            try:
                ret = func(ctx)
            except Exception as exc:
                return account(None, ctx, exc)
            if ret is sk_pass and ctx.sk_redir is None:  # the common case, inline
                self.run_cnt += 1
                self.passed += 1
                return _PASS
            return account(ret, ctx)

        if not timed:
            return run

        def run_timed(ctx: Any) -> Verdict:
            t0 = time.perf_counter_ns()
            try:
                return run(ctx)
            finally:
                self.run_time_ns += time.perf_counter_ns() - t0

        return run_timed

    def account(self, ret: object, ctx: Any, error: BaseException | None = None) -> Verdict:
        """Count one run that returned ``ret`` on ``ctx`` (or raised ``error``)
        and map it as :meth:`run_verdict` does: ``SK_PASS`` with
        ``ctx.sk_redir`` set is REDIRECT, ``SK_PASS`` alone PASS, anything
        else (a raise too, also counted in ``errors``) DROP. For an engine that
        calls :meth:`timed_func` itself and sums the plain PASS runs of a batch
        into the counters on its own."""
        self.run_cnt += 1
        if error is not None:
            self.errors += 1
            self.last_error = error
            verdict = _DROP
        else:
            verdict = map_verdict(ret, ctx.sk_redir is not None)
        if verdict is _PASS:
            self.passed += 1
        elif verdict is _REDIRECT:
            self.redirected += 1
        else:
            self.dropped += 1
        return verdict

    def timed_func(self) -> Callable[[Any], Any]:
        """The program's callable for an engine's hot loop that keeps the counters
        itself: ``func`` as it is, or, if :func:`enable_stats` is on now, a
        wrapper that adds each call's duration to ``run_time_ns``."""
        func = self.func
        if not _stats_enabled:
            return func

        def timed(ctx: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return func(ctx)
            finally:
                self.run_time_ns += time.perf_counter_ns() - t0

        return timed

    def run(self, ctx: Any) -> Any:
        """Run as a non-verdict program (a parser, a reuseport selector), counting
        the run; exceptions propagate to the caller, who decides what they mean."""
        self.run_cnt += 1
        if not _stats_enabled:
            try:
                return self.func(ctx)
            except Exception:
                self.errors += 1
                raise
        t0 = time.perf_counter_ns()
        try:
            return self.func(ctx)
        except Exception:
            self.errors += 1
            raise
        finally:
            self.run_time_ns += time.perf_counter_ns() - t0

    def statistics(self) -> ProgStats:
        """A snapshot of the counters."""
        return ProgStats(
            self.id,
            self.name,
            self.prog_type,
            self.run_cnt,
            self.run_time_ns,
            self.passed,
            self.dropped,
            self.redirected,
            self.errors,
        )

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.prog_type.name} id={self.id}>"
