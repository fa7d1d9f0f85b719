"""Layering is law: the core imports no plugin and no application, plugins
import no application; and the core's own modules import one another without
cycles (type-only imports aside).

Checked on the import graph of the source: every ``import`` statement of every
module, at module level, in functions, and under ``TYPE_CHECKING`` alike,
resolved to the top-level package it names (relative imports included).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: Each layer's packages, where their source lives, and what they may import.
LAYERS: dict[str, tuple[pathlib.Path, int]] = {
    "skmsg_core": (ROOT / "skmsg_core", 0),
    "skmsg_tcp": (ROOT / "plugins" / "tcp" / "skmsg_tcp", 1),
    "skmsg_tls": (ROOT / "plugins" / "tls" / "skmsg_tls", 1),
    "skmsg_udp": (ROOT / "plugins" / "udp" / "skmsg_udp", 1),
    "skmsg_unix": (ROOT / "plugins" / "unix" / "skmsg_unix", 1),
    "skmsg": (ROOT / "app" / "skmsg", 2),
}
LEVEL_NAMES = {0: "the core", 1: "a plugin", 2: "the application"}


def module_name(package: str, path: pathlib.Path) -> str:
    rel = path.relative_to(LAYERS[package][0]).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(package: str, path: pathlib.Path) -> Iterator[tuple[str, int, bool]]:
    """``(module imported, line, type-only)`` for each import of ``path``;
    relative imports resolved against the module's package."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(package, path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    type_only_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        type_only_lines.add(sub.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, node.lineno in type_only_lines
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
                if not node.module:  # from . import x: each name may be a module
                    for alias in node.names:
                        yield f"{target}.{alias.name}", node.lineno, node.lineno in type_only_lines
                    continue
            else:
                target = node.module or ""
            yield target, node.lineno, node.lineno in type_only_lines


def sources() -> Iterator[tuple[str, pathlib.Path]]:
    for package, (where, _) in LAYERS.items():
        for path in sorted(where.rglob("*.py")):
            yield package, path


def test_every_import_points_down() -> None:
    wrong = []
    for package, path in sources():
        level = LAYERS[package][1]
        for target, line, _ in imports(package, path):
            top = target.split(".")[0]
            if top in LAYERS and top != package and LAYERS[top][1] >= level and not (
                level == 1 and LAYERS[top][1] == 1 and (package, top) in ALLOWED_PLUGIN_DEPS
            ):
                wrong.append(
                    f"{path}:{line}: {LEVEL_NAMES[level]} ({package}) "
                    f"imports {target} ({LEVEL_NAMES[LAYERS[top][1]]})"
                )
    assert wrong == []


#: A plugin may build on another plugin it declares as a dependency: TLS is a
#: ULP on the TCP plugin's streams (skmsg-tls depends on skmsg-tcp).
ALLOWED_PLUGIN_DEPS = {("skmsg_tls", "skmsg_tcp")}


def test_the_allowed_plugin_dependencies_are_declared() -> None:
    for user, used in ALLOWED_PLUGIN_DEPS:
        project = (LAYERS[user][0].parent / "pyproject.toml").read_text()
        assert f'"{used.replace("_", "-")}' in project, f"{user} must declare {used}"


def test_the_core_imports_itself_without_cycles() -> None:
    graph: dict[str, set[str]] = {}
    modules = {module_name("skmsg_core", p) for _, p in sources() if _ == "skmsg_core"}
    for package, path in sources():
        if package != "skmsg_core":
            continue
        name = module_name(package, path)
        edges = graph.setdefault(name, set())
        for imported, _, type_only in imports(package, path):
            if type_only:
                continue
            # "from . import x" and "from .x import y" both reach module x
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import skmsg_tcp\n", "skmsg_tcp"),
        ("from skmsg import main\n", "skmsg"),
        ("def f():\n    from skmsg_udp import open_udp_socket\n", "skmsg_udp"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import skmsg_tls\n",
            "skmsg_tls",
        ),
    ],
)
def test_the_check_sees_every_kind_of_import(
    source: str, expected: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guard for the check itself: an upward import of each shape, planted
    in a scratch copy of the core's layout, is reported."""
    fake = tmp_path / "skmsg_core"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "_bad.py").write_text(source)
    monkeypatch.setitem(LAYERS, "skmsg_core", (fake, 0))
    with pytest.raises(AssertionError, match=rf"imports {expected}\b"):
        test_every_import_points_down()
