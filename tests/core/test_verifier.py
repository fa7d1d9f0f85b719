"""The verifier's data rules (``_verifier``): a program that searches, orders or
calls a ``bytes``-only method on its context's ``data`` memoryview is refused
when it is loaded, with the line and the fix; the right idioms still load."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import pathlib
import re
import runpy
import ssl
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import skmsg_core as sk
from skmsg_core._verifier import BYTES_ONLY, find_data_misuse

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = pathlib.Path(__file__).read_text().splitlines()
PATTERNS = (b"FORBIDDEN", b"SECRET")


def line_of(case: str) -> int:
    """The line of this file marked ``# refused: case``."""
    (line,) = [i for i, text in enumerate(SOURCE, 1) if text.endswith(f"# refused: {case}")]
    return line


# -- refused: programs written as if data were bytes ---------------------------------------


def contains(skb: Any, backends: Any) -> int:
    if b"FORBIDDEN" in skb.data:  # refused: in
        return sk.SK_DROP
    return sk.sk_redirect_map(skb, backends, 0, 0)


def not_contains(skb: Any) -> int:
    return sk.SK_PASS if b"SECRET" not in skb.data else sk.SK_DROP  # refused: not-in


def via_local(skb: Any) -> int:
    data = skb.data
    payload = data
    return sk.SK_DROP if b"GET" in payload else sk.SK_PASS  # refused: local


def via_slice(skb: Any) -> int:
    return sk.SK_DROP if b"GET" in skb.data[4:] else sk.SK_PASS  # refused: slice


def via_memoryview_cast(msg: Any) -> int:
    view = memoryview(msg.data).cast("B").toreadonly()
    return sk.SK_DROP if b"GET" in view else sk.SK_PASS  # refused: cast


def via_walrus(skb: Any) -> int:
    if (d := skb.data) and b"x" in d:  # refused: walrus
        return sk.SK_DROP
    return sk.SK_PASS


def closure(skb: Any) -> int:
    def has(pattern: bytes) -> bool:
        return pattern in skb.data  # refused: closure

    return sk.SK_DROP if has(b"X") else sk.SK_PASS


def lambda_inside(skb: Any) -> int:
    hits = filter(lambda p: p in skb.data, PATTERNS)  # refused: lambda-inside
    return sk.SK_DROP if any(hits) else sk.SK_PASS


def genexpr(skb: Any) -> int:
    return sk.SK_DROP if any(p in skb.data for p in PATTERNS) else sk.SK_PASS  # refused: genexpr


def listcomp(msg: Any) -> int:
    hits = [p for p in PATTERNS if p in msg.data]  # refused: listcomp
    return sk.SK_DROP if hits else sk.SK_PASS


def ordering(skb: Any, backends: Any) -> int:
    key = 0 if skb.data[4:5] < b"n" else 1  # refused: ordering
    return sk.sk_redirect_map(skb, backends, key, 0)


def ordering_right(skb: Any) -> int:
    low = b"a"
    return sk.SK_DROP if low <= skb.data else sk.SK_PASS  # refused: ordering-right


def chained(skb: Any) -> int:
    return sk.SK_DROP if b"a" < skb.data[:1] < b"n" else sk.SK_PASS  # refused: chained


def startswith(msg: Any) -> int:
    return sk.SK_DROP if msg.data.startswith(b"SECRET") else sk.SK_PASS  # refused: startswith


def find(skb: Any) -> int:
    return 0 if skb.len < 1 else skb.data.find(b"\n") + 1  # refused: find


def decode(skb: Any) -> int:
    return sk.SK_DROP if "admin" in skb.data.decode() else sk.SK_PASS  # refused: decode


def in_except(skb: Any) -> int:
    try:
        return int(skb.sk.cookie)
    except Exception:
        return sk.SK_DROP if b"X" in skb.data else sk.SK_PASS  # refused: except


