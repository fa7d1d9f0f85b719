"""Compare a scenario's kernel results with skmsg's, honouring declared differences.

:func:`compare` gives an :class:`Outcome`: ``match`` (everything equal),
``declared`` (every difference is one the scenario declares, and each
declaration holds: the kernel and skmsg give exactly the declared values, or
for received bytes, either equal lengths, equal bytes outside the ignored
ranges and what skmsg promises inside them, or the declared byte counts with
the shorter stream a prefix of the longer), or ``mismatch`` (anything else, including a
declaration that no longer differs: stale declarations are errors too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from ._results import decode_bytes
from ._scenario import Scenario

__all__ = ["Outcome", "compare", "format_table"]


@attrs.frozen
class Outcome:
    name: str
    ref: str
    status: str  # "match" | "declared" | "mismatch"
    problems: list[str]
    declared: list[str]


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_diff(a: bytes, b: bytes) -> str:
    n = min(len(a), len(b))
    i = next((i for i in range(n) if a[i] != b[i]), n)
    return (
        f"kernel {len(a)} B, skmsg {len(b)} B, first difference at byte {i}: "
        f"kernel {a[i : i + 12].hex()} skmsg {b[i : i + 12].hex()}"
    )


def _fields(sc: Scenario, res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (step, value) in enumerate(zip(sc.steps, res["steps"], strict=True)):
        out[f"steps.{i}"] = (step["op"], value)
    for peer, data in res["received"].items():
        out[f"received.{peer}"] = decode_bytes(data)
    out["ends"] = res.get("ends", {})
    if sc.compare_msg_log:
        out["msg_runs"] = res["msg_runs"]
        out["msg_log"] = res["msg_log"]
    if sc.compare_skb_runs:
        out["skb_runs"] = res["skb_runs"]
    if sc.compare_skb_log:
        out["skb_log"] = res["skb_log"]
    return out


def ignored_ranges(spec: list[list[int]]) -> Iterator[tuple[int, int]]:
    """``[offset, length]`` or ``[offset, length, stride, count]`` (``count``
    ranges, ``stride`` bytes apart) as ``(offset, length)`` pairs."""
    for entry in spec:
        off, length, *rest = entry
        stride, count = rest if rest else (0, 1)
        for i in range(count):
            yield off + i * stride, length


def _check_ignore(decl: dict[str, Any], k: bytes, s: bytes) -> str | None:
    """None if the declared byte difference holds, else what is wrong."""
    if len(k) != len(s):
        return f"lengths differ: {_first_diff(k, s)}"
    mask = bytearray(len(k))
    ranges = list(ignored_ranges(decl["ignore"]))
    for off, length in ranges:
        if off + length > len(k):
            return f"ignored range [{off}, {off + length}) is past the end ({len(k)} B)"
        mask[off : off + length] = b"\x01" * length
    for i in range(len(k)):
        if not mask[i] and k[i] != s[i]:
            return f"bytes differ outside the ignored ranges at byte {i}"
    if decl.get("skmsg") == "zeros":
        for off, length in ranges:
            if any(s[off : off + length]):
                return f"skmsg's bytes [{off}, {off + length}) are not zeros"
    return None


def compare(sc: Scenario, kernel: dict[str, Any], skmsg: dict[str, Any]) -> Outcome:
    """Compare everything the scenario observes (see the module docstring)."""
    kf, sf = _fields(sc, kernel), _fields(sc, skmsg)
    declared = {d["field"]: d for d in sc.declared}
    problems: list[str] = []
    used: list[str] = []
    for field in sorted(set(kf) | set(sf), key=lambda f: (f.split(".")[0], f)):
        k, s = kf.get(field), sf.get(field)
        decl = declared.pop(field, None)
        if decl is None:
            if k != s:
                if isinstance(k, bytes) and isinstance(s, bytes):
                    problems.append(f"{field}: {_first_diff(k, s)}")
                else:
                    problems.append(f"{field}: kernel {_short(k)} != skmsg {_short(s)}")
            continue
        if "ignore" in decl:
            # unspecified kernel bytes may happen to equal skmsg's: still declared
            if not (isinstance(k, bytes) and isinstance(s, bytes)):
                problems.append(
                    f"{field}: declared {decl['id']!r} ignores bytes of a non-byte field"
                )
            elif (why := _check_ignore(decl, k, s)) is not None:
                problems.append(f"{field}: declared {decl['id']!r} does not hold: {why}")
            else:
                used.append(decl["id"])
            continue
        if field.startswith("received.") and isinstance(k, bytes) and isinstance(s, bytes):
            # declared as byte counts: both exact, and the shorter a prefix of the longer
            shorter, longer = sorted((k, s), key=len)
            if (
                len(k) == decl["kernel"]
                and len(s) == decl["skmsg"]
                and len(k) != len(s)
                and longer.startswith(shorter)
            ):
                used.append(decl["id"])
            else:
                problems.append(
                    f"{field}: declared {decl['id']!r} (kernel {decl['kernel']} B, skmsg "
                    f"{decl['skmsg']} B, one a prefix of the other) does not hold: "
                    f"{_first_diff(k, s)}"
                )
            continue
        kv = k[1] if field.startswith("steps.") and k is not None else k
        sv = s[1] if field.startswith("steps.") and s is not None else s
        if kv == decl["kernel"] and sv == decl["skmsg"] and kv != sv:
            used.append(decl["id"])
        else:
            problems.append(
                f"{field}: declared {decl['id']!r} (kernel {_short(decl['kernel'])}, skmsg "
                f"{_short(decl['skmsg'])}) does not hold: kernel {_short(kv)}, skmsg {_short(sv)}"
            )
    for field, decl in declared.items():
        problems.append(
            f"{field}: declared {decl['id']!r} names a field the scenario does not have"
        )
    status = "mismatch" if problems else ("declared" if used else "match")
    return Outcome(sc.name, sc.ref, status, problems, used)


def format_table(outcomes: list[Outcome], source: str) -> str:
    """The report: one row per scenario, then the totals."""
    width = max([len(o.name) for o in outcomes] + [8])
    ref_w = max([len(o.ref) for o in outcomes] + [3])
    lines = [
        f"{'scenario':<{width}}  {'ref':<{ref_w}}  kernel ({source}) vs skmsg",
        f"{'-' * width}  {'-' * ref_w}  {'-' * 40}",
    ]
    for o in outcomes:
        detail = o.status
        if o.declared:
            detail += " (" + ", ".join(o.declared) + ")"
        lines.append(f"{o.name:<{width}}  {o.ref:<{ref_w}}  {detail}")
        lines.extend(f"{'':<{width}}  {'':<{ref_w}}    {p}" for p in o.problems)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("match", "declared", "mismatch")}
    lines.append(
        f"{len(outcomes)} scenarios: {counts['match']} match, {counts['declared']} declared "
        f"difference(s), {counts['mismatch']} mismatch(es)"
    )
    return "\n".join(lines)
