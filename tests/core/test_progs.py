"""Programs: the verifier, fail-closed runs, verdict mapping, statistics."""

from __future__ import annotations

import errno
import functools
import gc
import itertools
import multiprocessing
import multiprocessing.process
import os
import sys
import time
import types
from typing import Any

import pytest

import skmsg_core as sk


def raises(err: int, match: str = "") -> pytest.RaisesExc[OSError]:
    return pytest.raises(OSError, match=match, check=lambda e: e.errno == err)


def test_verifier_rejects_what_cannot_be_a_program() -> None:
    async def coro(msg: Any) -> int:
        return 1

    def gen(msg: Any) -> Any:
        yield 1

    def two(msg: Any, extra: Any) -> int:
        return 1

    def none() -> int:
        return 1

    with raises(errno.EINVAL, "not callable"):
        sk.Program.load(42, sk.BpfProgType.SK_MSG)  # type: ignore[arg-type]
    with raises(errno.EINVAL, "plain function"):
        sk.Program.load(coro, sk.BpfProgType.SK_MSG)
    with raises(errno.EINVAL, "plain function"):
        sk.Program.load(gen, sk.BpfProgType.SK_SKB)
    with raises(errno.EINVAL, "plain function"):
        sk.Program.load(functools.partial(coro), sk.BpfProgType.SK_SKB)  # found by the CLI
    with raises(errno.EINVAL, "exactly one argument"):
        sk.Program.load(two, sk.BpfProgType.SK_MSG)
    with raises(errno.EINVAL, "exactly one argument"):
        sk.Program.load(none, sk.BpfProgType.SK_MSG)
    loaded = sk.Program.load(lambda m: 1, sk.BpfProgType.SK_MSG)
    with raises(errno.EINVAL, "already loaded"):
        sk.Program.load(loaded, sk.BpfProgType.SK_MSG)  # type: ignore[arg-type]


def test_verifier_accepts_callables_and_defaults() -> None:
    class Policy:
        def __call__(self, msg: Any) -> int:
            return sk.SK_PASS

    def with_default(msg: Any, limit: int = 3) -> int:
        return sk.SK_PASS

    assert sk.Program.load(Policy(), sk.BpfProgType.SK_MSG).name.endswith("Policy")
    assert sk.Program.load(with_default, sk.BpfProgType.SK_MSG, name="p").name == "p"


@pytest.mark.parametrize(
    ("ret", "redirected", "want"),
    [
        (sk.SK_PASS, False, sk.Verdict.PASS),
        (1, True, sk.Verdict.REDIRECT),
        (sk.SK_DROP, True, sk.Verdict.DROP),  # redirect set but SK_DROP returned
        (2, False, sk.Verdict.DROP),  # any other value is a drop
        (None, False, sk.Verdict.DROP),
        (True, False, sk.Verdict.DROP),  # not an int verdict: fail closed
        ("1", False, sk.Verdict.DROP),
    ],
)
def test_verdict_mapping(ret: object, redirected: bool, want: sk.Verdict) -> None:
    class Ctx:
        sk_redir = object() if redirected else None
        _helper_error = None

        def end_run(self) -> None:
            pass

    prog = sk.Program.load(lambda ctx: ret, sk.BpfProgType.SK_SKB)
    assert prog.run_verdict(Ctx()) is want


def test_raising_program_is_a_counted_drop_and_statistics() -> None:
    calls = []

    def policy(skb: sk.SkBuff) -> int:
        calls.append(skb.len)
        if skb.len > 3:
            raise ValueError("too long")
        return sk.SK_PASS

    prog = sk.Program.load(policy, sk.BpfProgType.SK_SKB)
    skb = sk.SkBuff()
    assert prog.run_verdict(skb.reset(memoryview(b"abc"))) is sk.Verdict.PASS
    assert prog.run_verdict(skb.reset(memoryview(b"abcd"))) is sk.Verdict.DROP
    st = prog.statistics()
    assert (st.run_cnt, st.passed, st.dropped, st.errors) == (2, 1, 1, 1)
    assert isinstance(prog.last_error, ValueError)
    assert st.run_time_ns == 0  # not measured unless enabled


def test_run_time_is_measured_when_enabled() -> None:
    prog = sk.Program.load(lambda ctx: sum(range(1000)), sk.BpfProgType.SK_SKB)
    sk.enable_stats(True)
    try:
        prog.run(sk.SkBuff())
    finally:
        sk.enable_stats(False)
    assert prog.run_cnt == 1 and prog.run_time_ns > 0