class Guard:
    def __init__(self) -> None:
        self.data = {b"kept"}

    def __call__(self, skb: Any, backends: Any) -> int:
        if b"kept" in self.data and b"X" in skb.data:  # refused: call-object
            return sk.SK_DROP
        return sk.SK_PASS


def _with_patterns(patterns: tuple[bytes, ...], skb: Any) -> int:
    for p in patterns:
        if p in skb.data:  # refused: partial
            return sk.SK_DROP
    return sk.SK_PASS


def _has(data: memoryview, pattern: bytes) -> bool:
    return pattern in data  # refused: helper


def via_helper(skb: Any) -> int:
    return sk.SK_DROP if _has(skb.data, pattern=b"X") else sk.SK_PASS


def _payload(skb: Any) -> memoryview:
    return skb.data[4:]


def via_helper_result(skb: Any) -> int:
    return sk.SK_DROP if b"X" in _payload(skb) else sk.SK_PASS  # refused: helper-result


#: (case, program, arguments it takes, the fix the message names)
REFUSED: list[tuple[str, Callable[..., Any], int, str]] = [
    ("in", contains, 2, "write `b'FORBIDDEN' in bytes(skb.data)`"),
    ("not-in", not_contains, 1, "write `b'SECRET' not in bytes(skb.data)`"),
    ("local", via_local, 1, "write `b'GET' in bytes(payload)`"),
    ("slice", via_slice, 1, "write `b'GET' in bytes(skb.data[4:])`"),
    ("cast", via_memoryview_cast, 1, "write `b'GET' in bytes(view)`"),
    ("walrus", via_walrus, 1, "write `b'x' in bytes(d)`"),
    (
        "lambda",
        lambda skb: sk.SK_DROP if b"X" in skb.data else sk.SK_PASS,  # refused: lambda
        1,
        "write `b'X' in bytes(skb.data)`",
    ),
    ("lambda-inside", lambda_inside, 1, "write `p in bytes(skb.data)`"),
    ("closure", closure, 1, "write `pattern in bytes(skb.data)`"),
    ("genexpr", genexpr, 1, "write `p in bytes(skb.data)`"),
    ("listcomp", listcomp, 1, "write `p in bytes(msg.data)`"),
    ("ordering", ordering, 2, "compare bytes: `bytes(skb.data[4:5]) < b'n'`"),
    ("ordering-right", ordering_right, 1, "compare bytes: `low <= bytes(skb.data)`"),
    ("chained", chained, 1, "compare bytes: `b'a' < bytes(skb.data[:1])`"),
    ("startswith", startswith, 1, "write `bytes(msg.data).startswith(...)`"),
    ("find", find, 1, "write `bytes(skb.data).find(...)`"),
    ("decode", decode, 1, "write `bytes(skb.data).decode(...)`"),
    ("except", in_except, 1, "write `b'X' in bytes(skb.data)`"),
    ("call-object", Guard(), 2, "write `b'X' in bytes(skb.data)`"),
    ("partial", functools.partial(_with_patterns, PATTERNS), 1, "write `p in bytes(skb.data)`"),
    ("helper", via_helper, 1, "write `pattern in bytes(data)`"),
    ("helper-result", via_helper_result, 1, "write `b'X' in bytes(_payload(...))`"),
]


@pytest.mark.parametrize(("case", "prog", "nargs", "fix"), REFUSED, ids=[r[0] for r in REFUSED])
def test_data_used_as_bytes_is_refused_with_the_line_and_the_fix(
    case: str, prog: Callable[..., Any], nargs: int, fix: str
) -> None:
    where = f" at line {line_of(case)}: "
    with pytest.raises(sk.ProgramShapeError) as info:
        sk.check_program_callable(prog, nargs=nargs)
    assert info.value.kind == "memoryview"
    assert where in str(info.value)
    assert str(info.value).endswith(fix)
    if nargs == 1:
        with pytest.raises(OSError, match=re.escape(where)) as loading:
            sk.Program.load(prog, sk.BpfProgType.SK_SKB)
        assert loading.value.errno == errno.EINVAL
        assert fix in str(loading.value)


