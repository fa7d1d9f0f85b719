"""A griffe extension for the API reference (mkdocstrings, ``mkdocs.yml``).

**Helpers built at import time.** The redirect helpers
(``skmsg_core.msg_redirect_map`` and its siblings) are made by a factory and
given their docstrings at run time, where static analysis cannot see them:
a module attribute with no docstring of its own whose value is a function
with one takes that one.

**reST markup.** skmsg's docstrings are written for ``help()`` and editors, with the reST
markup Python's own docs use: ``:func:`name```, ``:class:`~pkg.Name```,
``:meth:`SockMap.attach```, and ``Text::`` before a literal block. The API
reference is Markdown, so each role becomes a cross-reference to the object
it names, resolved the way Python resolves the name in that docstring's
scope (``~`` shows the last part only; a leading ``.`` is relative to the
package). A name the site does not render stays plain code, with no
warning (the link is optional), so a role never breaks ``mkdocs build
--strict``. ``Text::`` becomes ``Text:`` and a lone ``::`` goes, leaving the
indented block as Markdown's code block.

Docstrings are not changed in the source; only what the site shows.
"""

from __future__ import annotations

import html
import importlib
import inspect
import re
import types
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc|obj|const):`(?P<target>[^`]+)`")
_LITERAL = re.compile(r"(?m)^(?P<indent>[ \t]*)(?P<text>.*?)::[ \t]*$")


class SkmsgDocs(griffe.Extension):
    """Give run-time docstrings to helpers built at import time, then rewrite
    reST roles and literal-block markers in every docstring of a package, once
    it is loaded (every name it could resolve is there then)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        self._walk(pkg, seen)

    def _walk(self, obj: griffe.Object, seen: set[int]) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if obj.docstring is None and obj.is_attribute and obj.parent and obj.parent.is_module:
            doc = _runtime_doc(obj.parent.path, obj.name)
            if doc:
                obj.docstring = griffe.Docstring(doc, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]


def _runtime_doc(module: str, name: str) -> str | None:
    """The docstring of function ``module.name`` as the module made it, or None."""
    try:
        value = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    if isinstance(value, types.FunctionType) and value.__doc__:
        return inspect.cleandoc(value.__doc__)
    return None


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with its roles as optional cross-references and its ``::`` as ``:``."""
    text = _ROLE.sub(lambda m: _autoref(m["target"], obj), text)
    return _LITERAL.sub(_literal, text)


def _literal(m: re.Match[str]) -> str:
    text = m["text"].rstrip()
    return f"{m['indent']}{text}:" if text else ""


def _autoref(target: str, obj: griffe.Object) -> str:
    short = target.startswith("~")
    name = target.lstrip("~").rstrip("()")
    shown = name.lstrip(".").rsplit(".", 1)[-1] if short else name.lstrip(".")
    path = _resolve(name, obj)
    code = f"<code>{html.escape(shown)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(name: str, obj: griffe.Object) -> str | None:
    """The full path ``name`` means in ``obj``'s docstring, or None."""
    if name.startswith("."):
        module = obj if obj.is_module else obj.module
        base = module.path if module.is_package else module.path.rpartition(".")[0]
        dots = len(name) - len(name.lstrip("."))
        for _ in range(dots - 1):
            base = base.rpartition(".")[0]
        return f"{base}.{name.lstrip('.')}"
    first, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            found = scope.resolve(first)
        except (griffe.NameResolutionError, KeyError):
            scope = scope.parent
            continue
        return f"{found}.{rest}" if rest else found
    return name if "." in name else None
