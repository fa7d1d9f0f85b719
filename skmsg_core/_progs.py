"""Programs: loading (our verifier), running, verdicts and statistics.

A program is a plain Python callable of one argument, the context: an
:class:`SkMsg` for ``SK_MSG``, an :class:`SkBuff` for ``SK_SKB``, a
:class:`ReuseportMd` for ``SK_REUSEPORT``. :meth:`Program.load` is the
verifier: it rejects at load time what cannot be a program of that type.

Running is fail-closed, and nothing a program does escapes its runner:

- a program that raises (any exception, ``SystemExit`` and other
  ``BaseException`` subclasses included; only ``KeyboardInterrupt`` goes on
  up, as the user's Ctrl-C) is a DROP, counted in ``errors`` with the
  exception kept as ``last_error``;
- only an ``int`` equal to ``SK_PASS`` (1) is a pass, and only one equal to
  ``SK_DROP`` (0) a plain drop, as the kernel's verifier allows no other
  return (``sk_psock_map_verd``); every other value (``True``, ``1.0``,
  ``None``, an object whose ``==`` says yes or raises) is a DROP counted in
  ``errors`` with a :class:`VerdictError` naming the value's type. The value
  is never compared, so none of its code runs;
- a run that goes on longer than the program's budget is interrupted
  (:mod:`._budget`) and is a DROP counted in ``errors`` and ``timeouts``.

Every error is also handed to the error observer, if one is set
(:func:`set_error_observer`): the core does not log, the runtime does.

Run time is measured only while :func:`enable_stats` is on, as the kernel's
``kernel.bpf_stats_enabled``: timing every run costs more than a small
program does.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import inspect
import itertools
import time
from collections.abc import Callable
from typing import Any

import attrs

from ._budget import DEFAULT_BUDGET, ProgramTimeout, program_caller, set_budget
from ._consts import ATTACH_PROG_TYPE, SK_DROP, SK_PASS, BpfAttachType, BpfProgType
from ._errors import kernel_error
from ._verifier import find_data_misuse

__all__ = [
    "ProgStats",
    "Program",
    "ProgramShapeError",
    "Verdict",
    "HelperError",
    "VerdictError",
    "check_program_callable",
    "describe_error",
    "describe_value",
    "enable_stats",
    "stats_enabled",
    "map_verdict",
    "set_error_observer",
    "verdict_of",
]

_prog_ids = itertools.count(1)
_stats_enabled = False


def enable_stats(on: bool = True) -> None:
    """Turn run-time accounting of every program on or off (``bpf_stats_enabled``)."""
    global _stats_enabled
    _stats_enabled = on


def stats_enabled() -> bool:
    """Whether run-time accounting is on (:func:`enable_stats`)."""
    return _stats_enabled


class Verdict(enum.IntEnum):
    """The kernel's internal verdicts (``__SK_DROP`` ...), after mapping a return."""

    DROP = 0
    PASS = 2
    REDIRECT = 3
    NONE = 4


_PASS, _DROP, _REDIRECT = Verdict.PASS, Verdict.DROP, Verdict.REDIRECT
_SK_PASS = int(SK_PASS)
_SK_PASS_MEMBER, _SK_DROP_MEMBER = SK_PASS, SK_DROP

_OUR_MODULES = ("builtins", "skmsg_core._budget", "skmsg_core._progs")
#: Called with (program, error) for every error a run records; see set_error_observer.
_error_observer: Callable[[Program, BaseException], None] | None = None


class HelperError(ValueError):
    """A helper a program called was given what it can never take (a key of
    the wrong type or size for the map, flags it does not know): counted as the
    run's error with this reason, whatever the program then returned."""


class VerdictError(TypeError):
    """A verdict program returned something that is not a verdict (kept as the
    program's ``last_error``; the run was a DROP)."""


def set_error_observer(observer: Callable[[Program, BaseException], None] | None) -> None:
    """Have ``observer(program, error)`` called for every error a program run
    records (a raise, a timeout, a value that is not a verdict), after it is
    counted. The runtime sets one that logs; an observer that raises is ignored.
    ``None`` removes it."""
    global _error_observer
    _error_observer = observer


def verdict_of(ret: object) -> bool | None:
    """What a verdict program's return value means, without running any of its
    code: True for a pass (an ``int`` equal to ``SK_PASS``), False for a drop
    (an ``int`` equal to ``SK_DROP``), None for anything else (a ``bool``, a
    float, ``None``, an object of any other type): not a verdict."""
    if ret is _SK_PASS_MEMBER:
        return True
    if ret is _SK_DROP_MEMBER:
        return False
    t = type(ret)
    if t is bool or not (t is int or issubclass(t, int)):
        return None
    value = int.__int__(ret)  # type: ignore[arg-type]  # the int's own value: no subclass code
    if value == 1:
        return True
    if value == 0:
        return False
    return None