def test_the_message_names_the_program_the_line_and_why() -> None:
    assert find_data_misuse(contains) == (
        f"contains at line {line_of('in')}: `b'FORBIDDEN' in skb.data`: `in` on a memoryview "
        "compares single elements, it does not search for bytes; "
        "write `b'FORBIDDEN' in bytes(skb.data)`"
    )
    with pytest.raises(OSError) as info:
        sk.Program.load(genexpr, sk.BpfProgType.SK_SKB)
    assert info.value.strerror.startswith(
        f"program genexpr: genexpr.<locals>.<genexpr> at line {line_of('genexpr')}: "
    )
    assert "raises TypeError when it runs" in str(find_data_misuse(ordering))
    assert "a memoryview has no .startswith (AttributeError" in str(find_data_misuse(startswith))


def test_bytes_only_methods_are_those_a_memoryview_lacks() -> None:
    assert {"startswith", "endswith", "find", "rfind", "split", "decode", "lower", "upper",
            "strip", "replace", "partition"} <= BYTES_ONLY
    assert not BYTES_ONLY & {"tobytes", "hex", "tolist", "cast", "toreadonly", "release"}
    view = memoryview(b"x")
    assert not [name for name in BYTES_ONLY if hasattr(view, name)]


# -- accepted: the right idioms ----------------------------------------------------------


def searched_in_bytes(skb: Any, backends: Any) -> int:
    if b"FORBIDDEN" in bytes(skb.data):
        return sk.SK_DROP
    return sk.sk_redirect_map(skb, backends, 0, 0)


def tobytes_and_numbers(msg: Any) -> int:
    body = msg.data.tobytes()
    n = int.from_bytes(msg.data[:4], "big")
    if b"SECRET" in body or n > 1000 or msg.data[4] < 0x20 or len(msg.data) >= 64:
        return sk.SK_DROP
    return sk.SK_PASS


def equality_index_and_slices(skb: Any) -> int:
    head = skb.data[:3]
    if head == b"GET" or skb.data[0] == ord("!") or skb.data[-1:] != b"\n":
        return sk.SK_DROP
    return sk.SK_PASS if skb.data.nbytes and skb.data.hex() and skb.data.tolist() else 0


def digests_and_regexps(skb: Any) -> int:
    digest = hashlib.sha256(bytes(skb.data)).digest()
    if re.search(rb"admin", bytes(skb.data)) or digest[:1] < b"\x10":
        return sk.SK_DROP
    first = bytes(skb.data[4:5])
    return sk.SK_DROP if first < b"m" or bytes(skb.data).startswith(b"!") else sk.SK_PASS


def searches_in_a_genexpr(skb: Any) -> int:
    data = bytes(skb.data)
    return sk.SK_DROP if any(p in data for p in PATTERNS) else sk.SK_PASS


def other_containers(skb: Any, backends: Any) -> int:
    key, header = 0, b"xyz"
    if key in backends and skb.sk in {None} and b"x" in header and 3 in PATTERNS:
        return sk.SK_DROP
    return sk.SK_PASS


def _count(data: memoryview) -> int:
    return len(data) + data[0]


def via_helper_that_reads(skb: Any) -> int:
    return sk.SK_PASS if _count(skb.data) and _count(data=skb.data) else sk.SK_DROP


class OwnData:
    """A callable object with a ``data`` attribute of its own: not the context's."""

    def __init__(self) -> None:
        self.data = {b"kept"}

    def __call__(self, skb: Any, backends: Any) -> int:
        return sk.SK_DROP if b"kept" in self.data or self.data < {b"x"} else sk.SK_PASS


