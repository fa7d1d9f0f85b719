"""The verifier's data rules: a program reads its message through a memoryview.

A program's context hands it the message as ``data``, a memoryview (writable
for ``SK_MSG``'s ``msg.data``, read-only for ``SK_SKB``'s ``skb.data``), not
``bytes``. Three things written as for ``bytes`` go wrong on it without a
word, and are refused at load time:

- ``needle in data`` (``not in``) compares ``needle`` with single elements:
  ``b"ab" in memoryview(b"xxabxx")`` is False, so such a search never matches;
- ``data < other`` (``<=``, ``>``, ``>=``) raises TypeError, and a verdict
  that raises drops every message;
- a ``bytes`` method a memoryview lacks (:data:`BYTES_ONLY`: ``startswith``,
  ``find``, ``split``, ``decode`` ...) raises AttributeError, the same way.

What to write instead copies what is searched or ordered: ``b"x" in
bytes(skb.data)``, ``msg.data.tobytes()``; ``int.from_bytes()``, indexing,
``len()``, ``==``, slicing and ``bytes()`` are fine on the view.

Theory of operation: an abstract interpretation of the program's bytecode
(CPython 3.11; the opcodes 3.12 and 3.13 add too). Each stack slot and local
holds a :class:`_Val`: bits saying it is the context (the program's first
argument), a view made from the context's ``data`` (by ``.data``, slicing,
``memoryview()``, ``.cast()``, ``.toreadonly()``), a slice, or a callable
that makes a view; its source text, for the message; the function it is,
where known. A worklist walks the control-flow graph (jumps and exception
table), joining the states where paths meet until none changes: the lattice
is finite. An opcode with no rule here only loses precision: its stack
effect (:func:`dis.stack_effect`) applies and the values it may have touched
are forgotten. Nested code (lambdas, closures, comprehensions) is walked
with its free variables as the enclosing code left them; a function of the
program's module that is handed the context or a view, with its arguments.
Builtins and callables with no Python code are trusted: nothing to read.
"""

from __future__ import annotations

import builtins
import contextlib
import dis
import functools
import types
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["BYTES_ONLY", "find_data_misuse"]

#: Methods of ``bytes`` a memoryview does not have (on this Python).
BYTES_ONLY = frozenset(n for n in set(dir(bytes)) - set(dir(memoryview)) if n[0] != "_")

CTX, VIEW, SLICE, MAKES_VIEW = 1, 2, 4, 8
_ORDERING = frozenset({"<", "<=", ">", ">="})
_VIEW_METHODS = frozenset({"cast", "toreadonly"})
_JUMPS = frozenset(dis.hasjrel + dis.hasjabs + list(getattr(dis, "hasjump", [])))
_TERMINAL = frozenset({"RETURN_VALUE", "RETURN_CONST", "RAISE_VARARGS", "RERAISE"})
_MAX_WALKS = 256  # code objects walked per program, with distinct inputs
_MAX_STEPS = 20_000  # instructions stepped per walk