def test_run_verdict_reuses_its_runner_and_follows_enable_stats() -> None:
    """run_verdict builds its runner once (not a closure per call), yet a
    runner made before enable_stats(True) does not hide the timing after it."""
    prog = sk.Program.load(lambda ctx: sum(range(1000)) * 0 + sk.SK_PASS, sk.BpfProgType.SK_SKB)
    skb = sk.SkBuff().reset(memoryview(b"x"))
    assert prog.run_verdict(skb) is sk.Verdict.PASS
    first = prog._runners[0]
    assert prog.run_verdict(skb) is sk.Verdict.PASS
    assert prog._runners[0] is first is not None
    assert prog.run_time_ns == 0
    sk.enable_stats(True)
    try:
        assert prog.run_verdict(skb) is sk.Verdict.PASS
    finally:
        sk.enable_stats(False)
    timed = prog.run_time_ns
    assert timed > 0
    assert prog.run_verdict(skb) is sk.Verdict.PASS  # untimed again
    assert prog.run_time_ns == timed
    assert prog.verdict_runner() is first  # engines get the same runner per send
    assert (prog.run_cnt, prog.passed, prog.dropped) == (4, 4, 0)


def test_run_propagates_and_counts_errors() -> None:
    prog = sk.Program.load(lambda ctx: 1 // 0, sk.BpfProgType.SK_SKB)
    with pytest.raises(ZeroDivisionError):
        prog.run(sk.SkBuff())
    assert prog.errors == 1


def test_context_fields_from_the_socket() -> None:
    s4 = sk.Sock(None, local_addr=("127.0.0.1", 7000), remote_addr=("127.0.0.2", 41000))
    msg = sk.SkMsg.from_bytes(b"x")
    msg.sk = s4
    assert (msg.family, msg.local_ip4, msg.remote_ip4) == (2, "127.0.0.1", "127.0.0.2")
    assert (msg.local_port, msg.remote_port, msg.local_ip6) == (7000, 41000, None)
    import socket

    s6 = sk.Sock(None, family=socket.AF_INET6, local_addr=("::1", 1, 0, 0))
    skb = sk.SkBuff(s6)
    assert (skb.local_ip6, skb.local_ip4, skb.remote_port) == ("::1", None, 0)
    assert skb.reset(memoryview(b"hello")).load_bytes(1, 3) == b"ell"
    assert skb.load_bytes(3, 5) == -errno.EFAULT


def test_check_program_callable_for_other_arities() -> None:
    async def coro(skb: Any, backends: Any) -> int:
        return 1

    def two(skb: Any, backends: Any) -> int:
        return 1

    sk.check_program_callable(two, nargs=2)
    with pytest.raises(sk.ProgramShapeError) as info:
        sk.check_program_callable(functools.partial(coro), nargs=2)
    assert info.value.kind == "plain"
    with pytest.raises(sk.ProgramShapeError) as info:
        sk.check_program_callable(two, nargs=1)
    assert info.value.kind == "arity" and "exactly one argument" in str(info.value)
    assert info.value.sig == "(skb: 'Any', backends: 'Any') -> 'int'"


# -- budgets: what a program's statistics say is what the watchdog enforces ------------------

#: How long the slow program runs; budgets below are well under or over it.
SLOW = 0.25


def _slow(ctx: Any) -> int:
    time.sleep(SLOW)
    return sk.SK_PASS


def _timed_out(prog: sk.Program) -> bool:
    """Run ``prog`` once; whether the watchdog interrupted it."""
    before = prog.statistics().timeouts
    prog.run_verdict(sk.SkBuff().reset(memoryview(b"x")))
    return prog.statistics().timeouts > before


_names = itertools.count()


def _fresh() -> Any:
    """The slow program with a code object of its own (budgets belong to code)."""
    code = _slow.__code__.replace(co_name=f"_slow_{next(_names)}")
    return types.FunctionType(code, globals())


def test_a_budget_of_none_is_no_bound() -> None:
    sk.Program.load(_fresh(), sk.BpfProgType.SK_SKB)  # the watchdog runs
    prog = sk.Program.load(_fresh(), sk.BpfProgType.SK_SKB, budget=None)
    assert prog.statistics().budget is None
    assert not _timed_out(prog)


def test_attach_with_a_budget_above_the_default_holds_to_it() -> None:
    smap = sk.SockMap(1)
    prog = smap.attach(_fresh(), sk.SK_SKB_VERDICT, budget=SLOW * 4)
    assert prog.statistics().budget == SLOW * 4
    assert not _timed_out(prog)
    smap.close()


def test_set_budget_replaces_the_program_own_budget_larger_or_smaller() -> None:
    prog = sk.Program.load(_fresh(), sk.BpfProgType.SK_SKB, budget=0.05)
    prog.set_budget(SLOW * 4)
    assert not _timed_out(prog)
    prog.set_budget(0.05)
    assert _timed_out(prog)


def test_one_callable_in_two_programs_is_held_to_the_smaller_budget_while_both_live() -> None:
    func = _fresh()
    lax = sk.Program.load(func, sk.BpfProgType.SK_SKB, budget=SLOW * 4)
    strict = sk.Program.load(func, sk.BpfProgType.SK_SKB, budget=0.05)
    assert _timed_out(lax)
    del strict
    gc.collect()
    assert not _timed_out(lax)


def _computes(cpu: float) -> Any:
    """A program that computes (pure Python) until its thread used ``cpu`` s."""

    def compute(ctx: Any) -> int:
        start = time.thread_time()
        while time.thread_time() - start < cpu:
            pass
        return sk.SK_PASS

    return compute


def _hogs(n: int) -> list[multiprocessing.process.BaseProcess]:
    """``n`` processes that keep the CPUs busy (the machine under load)."""
    ctx = multiprocessing.get_context("fork")
    hogs = [ctx.Process(target=_spin_forever, daemon=True) for _ in range(n)]
    for h in hogs:
        h.start()
    return hogs


def _spin_forever() -> None:
    while True:
        pass


def test_a_computing_run_is_held_to_cpu_time_not_to_the_machine_s_load() -> None:
    """With the CPUs shared by busy processes, a run that computes for less
    than its budget takes longer than the budget on the wall clock: it is not
    the program's doing, and it is not interrupted; one that computes past its
    budget still is."""
    short = sk.Program.load(_computes(0.06), sk.BpfProgType.SK_SKB, budget=0.1)
    long = sk.Program.load(_computes(5.0), sk.BpfProgType.SK_SKB, budget=0.1)
    hogs = _hogs(2 * (os.cpu_count() or 2))
    try:
        walls = []
        for _ in range(10):
            start = time.monotonic()
            assert not _timed_out(short)
            walls.append(time.monotonic() - start)
        assert max(walls) > 0.1, "the load made a run outlast its budget on the wall clock"
        start = time.monotonic()
        assert _timed_out(long)
        assert time.monotonic() - start < 2.0
    finally:
        for h in hogs:
            h.kill()


def test_a_full_collection_s_pause_is_forgiven_once_per_run() -> None:
    """A run that a full garbage collection stalls is given its budget again,
    once: a program that collects in a loop is still interrupted."""

    def collects(ctx: Any) -> int:
        start = time.monotonic()
        while time.monotonic() - start < 60:  # bounded, so a failure cannot hang the suite
            gc.collect()
        return sk.SK_PASS

    prog = sk.Program.load(collects, sk.BpfProgType.SK_SKB, budget=0.1)
    # on a loaded machine a full collection of the suite's heap takes long and
    # the run is held to its budget of CPU time: interrupted well before 60 s
    assert _timed_out(prog)


def test_a_run_a_full_collection_stalls_is_not_interrupted_for_it() -> None:
    """A full collection over a large heap holds the interpreter for longer
    than the budget, in the middle of a run: the pause is the interpreter's,
    not the program's."""
    heap = [[i] for i in range(3_000_000)]  # a full collection takes ~0.2 s
    paused: list[float] = []

    def stalled(ctx: Any) -> int:
        time.sleep(0.04)  # the watchdog sees the run start
        start = time.monotonic()
        gc.collect()  # the pause
        paused.append(time.monotonic() - start)
        time.sleep(0.04)  # and looks again after it
        return sk.SK_PASS

    prog = sk.Program.load(stalled, sk.BpfProgType.SK_SKB, budget=0.1)
    try:
        assert not _timed_out(prog)
        assert paused[0] > 0.1, "the collection outlasted the budget"
    finally:
        del heap


def test_a_run_interrupted_inside_a_gc_callback_is_still_interrupted() -> None:
    """A signal that lands in a garbage collector callback (whose exceptions
    Python drops) still ends the run: the timeout is raised in the program's
    own frame when the callback returns."""
    calls = [0]

    def callback(phase: str, info: dict[str, int]) -> None:
        calls[0] += 1
        deadline = time.monotonic() + 0.002
        while time.monotonic() < deadline:  # Python code the signal lands in
            pass

    def collects(ctx: Any) -> int:
        start = time.monotonic()
        while time.monotonic() - start < 60:
            gc.collect()
        return sk.SK_PASS

    gc.callbacks.append(callback)
    try:
        prog = sk.Program.load(collects, sk.BpfProgType.SK_SKB, budget=0.1)
        start = time.monotonic()
        assert _timed_out(prog)
        assert time.monotonic() - start < 30
        assert calls[0] > 0
    finally:
        gc.callbacks.remove(callback)
    assert sys.gettrace() is None  # tracing is off again
