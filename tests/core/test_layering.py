"""Layering is law: the sans-I/O core imports no trio (STYLE practice 1)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

CORE = pathlib.Path(__file__).resolve().parents[2] / "skmsg_core"
#: The one runtime module tree (and the testing helpers) that may import trio.
ALLOWED = {"runtime", "testing", "pytest_plugin"}


def test_importing_the_core_imports_no_trio() -> None:
    code = (
        "import sys\n"
        "import skmsg_core, skmsg_core.hookspecs\n"
        "import skmsg_core._ring, skmsg_core._helpers, skmsg_core._maps, skmsg_core._psock\n"
        "import skmsg_core._tx, skmsg_core._strparser, skmsg_core._progs\n"
        "m = skmsg_core.SockMap(max_entries=1)\n"
        "s = skmsg_core.Sock(skmsg_core.SkProtoBase(), state=skmsg_core.TcpState.ESTABLISHED)\n"
        "m.update(0, s); m.delete(0)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m == 'trio' or m.startswith(('trio.', 'outcome')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_core_module_imports_trio_outside_the_runtime() -> None:
    offenders = []
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE)
        if rel.parts[0].lstrip("_").split(".")[0] in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "trio" or n.startswith("trio.") for n in names):
                offenders.append(str(rel))
    assert offenders == []
