"""Policy files of ``skmsg proxy``: loading, the verifier, the default policy.

A policy file is a Python file that defines

``verdict(skb, backends) -> int`` (required)
    The stream verdict (``SK_SKB_STREAM_VERDICT``), run once per message a
    client sends. ``skb.data``/``skb.len`` are the message (a read-only
    ``memoryview``), ``skb.sk`` the client's socket (``skb.remote_ip4``,
    ``skb.remote_port`` ...). ``backends`` is a :class:`~skmsg_core.SockMap`
    (a ``BackendMap``) of *this client's* connections to the backends: index
    ``i`` is the ``i``-th ``--backend``, and every index holds one, made
    when the first message is routed there. ``backends.up(i)`` tells whether
    backend ``i`` is up (not in a back-off after a failure: a refused or
    timed-out connect, a reset, a timeout). The program picks one with
    ``skmsg_core.sk_redirect_map(skb, backends, i, 0)`` and returns what the
    helper returned (``SK_PASS``), or returns ``SK_DROP``. A message routed
    to a backend that is down, or whose connection fails before it is
    written, is judged again (the verdict runs again, with that backend down
    now); one no backend takes closes its client. ``SK_PASS`` with no
    redirect delivers the message to the proxy itself, which counts it as
    "pass" and discards it. A verdict that raises, or returns anything but
    ``SK_PASS`` or ``SK_DROP`` (an int), drops the message (fail closed) and
    is counted as an error and logged.

    With ``--tls``, ``skb.sk.tls`` is what the client's handshake agreed on
    (a frozen :class:`skmsg_tls.TlsInfo`): ``server_name`` (the SNI the
    client sent, lower-cased; None when it sent none), ``alpn_protocol``
    (with ``--alpn``), ``version`` (``"TLSv1.3"``), ``cipher``, and the
    client certificate's ``peer_subject``/``peer_common_name`` (trust them
    only when ``peer_verified``). It is set before the client's first
    message is verdicted; without ``--tls`` it is None.
    ``examples/tls_sni_route.py`` routes on it.

``READS = N`` (optional)
    How many of a message's first bytes ``verdict`` reads (an int >= 0), as
    ``reads=N`` declares it for a program (:mod:`skmsg_core`'s "Declared
    reads"): ``skb.data`` then holds those bytes only (``skb.len`` is still
    the whole message's length), and the rest of a large message (64 KiB or
    more) goes from the client to its backend with ``splice(2)``, never read
    into Python, when the backend connection is plain TCP. Reading past them
    is the run's error: a DROP counted as a policy error. Without it the
    verdict may read every byte. The default policy reads none (``0``). With
    ``--udp`` a datagram is read whole and ``READS`` is not used.

``parse(skb) -> int`` (optional)
    The stream parser (``SK_SKB_STREAM_PARSER``), replacing ``--parser``:
    the length of the next message in ``skb.data``, 0 for "need more", or a
    negative errno. A parser that fails closes that client's connection.

Reading the message's bytes: ``skb.data`` is a memoryview, not ``bytes``
(no copy is made). ``b"GET" in skb.data`` compares ``b"GET"`` with single
elements and is never true; ``skb.data < b"m"`` and ``skb.data.startswith(...)``
raise, which drops the message. Copy what you search or order::

    if b"FORBIDDEN" in bytes(skb.data):          # search
        return SK_DROP
    if bytes(skb.data[4:5]) < b"m": ...          # order
    n = int.from_bytes(skb.data[:4], "big")      # a number
    skb.data[0], len(skb.data), skb.data[:3] == b"GET"   # fine on the view

The verifier runs when the file is loaded, as the kernel's runs when a
program is loaded: ``parse`` goes through :meth:`skmsg_core.Program.load`;
``verdict`` follows the same rules (a plain function: no ``async``, no
generator; ``data`` not used as ``bytes``, see above) with its two
arguments. Every failure is a :class:`PolicyError` naming the file and what
is wrong with it; a misuse of ``data`` names the line and what to write.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

import skmsg_core as sk
from skmsg_core import ProgramShapeError, check_program_callable

__all__ = ["Policy", "PolicyError", "RoundRobin", "VerdictFunc"]

VerdictFunc = Callable[[sk.SkBuff, sk.SockMap], int]
ParseFunc = Callable[[sk.SkBuff], int]


class PolicyError(Exception):
    """A policy file cannot be used: missing, unreadable, not Python, or its
    programs fail the verifier. The message names the file."""


class RoundRobin:
    """The default verdict: each message goes to the next backend in turn that
    is up (one turn shared by every client). With none up, the next in turn
    all the same: its failure is what tells the client. A map without
    ``up(i)`` (a plain ``SockMap``) counts every occupied slot as up, and
    with none occupied the verdict is SK_DROP."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, skb: sk.SkBuff, backends: sk.SockMap) -> int:
        n = backends.max_entries
        up = getattr(backends, "up", None)
        i = self._next
        for _ in range(n):
            key = i % n
            i += 1
            if key in backends and (up is None or up(key)):
                self._next = i
                return sk.sk_redirect_map(skb, backends, key, 0)
        key = self._next % n
        self._next += 1
        return sk.sk_redirect_map(skb, backends, key, 0)