#: Opcodes modelled as "pop N, push untracked values" (N from the oparg where
#: a function; None: pop only). Any other opcode with no rule clears the stack.
_POPS: dict[str, int | Callable[[int], int] | None] = {
    "POP_TOP": None, "END_FOR": None, "POP_EXCEPT": None, "POP_ITER": None,
    "NOP": 0, "RESUME": 0, "CACHE": 0, "EXTENDED_ARG": 0, "MAKE_CELL": 0,
    "COPY_FREE_VARS": 0, "RETURN_GENERATOR": 0, "PUSH_NULL": 0, "LOAD_CLOSURE": 0,
    "LOAD_NAME": 0, "LOAD_ASSERTION_ERROR": 0, "LOAD_BUILD_CLASS": 0, "GET_LEN": 0,
    "IMPORT_FROM": 0, "BINARY_OP": 2, "IS_OP": 2, "UNARY_NEGATIVE": 1, "UNARY_NOT": 1,
    "UNARY_INVERT": 1, "UNARY_POSITIVE": 1, "TO_BOOL": 1, "GET_ITER": 1, "FOR_ITER": 1,
    "CHECK_EXC_MATCH": 1, "PUSH_EXC_INFO": 1, "YIELD_VALUE": 1, "STORE_ATTR": 2,
    "STORE_SUBSCR": 3, "STORE_SLICE": 4, "DELETE_SUBSCR": 2, "STORE_GLOBAL": 1,
    "STORE_NAME": 1, "UNPACK_SEQUENCE": 1, "UNPACK_EX": 1, "LIST_APPEND": 1, "SET_ADD": 1,
    "MAP_ADD": 2, "LIST_EXTEND": 1, "SET_UPDATE": 1, "DICT_UPDATE": 1, "DICT_MERGE": 1,
    "LIST_TO_TUPLE": 1, "FORMAT_SIMPLE": 1, "FORMAT_WITH_SPEC": 2, "CONVERT_VALUE": 1,
    "IMPORT_NAME": 2, "CALL_INTRINSIC_1": 1, "CALL_INTRINSIC_2": 2,
    **dict.fromkeys(("BUILD_TUPLE", "BUILD_LIST", "BUILD_SET", "BUILD_STRING"), lambda a: a),
    "BUILD_MAP": lambda a: 2 * a, "BUILD_CONST_KEY_MAP": lambda a: a + 1,
    "FORMAT_VALUE": lambda a: 2 if a & 4 else 1, "CALL_FUNCTION_EX": lambda a: 3 + (a & 1),
}


class _Val(NamedTuple):
    """What the walk knows of one value: bits, source text, the function it is."""

    bits: int = 0
    text: str = ""
    callee: Any = None  # a function or code object

    def join(self, other: _Val) -> _Val:
        """The value on either of two paths."""
        if self == other:
            return self
        callee = self.callee if self.callee is other.callee else None
        return _Val(self.bits | other.bits, self.text if self.text == other.text else "", callee)


_NONE = _Val()
_State = tuple[list[_Val], dict[str, _Val]]
_Exit = tuple[int | None, bool]  # the next instruction's index (None: none), jumped


def find_data_misuse(func: Callable[..., Any]) -> str | None:
    """What the program ``func`` (a function, seen through ``functools.partial``,
    bound methods and a callable object's ``__call__``) does wrong with its
    context's ``data``: the first misuse by line, naming the function, the line
    and what to write instead; None if nothing (or no Python code) is found.
    Never raises: what the walk does not understand is not refused."""
    target: Any
    skip, target = 0, func
    for _ in range(8):  # a partial of a bound method of ...: a few layers at most
        if isinstance(target, functools.partial):
            skip, target = skip + len(target.args), target.func
        elif isinstance(target, types.MethodType):
            skip, target = skip + 1, target.__func__
        elif isinstance(target, types.FunctionType):
            break
        else:  # a callable object: its __call__; a builtin's has no Python code
            target = getattr(target, "__call__", None)  # noqa: B004
            if not isinstance(target, (types.MethodType, types.FunctionType)):
                return None
    else:
        return None
    code = target.__code__
    params = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    args = tuple(_Val(CTX, n) if i == skip else _NONE for i, n in enumerate(params))
    walker = _Walker(target.__globals__)
    walker.walk(code, args, walker.closure(target))
    return min(walker.found.values())[1] if walker.found else None