def describe_value(ret: object) -> str:
    """``ret``'s type, and its value where printing it runs no user code."""
    t = type(ret)
    name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    if ret is None:
        return name
    if t in (int, float, complex, bool, str, bytes):  # exact builtins: repr runs no user code
        text = repr(ret)
        return f"{name} {text[:40]}{'...' if len(text) > 40 else ''}"
    return name


def describe_error(exc: BaseException) -> str:
    """``exc``'s type and message, for a log line or an error message. The
    message is given only where making it runs no code of the program's (the
    builtin ``__str__`` over builtin arguments); else the type alone."""
    t = type(exc)
    name = t.__qualname__
    if t.__str__ is not BaseException.__str__ and t.__module__ not in _OUR_MODULES:
        return name
    if not all(type(a) in (str, int, float, bytes) for a in exc.args):
        return name
    text = str(exc)
    return f"{name}: {text[:200]}" if text else name


def map_verdict(ret: object, redirected: bool) -> Verdict:
    """``sk_psock_map_verd``: ``SK_PASS`` with a redirect target set is REDIRECT,
    ``SK_PASS`` alone is PASS, anything else is DROP (see :func:`verdict_of`)."""
    if verdict_of(ret):
        return _REDIRECT if redirected else _PASS
    return _DROP


class ProgramShapeError(TypeError):
    """A callable that cannot be a program: ``kind`` is ``"plain"`` (``async``
    or a generator), ``"arity"`` (cannot take ``nargs`` arguments) or
    ``"memoryview"`` (uses its context's ``data`` as if it were ``bytes``: the
    message names the function, the line and what to write instead); ``sig``
    is its signature text where known."""

    def __init__(self, kind: str, message: str, sig: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.sig = sig


def check_program_callable(func: Callable[..., Any], *, nargs: int = 1) -> None:
    """The verifier's shape rules for a program callable (also used for the CLI's
    two-argument verdicts): a plain function, ``functools.partial`` and callable
    objects seen through, that can be called with ``nargs`` positional arguments.
    A builtin without a signature is trusted. Its code must not search, order
    or call ``bytes``-only methods on its context's ``data`` (a memoryview):
    see :mod:`skmsg_core._verifier`.

    Raises:
        ProgramShapeError: it is ``async`` or a generator, takes other arguments,
            or misuses ``data`` (kind ``"memoryview"``).
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
    misuse = find_data_misuse(func)
    if misuse is not None:
        raise ProgramShapeError("memoryview", misuse)


@attrs.frozen
class ProgStats:
    """What a program did, as ``bpftool prog show`` and our verdict counters tell.

    ``errors`` counts runs that raised, returned something that is not a
    verdict, or ran over budget (``timeouts`` counts those too); each of them
    is also one of ``dropped``.
    """

    id: int
    name: str
    prog_type: BpfProgType
    run_cnt: int
    run_time_ns: int
    passed: int
    dropped: int
    redirected: int
    errors: int
    timeouts: int = 0
    budget: float | None = DEFAULT_BUDGET


@attrs.define(eq=False)
class Program:
    """A loaded program: a callable, its type, an id, its budget and its counters.

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
    timeouts: int = 0
    last_error: BaseException | None = None
    #: Seconds a run may last (None: no bound); see :mod:`skmsg_core._budget`.
    budget: float | None = DEFAULT_BUDGET
    # run_verdict's runners, made on first use: untimed and timed (enable_stats)
    _runners: list[Callable[[Any], Verdict] | None] = attrs.field(
        factory=lambda: [None, None], init=False, repr=False, eq=False
    )

    @classmethod
    def load(
        cls,
        func: Callable[[Any], Any],
        prog_type: BpfProgType,
        *,
        name: str | None = None,
        budget: float | None = DEFAULT_BUDGET,
    ) -> Program:
        """Verify ``func`` as a program of ``prog_type`` and load it.

        ``budget``: the seconds one run may last before it is interrupted and
        counted as a DROP (None: no bound; see :mod:`skmsg_core._budget`).

        Raises:
            OSError(EINVAL): ``func`` is not callable, is ``async`` or a generator
                function, cannot be called with exactly one argument (the context),
                or uses the context's ``data`` as if it were ``bytes`` (the message
                names the line and what to write instead); or ``budget`` is not a
                positive number of seconds.
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
            if exc.kind == "memoryview":
                raise kernel_error(errno.EINVAL, f"program {label}: {exc}") from exc
            if exc.kind == "plain":
                why = (
                    f"must be a plain function: a {prog_type.name} program runs to "
                    "completion and cannot await or yield"
                )
            else:
                why = f"{exc}, the context"
            raise kernel_error(errno.EINVAL, f"program {label}{exc.sig} {why}") from exc
        prog = cls(func, prog_type, str(label))
        prog.set_budget(budget)
        return prog

    def set_budget(self, budget: float | None) -> None:
        """Hold each run to ``budget`` seconds from now on (None: no bound),
        replacing this program's budget, larger or smaller. The watchdog knows
        a run by its callable's code: a callable loaded as two programs is
        held to the smaller of their budgets (see :mod:`._budget`).

        Raises:
            OSError(EINVAL): ``budget`` is not a positive number of seconds.
        """
        try:
            set_budget(self.func, budget, self.name, self)
        except ValueError as exc:
            raise kernel_error(errno.EINVAL, f"program {self.name}: {exc}") from None
        self.budget = budget

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

        Never raises (but ``KeyboardInterrupt``): see the module's rules. The
        run ends with ``ctx.end_run()``, raise or not. The runner is made once
        (per :func:`enable_stats` state), not per call.
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
        sk_pass = _SK_PASS_MEMBER

        @program_caller
        def run(ctx: Any) -> Verdict:
            try:
                ret = func(ctx)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                ctx.end_run()
                return account(None, ctx, exc)
            ctx.end_run()  # what the program could write is the message's no more
            if ctx._helper_error is not None:
                self.helper_failed(ctx)
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
        and map it as :meth:`run_verdict` does: a pass with ``ctx.sk_redir``
        set is REDIRECT, a pass alone PASS, a drop DROP; a raise, or a value
        that is not a verdict, is a DROP and an error (:meth:`record_error`).
        For an engine that calls :meth:`timed_func` itself and sums the plain
        PASS runs of a batch into the counters on its own. Never raises."""
        self.run_cnt += 1
        if error is None:
            ok = verdict_of(ret)
            if ok is None:
                error = self.not_a_verdict(ret)
            elif ok:
                if ctx.sk_redir is None:
                    self.passed += 1
                    return _PASS
                self.redirected += 1
                return _REDIRECT
        if error is not None:
            self.record_error(error)
        self.dropped += 1
        return _DROP

    def not_a_verdict(self, ret: object) -> VerdictError:
        """The error that a run returning ``ret`` (not a verdict) is counted with."""
        return VerdictError(
            f"program {self.name} returned {describe_value(ret)}, not a verdict "
            "(SK_PASS or SK_DROP, an int)"
        )

    def is_pass(self, ret: object) -> bool:
        """For an engine's own loop, after the ``ret is SK_PASS`` fast check:
        whether ``ret`` is a pass (:func:`verdict_of`); a value that is not a
        verdict is recorded as an error (:meth:`record_error`) and is no pass.
        Counts no run."""
        ok = verdict_of(ret)
        if ok is None:
            self.record_error(self.not_a_verdict(ret))
            return False
        return ok

    def after_run(self, ctx: Any) -> None:
        """What a runner does when a run on ``ctx`` ends, raise or not, for an
        engine that calls the program itself: ``ctx.end_run()`` (what the
        program could write is the message's no more) and the count of a
        helper's noted mistake (:meth:`helper_failed`)."""
        ctx.end_run()
        if ctx._helper_error is not None:
            self.helper_failed(ctx)

    def helper_failed(self, ctx: Any) -> None:
        """Count the mistake a helper noted on ``ctx`` during the run (a
        :class:`HelperError`), and clear the note. For engines that call the
        program themselves: call it when ``ctx._helper_error`` is set."""
        reason = ctx._helper_error
        ctx._helper_error = None
        self.record_error(HelperError(f"program {self.name}: {reason}"))

    def record_error(self, error: BaseException) -> None:
        """Count one run's error (not the run itself): ``errors``, ``timeouts``
        for a :class:`ProgramTimeout`, ``last_error``; then tell the error
        observer. Never raises."""
        self.errors += 1
        if isinstance(error, ProgramTimeout):
            self.timeouts += 1
        self.last_error = error
        observer = _error_observer
        if observer is not None:
            with contextlib.suppress(Exception):  # an observer's failure is not the program's
                observer(self, error)

    def timed_func(self) -> Callable[[Any], Any]:
        """The program's callable for an engine's hot loop that keeps the counters
        itself: ``func`` as it is, or, if :func:`enable_stats` is on now, a
        wrapper that adds each call's duration to ``run_time_ns``. The loop
        must catch what it raises as a runner does (``KeyboardInterrupt``
        aside, every ``BaseException``), and be registered with
        :func:`skmsg_core._budget.program_caller`."""
        func = self.func
        if not _stats_enabled:
            return func

        @program_caller
        def timed(ctx: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return func(ctx)
            finally:
                self.run_time_ns += time.perf_counter_ns() - t0

        return timed

    @program_caller
    def run(self, ctx: Any) -> Any:
        """Run as a non-verdict program (a parser, a reuseport selector), counting
        the run. What it raises propagates to the caller, who decides what it
        means (any ``BaseException`` but ``KeyboardInterrupt`` is also counted
        here as an error); a :class:`ProgramTimeout` is one of them."""
        self.run_cnt += 1
        t0 = time.perf_counter_ns() if _stats_enabled else 0
        try:
            return self.func(ctx)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            self.record_error(exc)
            raise
        finally:
            if t0:
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
            self.timeouts,
            self.budget,
        )

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.prog_type.name} id={self.id}>"
