"""Run-time budgets: a program that runs too long is interrupted, and is a DROP.

The kernel bounds a BPF program's run time by verifying it before it runs; a
Python program cannot be verified that way, so its run time is bounded while
it runs.

Rules
-----
* Every program has a budget in seconds (:data:`DEFAULT_BUDGET`, or what
  ``Program.load``/``attach`` were given; ``None`` is no bound). A run that
  lasts longer is interrupted by raising :class:`ProgramTimeout` inside it;
  the runner counts that run as a DROP and an error (a ``timeouts`` count
  too), as for any program that raises. A parse program interrupted so is a
  parse error of its connection.
* The watchdog knows a run by its code, so the budget is the callable's: a
  function loaded twice (two programs) is held to the smaller of their
  budgets, and is unbounded only when every program of it is (``None``).
  A program's own budget, set again, replaces what it set before (larger
  or smaller); a program that is gone no longer holds its callable.
* Precision: runs are looked at every quarter of the smallest budget in
  force (at least every :data:`MIN_PERIOD`), so a run is interrupted between
  its budget and its budget plus one period.
* What can be interrupted: Python code, and blocking calls that give up on a
  signal (``time.sleep``, a socket wait) when programs run on the main thread
  (where trio runs). In another thread only Python code is interrupted. A C
  call that holds the interpreter lock (a regex over a huge buffer) finishes
  first; so does a program that catches :class:`ProgramTimeout` (a
  ``BaseException``) and carries on, until the next look.

Theory of operation
-------------------
Nothing is recorded when a program starts or ends: a run costs nothing
extra. A watchdog thread wakes every period and samples every thread's stack
(``sys._current_frames``). The functions that call programs (the runners and
the engines' loops) are registered with :func:`program_caller`; walking a
stack from its innermost frame, the frame just inside the first caller frame
met is the *program frame*, and its code object finds the program's budget.
The same frame object seen again in a later sample is the same run; once it
has been seen for longer than its budget the watchdog interrupts it (a full
collection of the garbage collector between two looks starts every run's
clock again, once per run: a pause of the whole interpreter is not a
program's doing; nor
is a run interrupted while its thread is runnable and has used less than its
budget of CPU time: a computing run is held to its budget of CPU time, a
blocked one to its budget of wall time, and the machine's load is not the
program's doing):

* on the main thread, with a signal (:data:`SIGNAL`, a real-time signal
  nobody else uses) whose handler raises :class:`ProgramTimeout` only if that
  very frame is still on the stack (the run may have ended meanwhile);
* on another thread, with ``PyThreadState_SetAsyncExc``.

A signal that arrives while the program runs code that drops exceptions
(a garbage collector callback, a finalizer) raises in the program's own frame
instead, at its next line, through a trace function set only until then.

The thread starts when the first budgeted program is loaded, runs as a
daemon, and starts again in a forked child on its next load.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_BUDGET",
    "MIN_PERIOD",
    "SIGNAL",
    "ProgramTimeout",
    "code_of",
    "program_caller",
    "set_budget",
]

#: Seconds a program run may last unless its load or attach said otherwise.
DEFAULT_BUDGET = 0.1
#: The watchdog never looks more often than this (seconds).
MIN_PERIOD = 0.005
#: The signal that interrupts a program on the main thread.
SIGNAL = signal.SIGRTMIN + 7

_F = TypeVar("_F", bound=Callable[..., Any])


class ProgramTimeout(BaseException):
    """Raised inside a program that ran longer than its budget.

    A ``BaseException``, so that a program's own ``except Exception`` does not
    swallow it. The runner turns it into a DROP; it never leaves a runner.
    """


#: Codes of the functions that call programs (the frames programs run under).
_callers: set[types.CodeType] = set()
#: A program's code -> {owner's key: (its budget in seconds or None, its name)}.
_owners: dict[types.CodeType, dict[int, tuple[float | None, str]]] = {}
#: A program's code -> (the budget in force: the smallest of its owners', None
#: when all of theirs are None; the name of the owner that set it).
_budgets: dict[types.CodeType, tuple[float | None, str]] = {}
#: Held while the two tables change (an owner may be forgotten by the garbage
#: collector in any thread, even inside set_budget: hence reentrant).
_lock = threading.RLock()


def program_caller(func: _F) -> _F:
    """Register ``func`` as a function that calls programs directly: a frame
    it calls is a program run the watchdog times. Returns ``func``."""
    code = getattr(func, "__code__", None)
    if isinstance(code, types.CodeType):
        _callers.add(code)
    return func


def code_of(func: Any) -> types.CodeType | None:
    """The code object a call of ``func`` runs first: a function's own, a
    bound method's function's, a ``functools.partial``'s function's, a callable
    object's ``__call__``; None for a builtin (nothing to interrupt)."""
    for _ in range(8):  # partials of partials, methods of callables: a few levels
        code = getattr(func, "__code__", None)
        if isinstance(code, types.CodeType):
            return code
        inner = getattr(func, "func", None) or getattr(func, "__func__", None)
        if inner is not None:
            func = inner
            continue
        call = getattr(type(func), "__call__", None)  # noqa: B004 (the method itself)
        if call is None or isinstance(call, (types.WrapperDescriptorType, types.BuiltinMethodType)):
            return None
        func = call
    return None