class _Walker:
    """Walks the code of one program, and what it calls, collecting misuses."""

    def __init__(self, globals_: dict[str, Any]) -> None:
        self.globals = globals_
        self.found: dict[tuple[types.CodeType, int], tuple[int, str]] = {}
        self.memo: dict[tuple[Any, ...], _Val] = {}

    def concrete(self, obj: object, text: str) -> _Val:
        """The value of a known object: a global or a closure's cell."""
        if obj is memoryview:
            return _Val(MAKES_VIEW, "memoryview(...)")
        if isinstance(obj, memoryview):
            return _Val(VIEW, text)
        if isinstance(obj, types.FunctionType) and obj.__globals__ is self.globals:
            return _Val(0, text, obj)
        return _Val(0, text)

    def closure(self, func: types.FunctionType) -> dict[str, _Val]:
        """The values of ``func``'s free variables, from its cells."""
        frees = {}
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
            try:
                frees[name] = self.concrete(cell.cell_contents, name)
            except ValueError:  # an empty cell
                frees[name] = _NONE
        return frees

    def walk(self, code: types.CodeType, args: tuple[_Val, ...], frees: dict[str, _Val]) -> _Val:
        """Walk ``code`` with these parameter and free-variable values to a fixed
        point, then its nested code; return what it may return."""
        key = (code, args, tuple(frees.get(n, _NONE) for n in code.co_freevars))
        if key in self.memo or len(self.memo) >= _MAX_WALKS:
            return self.memo.get(key, _NONE)
        self.memo[key] = _NONE  # what a recursive call sees while this walk runs
        instrs = list(dis.get_instructions(code))
        at = {ins.offset: i for i, ins in enumerate(instrs)}
        handlers = getattr(dis.Bytecode(code), "exception_entries", [])
        env = {n: frees.get(n, _NONE) for n in code.co_freevars}
        env.update(zip(code.co_varnames, args, strict=False))
        states: dict[int, _State] = {0: ([], env)}
        work, ret, steps = [0], _NONE, 0
        while work and steps < _MAX_STEPS:
            i = work.pop()
            ins = instrs[i]
            stack, env = states[i]
            for h in handlers:
                if h.start <= ins.offset < h.end:
                    entry = stack[: h.depth] + [_NONE] * (1 + h.lasti)
                    _flow(states, work, at.get(h.target), (entry, env))
            for j, jump in _exits(ins, i, at, len(instrs)):
                steps += 1
                s, e = list(stack), dict(env)
                returned = self._step(code, instrs, i, s, e, jump=jump)
                if returned is not None:
                    ret = ret.join(returned)
                _flow(states, work, j, (s, e))
        seen: dict[str, _Val] = {}
        for n, v in ((n, v) for _, e in states.values() for n, v in e.items()):
            seen[n] = seen.get(n, v).join(v)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.walk(const, (), seen)
        self.memo[key] = ret
        return ret

    def _step(
        self, code: types.CodeType, instrs: list[dis.Instruction], i: int, stack: list[_Val],
        env: dict[str, _Val], *, jump: bool,
    ) -> _Val | None:
        """Apply instruction ``i`` to a state in place; a RETURN's value is returned."""
        ins = instrs[i]
        name, argval, arg = ins.opname, ins.argval, ins.arg or 0

        def pop(k: int = 1) -> list[_Val]:
            got = [stack.pop() if stack else _NONE for _ in range(k)]
            return got[::-1]  # in stack order, the top last

        if name in ("PRECALL", "KW_NAMES"):  # CALL takes the arguments
            return None
        if name == "RETURN_VALUE":
            return pop()[0]
        if name == "RETURN_CONST":
            return _NONE
        names = argval if isinstance(argval, tuple) else (argval,)
        if name.startswith("LOAD_FAST") or name in ("LOAD_DEREF", "LOAD_CLASSDEREF"):
            stack.extend(env.get(n, _NONE)._replace(text=n) for n in names)
        elif name == "STORE_FAST_LOAD_FAST":
            env[names[0]] = pop()[0]
            stack.append(env.get(names[1], _NONE)._replace(text=names[1]))
        elif name.startswith("STORE_FAST") or name == "STORE_DEREF":
            for n in names:
                env[n] = pop()[0]
        elif name in ("DELETE_FAST", "DELETE_DEREF"):
            env[argval] = _NONE
        elif name == "LOAD_CONST":
            stack.append(_const(argval))
        elif name == "LOAD_GLOBAL":
            obj = self.globals[argval] if argval in self.globals else getattr(builtins, argval, 0)
            stack.extend([_NONE] * ((_effect(ins, jump) or 1) - 1))
            stack.append(self.concrete(obj, argval))
        elif name in ("LOAD_ATTR", "LOAD_METHOD"):
            (obj,) = pop()
            if obj.bits & VIEW and argval in BYTES_ONLY:
                t = obj.text or "data"
                self._report(code, ins, f"`{t}.{argval}`: a memoryview has no .{argval} "
                             "(AttributeError when it runs: every message dropped); "
                             f"write `bytes({t}).{argval}(...)`")
            if obj.bits & CTX and argval == "data":
                val = _Val(VIEW, f"{obj.text}.data")
            elif obj.bits & VIEW and argval in _VIEW_METHODS:
                val = _Val(MAKES_VIEW, f"{obj.text}.{argval}(...)")
            else:
                val = _Val(0, f"{obj.text}.{argval}" if obj.text else "")
            stack.extend([val] * (1 + (_effect(ins, jump) or 0)))  # a method: two slots
        elif name == "MAKE_FUNCTION":  # the code on top, the flags' extras under it
            (fn,) = pop(1 - (_effect(ins, jump) or 0))[-1:]
            stack.append(_Val(0, "", fn.callee if isinstance(fn.callee, types.CodeType) else None))
        elif name == "SET_FUNCTION_ATTRIBUTE":
            stack.append(pop(2)[1])
        elif name in ("CALL", "CALL_KW"):
            kwnames = _kwnames(code, instrs, i)
            if name == "CALL_KW":
                pop()
            argv, heads = pop(arg), pop(2)
            stack.append(self._call(heads, argv, kwnames, env))
        elif name == "BUILD_SLICE":
            stack.append(_Val(SLICE, _slice_text(pop(arg))))
        elif name in ("BINARY_SUBSCR", "BINARY_SLICE"):  # 3.12: x[a:b] in one opcode
            obj, *index = pop(2 if name == "BINARY_SUBSCR" else 3)
            sl = index[0] if len(index) == 1 else _Val(SLICE, _slice_text(index))
            view = obj.bits & VIEW and sl.bits & SLICE
            stack.append(_Val(VIEW, f"{obj.text}[{sl.text}]") if view else _NONE)
        elif name == "CONTAINS_OP":
            needle, box = pop(2)
            if box.bits & VIEW:
                n, c, op = needle.text or "...", box.text or "data", "not in" if arg else "in"
                self._report(code, ins, f"`{n} {op} {c}`: `in` on a memoryview compares single "
                             f"elements, it does not search for bytes; write `{n} {op} bytes({c})`")
            stack.append(_NONE)
        elif name == "COMPARE_OP":
            left, right = pop(2)
            op = argval if isinstance(argval, str) else ins.argrepr
            op = op.removeprefix("bool(").removesuffix(")")
            if op in _ORDERING and (left.bits | right.bits) & VIEW:
                a, b = (_as_bytes(v) for v in (left, right))
                self._report(code, ins, f"`{left.text or '...'} {op} {right.text or '...'}` on a "
                             "memoryview raises TypeError when it runs (every message dropped); "
                             f"compare bytes: `{a} {op} {b}`")
            stack.append(_NONE)
        elif name == "COPY" and 1 <= arg <= len(stack):
            stack.append(stack[-arg])
        elif name == "SWAP" and 2 <= arg <= len(stack):
            stack[-1], stack[-arg] = stack[-arg], stack[-1]
        else:
            _generic(ins, stack, jump)
        return None

    def _call(self, heads: list[_Val], argv: list[_Val], kwnames: Any, env: dict[str, Any]) -> _Val:
        """What a call returns: a view from a view maker; what a known function
        returns, walked with these arguments; else nothing known."""
        for h in heads:
            if h.bits & MAKES_VIEW:
                return _Val(VIEW, h.text)
        callee = next((h.callee for h in heads if h.callee is not None), None)
        if callee is None or not any(a.bits & (CTX | VIEW) for a in argv):
            return _NONE  # unknown, or it is not handed the context
        kwnames, argv = (kwnames, argv) if kwnames is not None else ((), [])  # names unknown
        npos = len(argv) - len(kwnames)
        kw = dict(zip(kwnames, argv[npos:], strict=False))
        code = callee if isinstance(callee, types.CodeType) else callee.__code__
        frees = env if isinstance(callee, types.CodeType) else self.closure(callee)
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        args = tuple(argv[k] if k < npos else kw.get(n, _NONE) for k, n in enumerate(names))
        got = self.walk(code, args, frees)
        return _Val(got.bits & (CTX | VIEW), f"{getattr(callee, '__name__', 'f')}(...)")

    def _report(self, code: types.CodeType, ins: dis.Instruction, what: str) -> None:
        line = (ins.positions.lineno if ins.positions else None) or code.co_firstlineno
        self.found[code, ins.offset] = (line, f"{code.co_qualname} at line {line}: {what}")


