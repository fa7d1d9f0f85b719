"""The user guide's examples run, so none can rot.

What runs: every ```` ```python ```` block of ``README.md`` and of every page
under ``docs/``, page by page, in order, in one namespace per page (a page
reads as a tutorial: a later block may use what an earlier one defined), in
a fresh interpreter per page. A block is a program a reader can paste: an
async example opens its own runtime on real loopback sockets and ends with
``trio.run(main)``; what the text says it does, the block asserts.

Two conventions, both rare:

- ``# content of NAME`` as a block's first line (pytest's own docs'
  convention) makes the block a file: it is written as NAME into a fresh
  directory for the page instead of being run; after the page, pytest runs
  in that directory if a ``test_*.py`` file is among them, and must pass.
  Such blocks may be ``ini``/``toml`` too.
- ``<!-- fragment -->`` on the line before a block: a piece shown for its
  shape, not a program; it is compiled (its syntax must hold), not run.

A failing block is reported as ``page.md:LINE`` with its traceback, whose
line numbers are the Markdown file's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
FILE_MARK = re.compile(r"^#\s*content of\s+(?P<name>[\w.\-/]+)\s*$")
FRAGMENT = "<!-- fragment -->"
TIMEOUT = 300  # seconds per page: TLS handshakes and real sockets on a loaded 2-core machine


@attrs.frozen
class Block:
    """One fenced block: its language, first code line (1-based) and code."""

    lang: str
    line: int
    code: str
    fragment: bool

    @property
    def file_name(self) -> str | None:
        first = self.code.split("\n", 1)[0]
        m = FILE_MARK.match(first)
        return m["name"] if m else None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, dedented to their fence."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        lang = (m["info"].split() or [""])[0].lstrip(".{").rstrip("}")
        before = next((x.strip() for x in reversed(lines[:i]) if x.strip()), "")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.name}:{i + 1}: a fence that never closes")
        code = textwrap.dedent(
            "\n".join(x[len(indent) :] if x.startswith(indent) else x for x in body)
        )
        found.append(Block(lang, i + 2, code, before == FRAGMENT))
        i = j + 1
    return found


def python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang in ("python", "py") for b in blocks(p))]


#: Run in a fresh interpreter: argv = the page, then (line, fragment) pairs;
#: the blocks come on stdin, separated by NUL.
RUNNER = r"""
import sys, traceback
page = sys.argv[1]
codes = sys.stdin.read().split("\0")
namespace = {"__name__": "__main__"}
for code, line, fragment in zip(codes, sys.argv[2::2], sys.argv[3::2]):
    line = int(line)
    compiled = compile("\n" * (line - 1) + code, page, "exec")
    if fragment == "1":
        continue
    try:
        exec(compiled, namespace)
    except BaseException:
        print(f"\n{page}:{line}: this example failed:\n", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


def run_page(path: Path, tmp_path: Path, root: Path = ROOT) -> None:
    """Run ``path``'s examples (from ``root``), then the test files it shows."""
    page_blocks = blocks(path)
    programs = [b for b in page_blocks if b.lang in ("python", "py") and b.file_name is None]
    files = [b for b in page_blocks if b.file_name is not None]
    rel = str(path.relative_to(root))
    argv = [sys.executable, "-c", RUNNER, rel]
    for b in programs:
        argv += [str(b.line), "1" if b.fragment else "0"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        argv,
        input="\0".join(b.code for b in programs),
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode:
        pytest.fail(f"{rel}: an example failed\n{done.stdout}\n{done.stderr}", pytrace=False)
    if not files:
        return
    for b in files:
        assert b.file_name is not None
        target = tmp_path / b.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(b.code, encoding="utf-8")
    if not any(Path(b.file_name or "").name.startswith("test_") for b in files):
        return
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )
    if tests.returncode:
        pytest.fail(
            f"{rel}: the test files it shows did not pass\n{tests.stdout}\n{tests.stderr}",
            pytrace=False,
        )


@pytest.mark.parametrize("path", python_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run(path: Path, tmp_path: Path) -> None:
    run_page(path, tmp_path)


def test_the_guide_has_examples_and_few_fragments() -> None:
    """The harness finds the guide's examples (a broken scan would pass
    vacuously), and fragments stay the exception."""
    every = [b for p in PAGES for b in blocks(p) if b.lang in ("python", "py")]
    assert len(every) >= 30, len(every)
    assert sum(b.fragment for b in every) <= 3
    assert {p.name for p in python_pages()} >= {
        "README.md",
        "programs.md",
        "maps.md",
        "receive.md",
        "tls.md",
        "testing.md",
        "writing-plugins.md",
        "policies.md",
    }


def test_a_failing_example_fails_the_page(tmp_path: Path) -> None:
    """The harness can fail: a block whose assertion is false fails its page,
    naming the Markdown line; a fragment is only compiled; a test file that
    fails fails the page."""
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- fragment -->\n```python\nundefined_name()\n```\n"
        "\n```python\nassert x == 2, 'x is 1'\n```\n",
        encoding="utf-8",
    )
    with pytest.raises(pytest.fail.Exception, match=r"page\.md:13: this example failed"):
        run_page(page, mkdir(tmp_path / "files"), tmp_path)
    page.write_text("```python\n# content of test_it.py\ndef test_it():\n    assert False\n```\n")
    with pytest.raises(pytest.fail.Exception, match="did not pass"):
        run_page(page, mkdir(tmp_path / "files2"), tmp_path)
    page.write_text("<!-- fragment -->\n```python\nundefined_name(\n```\n")
    with pytest.raises(pytest.fail.Exception, match="SyntaxError"):
        run_page(page, mkdir(tmp_path / "files3"), tmp_path)


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path