def set_budget(func: Any, budget: float | None, name: str, owner: object = None) -> None:
    """Set ``owner``'s budget for runs of ``func`` to ``budget`` seconds (None:
    no bound), replacing what ``owner`` set before; runs are held to the
    smallest budget of the live owners of ``func``'s code (``owner`` None: one
    owner for all such calls, never forgotten). Makes sure the watchdog runs.

    Raises:
        ValueError: ``budget`` is not a positive number of seconds.
    """
    if budget is not None and not (isinstance(budget, (int, float)) and budget > 0):
        raise ValueError(f"a program's budget is a positive number of seconds, not {budget!r}")
    code = code_of(func)
    if code is None:
        return
    key = id(owner) if owner is not None else 0
    with _lock:
        owners = _owners.setdefault(code, {})
        if owner is not None and key not in owners:
            weakref.finalize(owner, _forget, code, key)
        owners[key] = (None if budget is None else float(budget), name)
        _settle(code)
    if budget is not None:
        _watchdog.ensure()


def _forget(code: types.CodeType, key: int) -> None:
    """An owner of ``code``'s budget is gone."""
    with _lock:
        owners = _owners.get(code)
        if owners is not None and owners.pop(key, None) is not None:
            if owners:
                _settle(code)
            else:
                del _owners[code]
                _budgets.pop(code, None)


def _settle(code: types.CodeType) -> None:
    """Recompute the budget in force for ``code`` from its owners'."""
    bounded = [(b, n) for b, n in _owners[code].values() if b is not None]
    if bounded:
        _budgets[code] = min(bounded, key=lambda held: held[0])
    else:
        _budgets[code] = (None, "")