def _exits(ins: dis.Instruction, i: int, at: dict[int, int], n: int) -> list[_Exit]:
    """Where control goes after ``ins``: (instruction index or None, jumped)."""
    nxt = i + 1 if i + 1 < n else None
    if ins.opname in _TERMINAL:
        return [(None, False)]
    target = at.get(ins.argval) if ins.opcode in _JUMPS and type(ins.argval) is int else None
    if target is None:
        return [(nxt, False)]
    if ins.opname.startswith("JUMP") and "IF" not in ins.opname:
        return [(target, True)]
    return [(target, True), (nxt, False)]


def _flow(states: dict[int, _State], work: list[int], j: int | None, state: _State) -> None:
    """Join ``state`` into instruction ``j``'s; queue ``j`` if that changed it."""
    if j is None:
        return
    stack, env = state
    old = states.get(j)
    if old is not None:
        ostack, oenv = old
        n = min(len(ostack), len(stack))
        stack = [a.join(b) for a, b in zip(ostack[:n], stack[:n], strict=True)]
        env = {k: oenv.get(k, _NONE).join(env.get(k, _NONE)) for k in oenv.keys() | env}
        if stack == ostack and env == oenv:
            return
    states[j] = (stack, env)
    work.append(j)


def _const(c: object) -> _Val:
    """The value of a constant: code to make a function of, a slice, or text."""
    if isinstance(c, types.CodeType):
        return _Val(0, "", c)
    if isinstance(c, slice):
        return _Val(SLICE, _slice_text([_const(c.start), _const(c.stop)]))
    text = repr(c)
    return _Val(0, text if len(text) <= 40 and not isinstance(c, tuple) else "")