@attrs.frozen
class Policy:
    """A verified policy: its verdict, and its parser if it brings one."""

    name: str
    verdict: VerdictFunc
    parse: sk.Program | None = None
    #: ``READS``: the message's first bytes the verdict reads (None: every byte).
    reads: int | None = None

    @classmethod
    def round_robin(cls) -> Policy:
        """The default policy: round-robin over the backends, pass all. It
        reads none of a message's bytes."""
        return cls("round-robin", RoundRobin(), reads=0)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Policy:
        """Load and verify the policy file at ``path``.

        The file runs as a module named ``skmsg_policy`` (registered in
        ``sys.modules`` while it loads and after, so dataclasses and the like
        work in it).

        Raises:
            PolicyError: the file is missing or unreadable, has a syntax error,
                raised while loading, has no ``verdict``, a program fails the
                verifier, or ``READS`` is not an int >= 0.
        """
        p = Path(path)
        label = f"policy file {str(path)!r}"
        if not p.exists():
            raise PolicyError(f"{label}: no such file")
        if not p.is_file():
            raise PolicyError(f"{label}: not a regular file")
        try:
            source = p.read_bytes()
        except OSError as exc:
            raise PolicyError(f"{label}: cannot read it: {exc.strerror}") from exc
        try:
            code = compile(source, str(p), "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise PolicyError(f"{label}: syntax error at line {exc.lineno}: {exc.msg}") from exc
        except ValueError as exc:  # e.g. null bytes
            raise PolicyError(f"{label}: not Python source: {exc}") from exc
        module = types.ModuleType("skmsg_policy")
        module.__file__ = str(p)
        saved = sys.modules.get("skmsg_policy")
        sys.modules["skmsg_policy"] = module
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            if saved is not None:
                sys.modules["skmsg_policy"] = saved
            else:
                sys.modules.pop("skmsg_policy", None)
            line = _line_in(exc, str(p))
            where = f" at line {line}" if line else ""
            raise PolicyError(
                f"{label}: raised {type(exc).__name__}{where} while loading: {exc}"
            ) from exc
        return cls._verify(module.__dict__, label, str(path))

    @classmethod
    def _verify(cls, ns: dict[str, Any], label: str, name: str) -> Policy:
        if "verdict" not in ns:
            raise PolicyError(f"{label}: defines no verdict(skb, backends)")
        verdict = ns["verdict"]
        _verify_verdict(verdict, label)
        parse: sk.Program | None = None
        if ns.get("parse") is not None:
            try:
                parse = sk.Program.load(ns["parse"], sk.BpfProgType.SK_SKB, name="parse")
            except OSError as exc:
                raise PolicyError(f"{label}: parse: {exc.strerror}") from exc
        reads = ns.get("READS")
        if reads is not None and (type(reads) is not int or reads < 0):
            raise PolicyError(
                f"{label}: READS must be the number of a message's first bytes the "
                f"verdict reads, an int >= 0, not {reads!r}"
            )
        return cls(name, verdict, parse, reads)


def _verify_verdict(verdict: object, label: str) -> None:
    """The verifier's rules (:func:`skmsg_core.check_program_callable`) for
    a two-argument verdict.

    Raises:
        PolicyError: not callable, ``async`` or a generator, not callable with
            two positional arguments, or uses ``skb.data`` as if it were ``bytes``
            (the message names the line and what to write instead).
    """
    if not callable(verdict):
        raise PolicyError(
            f"{label}: verdict is a {type(verdict).__name__}, not a function "
            "verdict(skb, backends)"
        )
    try:
        check_program_callable(verdict, nargs=2)
    except ProgramShapeError as exc:
        if exc.kind == "memoryview":
            raise PolicyError(f"{label}: {exc}") from exc
        if exc.kind == "plain":
            raise PolicyError(
                f"{label}: verdict must be a plain function: a stream verdict runs to "
                "completion and cannot await or yield"
            ) from exc
        raise PolicyError(
            f"{label}: verdict{exc.sig} must take two arguments: verdict(skb, backends)"
        ) from exc


def _line_in(exc: BaseException, filename: str) -> int | None:
    """The last line of ``filename`` in ``exc``'s traceback."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None and isinstance(exc, SyntaxError):
        line = exc.lineno
    return line