class _Watchdog:
    """The thread that samples stacks and interrupts runs over budget."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._main_ident = threading.main_thread().ident
        self._handler_installed = False
        #: The main thread's program frame a signal was sent for.
        self.target: types.FrameType | None = None
        self.target_message = ""
        #: thread id -> (program frame, when its clock started, the thread's
        #: CPU time then, whether a collection's pause was forgiven it)
        self._seen: dict[int, tuple[types.FrameType, float, float, bool]] = {}
        #: full collections of the garbage collector at the last look
        self._full_gcs = 0
        self.interrupts = 0

    def ensure(self) -> None:
        """Start the thread if it is not running; install the signal handler
        if called on the main thread."""
        if not self._handler_installed and threading.current_thread() is threading.main_thread():
            try:
                signal.signal(SIGNAL, self._on_signal)
                self._handler_installed = True
            except (ValueError, OSError):  # not the main interpreter
                pass
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="skmsg-program-watchdog", daemon=True
                )
                self._thread.start()

    def _period(self) -> float:
        smallest = min(
            (b for b, _ in list(_budgets.values()) if b is not None), default=DEFAULT_BUDGET
        )
        return max(MIN_PERIOD, smallest / 4)

    def _run(self) -> None:
        while True:
            time.sleep(self._period())
            try:
                self._look()
            except Exception:  # never die: a missed look only delays an interrupt
                continue

    def _look(self) -> None:
        now = time.monotonic()
        callers = _callers
        seen = self._seen
        full_gcs = gc.get_stats()[2]["collections"]
        if full_gcs != self._full_gcs:
            # a full collection ran (holding the interpreter lock, so this
            # thread could not look): its pause is not the programs' to pay,
            # once per run (a program that collects in a loop is no excuse)
            self._full_gcs = full_gcs
            for ident, (frame, _, _, forgiven) in list(seen.items()):
                if not forgiven:
                    seen[ident] = (frame, now, _cpu_time(ident), True)
        live: set[int] = set()
        for ident, frame in sys._current_frames().items():
            found = _program_frame(frame, callers)
            if found is None:
                continue
            live.add(ident)
            held = seen.get(ident)
            if held is None or held[0] is not found:
                seen[ident] = (found, now, _cpu_time(ident), False)
                continue
            budget, name = _budgets.get(found.f_code, (DEFAULT_BUDGET, found.f_code.co_name))
            if budget is None:  # no bound
                continue
            if now - held[1] > budget and not _starved(ident, held[2], budget):
                self._interrupt(ident, found, name, budget)
                # the next interrupt a budget later, if need be
                seen[ident] = (found, now, _cpu_time(ident), held[3])
        for ident in list(seen):
            if ident not in live:
                del seen[ident]

    def _interrupt(self, ident: int, frame: types.FrameType, name: str, budget: float) -> None:
        self.interrupts += 1
        message = f"program {name} ran longer than its budget of {budget * 1000:g} ms"
        if ident == self._main_ident and self._handler_installed:
            self.target, self.target_message = frame, message
            signal.pthread_kill(ident, SIGNAL)
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), ctypes.py_object(ProgramTimeout)
        )

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        target = self.target
        if target is None:
            return
        f = frame
        swallowed = False  # code between here and the run that drops what it raises
        while f is not None:
            if f is target:
                self.target = None
                if swallowed:
                    _raise_when_back_in(target, self.target_message)
                    return
                raise ProgramTimeout(self.target_message)
            swallowed = swallowed or _drops_exceptions(f)
            f = f.f_back

    def after_fork(self) -> None:
        self._thread = None
        self._lock = threading.Lock()
        self._seen = {}
        self.target = None
        self._main_ident = threading.main_thread().ident


def _drops_exceptions(frame: types.FrameType) -> bool:
    """Whether ``frame`` runs code whose exceptions Python reports as
    unraisable and drops: a garbage collector callback (``gc.callbacks``) or
    a finalizer (``__del__``)."""
    code = frame.f_code
    if code.co_name == "__del__":
        return True
    return any(getattr(cb, "__code__", None) is code for cb in gc.callbacks)


def _raise_when_back_in(target: types.FrameType, message: str) -> None:
    """Raise :class:`ProgramTimeout` in ``target`` itself, at its next line,
    through a trace function (what a debugger attaching does): for a signal
    that arrived while code that drops exceptions ran inside the program.
    Tracing stays on only until then, or until the run has ended; a trace
    function set before (a coverage tool) is put back."""
    previous = sys.gettrace()

    def done() -> None:
        target.f_trace = None
        sys.settrace(previous)

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        if frame is target and event == "line":
            done()
            raise ProgramTimeout(message)
        return local

    def calls(frame: types.FrameType, event: str, arg: Any) -> Any:
        f: types.FrameType | None = frame
        while f is not None:  # is the run still under way?
            if f is target:
                return None
            f = f.f_back
        done()
        return None

    target.f_trace = local
    target.f_trace_lines = True
    sys.settrace(calls)


def _cpu_time(ident: int) -> float:
    """The CPU time thread ``ident`` has used (0.0 where that is not known)."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (AttributeError, OSError, OverflowError):
        return 0.0


def _starved(ident: int, cpu_then: float, budget: float) -> bool:
    """Whether a run over budget on the wall clock is so only because its
    thread shares the CPUs (runnable, with less than the budget of CPU time
    used since the run was first seen): the machine's load, not the program.
    A thread that sleeps or blocks in a call is never starved."""
    if not cpu_then:
        return False
    if _cpu_time(ident) - cpu_then >= budget:
        return False
    native = _native_id_of(ident)
    if native is None:
        return False
    try:
        with open(f"/proc/self/task/{native}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state == b"R"


def _native_id_of(ident: int) -> int | None:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.native_id
    return None


def _program_frame(
    frame: types.FrameType | None, callers: set[types.CodeType]
) -> types.FrameType | None:
    """The frame a registered caller called, walking out from ``frame``."""
    inner: types.FrameType | None = None
    while frame is not None:
        if frame.f_code in callers:
            return inner
        inner = frame
        frame = frame.f_back
    return None


_watchdog = _Watchdog()
os.register_at_fork(after_in_child=_watchdog.after_fork)