def _slice_text(parts: list[_Val]) -> str:
    if any(not p.text for p in parts):
        return "..."
    return ":".join("" if p.text == "None" else p.text for p in parts)


def _as_bytes(v: _Val) -> str:
    return f"bytes({v.text or '...'})" if v.bits & VIEW else v.text or "..."


def _kwnames(code: types.CodeType, instrs: list[dis.Instruction], i: int) -> Any:
    """The keyword names of the call at ``i`` (a tuple, from ``KW_NAMES`` or, in
    3.13, the constant before ``CALL_KW``); None if they cannot be told."""
    kw = next((p for p in instrs[max(0, i - 2) : i] if p.opname == "KW_NAMES"), None)
    if instrs[i].opname == "CALL_KW":
        kw = instrs[i - 1] if instrs[i - 1].opname == "LOAD_CONST" else None
    elif kw is None:
        return ()
    names = kw and (code.co_consts[kw.arg or 0] if kw.opname == "KW_NAMES" else kw.argval)
    return names if isinstance(names, tuple) else None  # 3.11's dis leaves KW_NAMES' index


def _effect(ins: dis.Instruction, jump: bool) -> int | None:
    """``dis.stack_effect`` of ``ins`` on the branch taken; None if it cannot tell."""
    for arg in (ins.arg, None):
        with contextlib.suppress(ValueError, TypeError):
            return dis.stack_effect(ins.opcode, arg, jump=jump)
    return None


def _generic(ins: dis.Instruction, stack: list[_Val], jump: bool) -> None:
    """An opcode with no rule of its own: pop what it pops (as far as known),
    push untracked values; if what it pops is not known, forget the whole stack."""
    name, net = ins.opname, _effect(ins, jump)
    jumps = 1 if name.startswith(("POP_JUMP", "JUMP_IF")) else 0 if name.startswith("JUMP") else -1
    pops = _POPS.get(name, jumps)
    if callable(pops):
        pops = pops(ins.arg or 0)
    if net is None:
        stack[:] = [_NONE] * len(stack)
    elif pops is None:
        del stack[max(0, len(stack) + net) :]
    elif pops < 0 or pops + net < 0:
        stack[:] = [_NONE] * max(0, len(stack) + net)
    else:
        del stack[max(0, len(stack) - pops) :]
        stack.extend([_NONE] * (pops + net))