ACCEPTED: list[tuple[Callable[..., Any], int]] = [
    (searched_in_bytes, 2),
    (tobytes_and_numbers, 1),
    (equality_index_and_slices, 1),
    (digests_and_regexps, 1),
    (searches_in_a_genexpr, 1),
    (other_containers, 2),
    (via_helper_that_reads, 1),
    (OwnData(), 2),
    (lambda skb: sk.SK_PASS, 1),
    (len, 1),  # no Python code: trusted
    (functools.partial(max, 0), 1),
]


@pytest.mark.parametrize(("prog", "nargs"), ACCEPTED)
def test_the_right_idioms_load(prog: Callable[..., Any], nargs: int) -> None:
    assert find_data_misuse(prog) is None
    sk.check_program_callable(prog, nargs=nargs)


def test_a_refused_program_rewritten_with_bytes_runs_and_drops() -> None:
    prog = sk.Program.load(functools.partial(searched_in_bytes, backends=None),
                           sk.BpfProgType.SK_SKB)
    skb = sk.SkBuff()
    assert prog.run_verdict(skb.reset(memoryview(b"\0\0\0\x0bFORBIDDEN!!"))) is sk.Verdict.DROP
    assert prog.statistics().errors == 0


# -- every program of the project still loads ------------------------------------------


def test_the_examples_programs_load(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("route.py", "dns_route.py"):  # policy files: verdict(skb, backends)
        sk.check_program_callable(runpy.run_path(str(ROOT / "examples" / name))["verdict"],
                                  nargs=2)
    demo = runpy.run_path(str(ROOT / "examples" / "policy_demo.py"))
    demo["egress_demo"]()  # attaching loads each program
    demo["lb_demo"]()
    assert "SECRET plans" in capsys.readouterr().out
    tls = runpy.run_path(str(ROOT / "examples" / "tls_l7_policy.py"))
    tls["HttpsServer"](ssl.create_default_context())  # attaches its verdict


def _programs(path: pathlib.Path) -> Iterator[types.CodeType]:
    """Every code object of ``path`` whose context argument is named as a
    program's is (``skb``, ``msg``, ``ctx``, ``md``; after ``self``)."""
    todo = [compile(path.read_text(), str(path), "exec")]
    while todo:
        code = todo.pop()
        todo += [c for c in code.co_consts if isinstance(c, types.CodeType)]
        params = code.co_varnames[: code.co_argcount]
        if params[:1] in (("self",), ("cls",)):
            params = params[1:]
        if params[:1] in (("skb",), ("msg",), ("ctx",), ("md",)):
            yield code


def test_every_program_in_the_project_passes() -> None:
    """A sweep over the sources, tests and examples: each function shaped like a
    program (a context argument) is walked; none is refused (these files only)."""
    this = pathlib.Path(__file__).resolve()
    walked = []
    for top in ("skmsg_core", "plugins", "app", "examples", "tests"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path.resolve() == this:
                continue
            for code in _programs(path):
                func = types.FunctionType(
                    code, {}, code.co_name, None, tuple(types.CellType() for _ in code.co_freevars)
                )
                if code.co_varnames[:1] in (("self",), ("cls",)):
                    func = types.MethodType(func, object())  # type: ignore[assignment]
                assert find_data_misuse(func) is None, f"{path}: {code.co_qualname}"
                walked.append(code.co_qualname)
    assert len(walked) > 100
    assert {"verdict", "RoundRobin.__call__", "lb_demo.<locals>.route"} <= set(walked)


@pytest.mark.parametrize("module", [json, re, functools, pathlib, ssl])
def test_walking_any_code_never_raises(module: types.ModuleType) -> None:
    """Stdlib code, walked with its first argument as the context: the walk ends
    and answers, whatever it finds."""
    for obj in vars(module).values():
        funcs = [obj] if callable(obj) else []
        if isinstance(obj, type):
            funcs += [f for f in vars(obj).values() if isinstance(f, types.FunctionType)]
        for func in funcs:
            result = find_data_misuse(func)
            assert result is None or " at line " in result
