"""The sk_msg helpers' cost does not grow with the message: pull, push, pop near the start.

The claim (``skmsg_core/_helpers.py``): a helper's cost grows with the bytes
it touches, never with the message's size. Measured here on two messages of
the same shape, 17 private fragments each (a full ring at the default
``MAX_MSG_FRAGS``), one of 256 KiB (elements of ~15 KiB) and one of 4 KiB
(elements of ~241 bytes), and against the naive way of editing the 256 KiB
message as one ``bytes`` object.

What is timed
-------------
One operation is one helper call on a fresh message, nothing else:

- ``pull.nocopy``: ``msg_pull_data(msg, 1, 2)``, a range inside element 0,
  which makes the window point there without copying;
- ``pull.span2``: ``msg_pull_data(msg, n0 - 1, n0 + 1)`` (``n0`` the length
  of element 0), a range across elements 0 and 1, which copies exactly those
  two elements into one;
- ``push``: ``msg_push_data(msg, 1, 8)``;
- ``pop``: ``msg_pop_data(msg, 1, 8)``;
- ``push.split``, ``pop.split``: the same on a ring with two free slots (15
  fragments), where they split element 0 around the edit instead of copying
  it.

The helpers mutate the message, so every call gets its own: before each timed
batch, ``SkMsg.from_frags`` builds one message per call over the same
pre-made memoryviews (no bytes copied; the helpers never write into existing
buffers, so the shared chunks stay intact), untimed. Batches are small (16
calls) so that what the calls allocate, kept alive until the batch ends, stays
in the L2 cache as it would in a loop that sends and frees each message. The
naive baselines need no rebuild (``bytes`` is immutable) and time, on the
256 KiB message:

- pull: ``bytes(b"".join(frags)[a:b])``: the fragments are joined first, as
  code without a scatter-gather view must;
- push: ``data[:1] + b"\\0" * 8 + data[1:]`` on the joined ``data``;
- pop: ``data[:1] + data[9:]`` on the joined ``data``.

Before timing, each helper's result is checked against its naive twin (same
bytes, same window) and the ring's shape after the call is checked (no copy,
two elements merged), so the figures measure the edit they name.

Targets: the 256 KiB/4 KiB cost ratio should be near 1 (at most 1.5) for
``pull.nocopy``, ``push.split`` and ``pop.split``. The others only report
it, because they copy by design (the kernel's rule) and so their cost
follows the *element* size, which here grows with the message: ``pull.span2``
copies the two elements it spans, and with 17 fragments the ring is full, so
``push`` and ``pop`` inside element 0 have no free slot to split into and
copy that one element (the kernel does the same). The speedup over the naive
edit is reported without a target: a full ring's push and pop gain at most
17x (one element of 17 copied), less Python's fixed call cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench._harness import Case, Figure, Timing, time_side_by_side
from skmsg_core import SkMsg, msg_pop_data, msg_pull_data, msg_push_data

__all__ = ["BENCHMARKS"]

KIB = 1024
NFRAGS = 17
BIG = 256 * KIB
SMALL = 4 * KIB

#: Ratio of the 256 KiB message's cost to the 4 KiB one's that counts as "near 1".
SIZE_RATIO_TARGET = 1.5

Frags = tuple[memoryview, ...]


def _frags(total: int, n: int = NFRAGS) -> Frags:
    """``n`` private chunks of ``total`` bytes in all, sizes differing by at most 1,
    filled with a byte pattern (so misplaced bytes show in the checks)."""
    q, r = divmod(total, n)
    pattern = bytes(range(251)) * (total // 251 + 1)
    out: list[memoryview] = []
    pos = 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        out.append(memoryview(bytearray(pattern[pos : pos + size])))
        pos += size
    return tuple(out)


def _fresh(frags: Frags) -> Callable[[int], list[SkMsg]]:
    """Inputs for a :class:`Case`: ``n`` equal, independent messages over ``frags``."""

    def build(n: int) -> list[SkMsg]:
        return [SkMsg.from_frags(frags) for _ in range(n)]

    return build


def _check(ok: bool, what: str) -> None:
    """Fail the benchmark loudly when it would not measure what it names."""
    if not ok:
        raise RuntimeError(f"bench_ring: {what}")


_Op = Callable[[SkMsg], int]


def _helper_ops(frags: Frags) -> dict[str, tuple[_Op, int]]:
    """Each helper operation on a message over ``frags``, with the element count the
    ring must have after it."""
    n0, n = frags[0].nbytes, len(frags)
    return {
        "pull.nocopy": (lambda m: msg_pull_data(m, 1, 2), n),
        "pull.span2": (lambda m: msg_pull_data(m, n0 - 1, n0 + 1), n - 1),
        "push": (lambda m: msg_push_data(m, 1, 8), n),  # element 0 copied
        "pop": (lambda m: msg_pop_data(m, 1, 8), n),
        "push.split": (lambda m: msg_push_data(m, 1, 8), n + 2),  # head, pushed, tail
        "pop.split": (lambda m: msg_pop_data(m, 1, 8), n + 1),  # head, tail
    }


#: The fragments each operation's message has: a full ring, or two slots free.
_NFRAGS_OF = {"push.split": NFRAGS - 2, "pop.split": NFRAGS - 2}
#: The operations whose 256 KiB/4 KiB ratio has a target (the others copy by design).
_SIZE_FREE = {"pull.nocopy", "push.split", "pop.split"}


def _naive_ops(frags: Frags) -> dict[str, tuple[Callable[[Any], bytes], Any]]:
    """The naive twin of each operation on the whole message, with its input: the
    fragments for pull (joined inside the operation), the joined bytes otherwise."""
    n0 = frags[0].nbytes
    data = b"".join(frags)

    def pull_nocopy(fs: Frags) -> bytes:
        return bytes(b"".join(fs)[1:2])

    def pull_span2(fs: Frags) -> bytes:
        return bytes(b"".join(fs)[n0 - 1 : n0 + 1])

    def push(d: bytes) -> bytes:
        return d[:1] + b"\0" * 8 + d[1:]

    def pop(d: bytes) -> bytes:
        return d[:1] + d[9:]

    return {
        "pull.nocopy": (pull_nocopy, frags),
        "pull.span2": (pull_span2, frags),
        "push": (push, data),
        "pop": (pop, data),
        "push.split": (push, data),
        "pop.split": (pop, data),
    }


def _verify(frags: Frags, op_name: str) -> None:
    """Check the helper against its naive twin on a fresh message over ``frags``."""
    op, elems_after = _helper_ops(frags)[op_name]
    naive, arg = _naive_ops(frags)[op_name]
    msg = SkMsg.from_frags(frags)
    n = _NFRAGS_OF.get(op_name, NFRAGS)
    _check(len(msg) == n and msg.full == (n == NFRAGS), f"expected a ring of {n}, got {msg!r}")
    rc = op(msg)
    _check(rc == 0, f"{op_name} returned {rc}")
    _check(
        len(msg) == elems_after,
        f"{op_name} left {len(msg)} elements, expected {elems_after}",
    )
    expected = naive(arg)
    if op_name.startswith("pull"):
        _check(bytes(msg.data) == expected, f"{op_name}: window {bytes(msg.data)!r}")
        _check(msg.tobytes() == b"".join(frags), f"{op_name} changed the message")
        if op_name == "pull.nocopy":
            _check(msg.data.obj is frags[0].obj, "pull.nocopy copied")
    else:
        _check(msg.tobytes() == expected, f"{op_name}: message differs from naive")
    _check(
        b"".join(frags) == b"".join(_frags(sum(f.nbytes for f in frags), len(frags))),
        f"{op_name} wrote into a shared chunk",
    )


def _measure(op_name: str, quick: bool) -> list[Figure]:
    """Time ``op_name`` on 256 KiB, 4 KiB and naively, side by side; two figures."""
    n = _NFRAGS_OF.get(op_name, NFRAGS)
    big, small = _frags(BIG, n), _frags(SMALL, n)
    _verify(big, op_name)
    _verify(small, op_name)
    naive, arg = _naive_ops(big)[op_name]
    args: list[Any] = [arg]
    cases: dict[str, Case[Any]] = {
        "256k": Case(_helper_ops(big)[op_name][0], _fresh(big)),
        "4k": Case(_helper_ops(small)[op_name][0], _fresh(small)),
        "naive": Case(naive, lambda n: args * n),
    }
    number, rounds = (4, 2) if quick else (16, 200)
    t: dict[str, Timing] = time_side_by_side(cases, number=number, rounds=rounds)
    us = {k: v.best / 1000 for k, v in t.items()}
    return [
        Figure.cost_ratio(
            f"ring.{op_name}.vs_4k",
            value=us["256k"],
            unit="us",
            baseline="same op, 4 KiB msg",
            baseline_value=us["4k"],
            target=SIZE_RATIO_TARGET if op_name in _SIZE_FREE else None,
        ),
        Figure.speedup(
            f"ring.{op_name}.vs_naive",
            value=us["256k"],
            unit="us",
            baseline="naive bytes, 256 KiB",
            baseline_value=us["naive"],
            target=None,
        ),
    ]


def bench_pull(quick: bool) -> list[Figure]:
    """``msg_pull_data`` near the start: a no-copy range and a two-element span."""
    return _measure("pull.nocopy", quick) + _measure("pull.span2", quick)


def bench_push(quick: bool) -> list[Figure]:
    """``msg_push_data(msg, 1, 8)`` on a full 17-element ring, and on one with
    two free slots."""
    return _measure("push", quick) + _measure("push.split", quick)


def bench_pop(quick: bool) -> list[Figure]:
    """``msg_pop_data(msg, 1, 8)`` on a full 17-element ring, and on one with
    two free slots."""
    return _measure("pop", quick) + _measure("pop.split", quick)


BENCHMARKS: dict[str, Callable[[bool], list[Figure]]] = {
    "ring.pull": bench_pull,
    "ring.push": bench_push,
    "ring.pop": bench_pop,
}
