"""Conformance scenarios: data files, read and checked here.

A scenario file (``scenarios/*.toml``) holds ``[[scenario]]`` tables; named
topologies live in ``scenarios/topologies.toml``. The format (all keys other
than ``name`` and ``steps`` optional):

``name``, ``ref`` (the reference case), ``doc``
``topology``      a name from topologies.toml; its sockets, steps and ``skb``
                  come first (``extends`` chains them)
``listeners``     listener names, e.g. ``["s1"]``
``pairs``         ``[[client, server, listener], ...]``: ``client`` connects to
                  ``listener`` and the accepted socket is ``server``
``socketpairs``   ``[[a, b, kind], ...]``: two sockets connected to each other
                  without a listener; ``kind`` is ``"unix_stream"`` or
                  ``"unix_dgram"`` (``socketpair(AF_UNIX, ...)``) or ``"udp"``
                  (two loopback UDP sockets, bound and connected to each
                  other). A send on a datagram socket is one datagram; its
                  peer's bytes are compared joined (boundaries are not: the
                  kernel's ``sk_msg_recvmsg`` merges queued datagrams)
``msg``           the SK_MSG program ``msg_verdict``: ``ops`` (up to 6 of
                  ``{op = "apply"|"cork"|"pull"|"push"|"pop", a, b, from_run,
                  to_run, drop_on_error}``), ``verdict`` (``"pass"``, ``"drop"``
                  or ``{verdict = "redirect", map, key, flags, ret}``) and
                  optionally ``then`` (a second verdict used from run
                  ``then.from_run`` on)
``skb``           the SK_SKB programs: ``parser_len`` (0: ``skb->len``),
                  ``verdict`` and ``then`` as for ``msg``
``steps``         what happens, in order; each a table with ``op``:
                  ``attach``/``detach`` {prog, map, type}; ``update`` {map, key,
                  sock | fd, flags}; ``delete``/``lookup`` {map, key}; ``send``
                  {sock, shape | data | size, iov, repeat, more}; ``close``
                  {sock}; ``shutdown`` {sock} (``SHUT_WR``); ``connect``
                  {client, listener}; ``accept`` {listener, server}; ``settle``
                  (wait until quiet, note what each peer has)
(always)          every connected socket is read all along: its bytes, in
                  order, and how its reading ended (EOF or an errno) are compared
``compare``       what to compare besides received bytes, send results and map
                  errnos: ``msg_log`` (the SK_MSG runs and what each saw and
                  returned; default true), ``skb_runs`` (how many SK_SKB verdict
                  runs) and ``skb_log`` (their ``skb->len`` too; both default
                  false: without a parser verdict units follow TCP segmentation,
                  and the kernel's ``skb->len`` after a parser does too)
``declared``      deliberate differences: ``{id, doc, field, kernel, skmsg}`` or,
                  for received bytes, ``{id, doc, field = "received.<peer>",
                  ignore = [[offset, length], ...], skmsg = "zeros"}``; ``doc`` is
                  a phrase that must appear in docs/kernel-differences.md

Maps (the BPF object's): ``map_a``, ``map_b``, ``map_c`` (SOCKMAP, 20 entries,
value 8), ``hash_a`` (SOCKHASH, u32 keys, 20 entries), ``map_v4`` (SOCKMAP,
value 4, 4 entries). Programs: ``msg_verdict``, ``skb_parser``, ``skb_verdict``,
``skb_verdict_plain``; attach types ``msg_verdict``, ``stream_parser``,
``stream_verdict``, ``skb_verdict``. ``sock`` may also name a throw-away
socket: ``fresh_tcp``, ``bound_tcp``, ``fresh_udp``, ``bound_udp``,
``fresh_unix_stream``, ``bound_unix_stream``, ``listening_unix_stream``,
``fresh_unix_dgram``, ``bound_unix_dgram`` (bound to an abstract name, not
connected), ``unix_seqpacket`` (one end of a ``SOCK_SEQPACKET`` socketpair). Flags are numbers or
``BPF_ANY``/``BPF_NOEXIST``/``BPF_EXIST``/``BPF_F_INGRESS``. Shapes are
test_sockmap's ``[[iov_len, iov_count, rate], ...]`` or one of its names
(``send_one``, ``send_many``, ``send_large``, ``test_send``); payload byte j of
each chunk is ``j mod 256``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

__all__ = ["SCENARIO_DIR", "Scenario", "ScenarioError", "Send", "load_scenarios"]

SCENARIO_DIR = Path(__file__).parent / "scenarios"

MAPS = ("map_a", "map_b", "map_c", "hash_a", "map_v4")
PROGS = ("msg_verdict", "skb_parser", "skb_verdict", "skb_verdict_plain")
ATTACH = ("msg_verdict", "stream_parser", "stream_verdict", "skb_verdict")
SPECIAL_SOCKS = (
    "fresh_tcp",
    "bound_tcp",
    "fresh_udp",
    "bound_udp",
    "fresh_unix_stream",
    "bound_unix_stream",
    "listening_unix_stream",
    "fresh_unix_dgram",
    "bound_unix_dgram",
    "unix_seqpacket",
)
#: ``socketpairs`` kinds, and whether each is a stream.
SOCKETPAIR_KINDS = {"unix_stream": True, "unix_dgram": False, "udp": False}
FLAGS = {"BPF_ANY": 0, "BPF_NOEXIST": 1, "BPF_EXIST": 2, "BPF_F_INGRESS": 1}
SHAPES = {
    "send_one": [[1, 1, 1], [1, 1024, 1], [1024, 1, 1]],
    "send_many": [[3, 1, 512], [5, 1, 100]],
    "send_large": [[8192, 32, 2]],
}
SHAPES["test_send"] = SHAPES["send_one"] + SHAPES["send_many"] + SHAPES["send_large"]
OPS = ("apply", "cork", "pull", "push", "pop")
STEP_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # op: (required, optional)
    "attach": ({"prog", "map", "type"}, set()),
    "detach": ({"prog", "map", "type"}, set()),
    "update": ({"map", "key"}, {"sock", "fd", "flags"}),
    "delete": ({"map", "key"}, set()),
    "lookup": ({"map", "key"}, set()),
    "send": ({"sock"}, {"shape", "data", "size", "iov", "repeat", "more"}),
    "close": ({"sock"}, set()),
    "shutdown": ({"sock"}, set()),
    "connect": ({"client", "listener"}, set()),
    "accept": ({"listener", "server"}, set()),
    "settle": (set(), set()),
}


class ScenarioError(ValueError):
    """A scenario file says something the runner cannot do; the message names
    the file, the scenario and the key."""


def payload(n: int) -> bytes:
    """test_sockmap's payload: byte j of a chunk is ``j mod 256``."""
    return bytes(j % 256 for j in range(n))


class Send:
    """One ``sendmsg``: its iovec and whether ``MSG_MORE`` is set."""

    __slots__ = ("iov", "more")

    def __init__(self, iov: list[bytes], more: bool) -> None:
        self.iov = iov
        self.more = more

    @property
    def data(self) -> bytes:
        return b"".join(self.iov)


class Scenario:
    """One checked scenario; ``sends(step)`` expands a send step."""

    def __init__(self, raw: dict[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where
        self.name: str = raw["name"]
        self.ref: str = raw.get("ref", "")
        self.doc: str = raw.get("doc", "")
        self.listeners: list[str] = list(raw.get("listeners", []))
        self.pairs: list[tuple[str, str, str]] = [tuple(p) for p in raw.get("pairs", [])]  # type: ignore[misc]
        self.socketpairs: list[tuple[str, str, str]] = [
            tuple(p)  # type: ignore[misc]
            for p in raw.get("socketpairs", [])
        ]
        self.msg: dict[str, Any] = raw.get("msg", {})
        self.skb: dict[str, Any] = raw.get("skb", {})
        self.steps: list[dict[str, Any]] = raw["steps"]
        compare = raw.get("compare", {})
        self.compare_msg_log: bool = compare.get("msg_log", True)
        self.compare_skb_log: bool = compare.get("skb_log", False)
        self.compare_skb_runs: bool = compare.get("skb_runs", self.compare_skb_log)
        self.declared: list[dict[str, Any]] = raw.get("declared", [])

    # -- the programs' parameters, normalised ------------------------------------------------

    @staticmethod
    def _verdicts(spec: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for key in ("verdict", "then"):
            v = spec.get(key)
            if v is None:
                continue
            v = {"verdict": v} if isinstance(v, str) else dict(v)
            v["flags"] = flag_value(v.get("flags", 0))
            out.append(v)
        if not out:
            out.append({"verdict": "pass"})
        if len(out) == 2 and "from_run" not in out[1]:
            out[1]["from_run"] = 1
        return out

    @property
    def msg_ops(self) -> list[dict[str, Any]]:
        return list(self.msg.get("ops", []))

    @property
    def msg_verdicts(self) -> list[dict[str, Any]]:
        return self._verdicts(self.msg)

    @property
    def skb_verdicts(self) -> list[dict[str, Any]]:
        return self._verdicts(self.skb)

    @property
    def parser_len(self) -> int:
        return int(self.skb.get("parser_len", 0))

    def sends(self, step: dict[str, Any]) -> list[Send]:
        """The ``sendmsg`` calls a send step makes, in order."""
        more = bool(step.get("more", False))
        repeat = int(step.get("repeat", 1))
        out: list[Send] = []
        if "shape" in step:
            shape = step["shape"]
            groups = SHAPES[shape] if isinstance(shape, str) else shape
            for iov_len, iov_count, rate in groups:
                chunk = payload(iov_len * iov_count)
                iov = [chunk[i * iov_len : (i + 1) * iov_len] for i in range(iov_count)]
                out += [Send(iov, more) for _ in range(rate)]
        else:
            if "data" in step:
                data = step["data"].encode("latin-1")
            else:
                data = payload(int(step["size"]))
            iov_len = int(step.get("iov", len(data))) or 1
            iov = [data[i : i + iov_len] for i in range(0, len(data), iov_len)] or [b""]
            out.append(Send(iov, more))
        return out * repeat

    def kind_of(self, name: str) -> str:
        """``"tcp"`` for a socket of ``pairs`` (or ``connect``/``accept``), else
        its ``socketpairs`` kind."""
        for a, b, kind in self.socketpairs:
            if name in (a, b):
                return kind
        return "tcp"

    def is_stream(self, name: str) -> bool:
        kind = self.kind_of(name)
        return kind == "tcp" or SOCKETPAIR_KINDS[kind]

    @property
    def connected(self) -> list[str]:
        """Every connected socket's name, in creation order."""
        names: list[str] = []
        for client, server, _ in self.pairs:
            names += [client, server]
        for a, b, _ in self.socketpairs:
            names += [a, b]
        for step in self.steps:
            if step["op"] == "connect":
                names.append(step["client"])
            elif step["op"] == "accept":
                names.append(step["server"])
        return names


def flag_value(flags: int | str) -> int:
    """A flags value: a number, or names joined with ``|``."""
    if isinstance(flags, int):
        return flags
    total = 0
    for raw in flags.split("|"):
        part = raw.strip()
        if part not in FLAGS:
            raise ScenarioError(f"unknown flag {part!r} (known: {', '.join(FLAGS)})")
        total |= FLAGS[part]
    return total


def _check(sc: Scenario) -> None:
    """Raise ScenarioError naming what is wrong, or return."""

    def bad(what: str) -> ScenarioError:
        return ScenarioError(f"{sc.where}: scenario {sc.name!r}: {what}")

    names = set(sc.listeners)
    for pair in sc.pairs:
        if len(pair) != 3:
            raise bad(f"pairs entries are [client, server, listener], got {list(pair)!r}")
        client, server, listener = pair
        if listener not in sc.listeners:
            raise bad(f"pair {list(pair)!r}: no listener named {listener!r}")
        names |= {client, server}
    for sp in sc.socketpairs:
        if len(sp) != 3 or sp[2] not in SOCKETPAIR_KINDS:
            raise bad(
                f"socketpairs entries are [a, b, kind] with kind one of "
                f"{', '.join(SOCKETPAIR_KINDS)}, got {list(sp)!r}"
            )
        if names & set(sp[:2]):
            raise bad(f"socketpairs {list(sp)!r}: a name is taken")
        names |= set(sp[:2])
    ops = sc.msg_ops
    if len(ops) > 6:
        raise bad(f"msg.ops: at most 6 ops, got {len(ops)}")
    for op in ops:
        if op.get("op") not in OPS:
            raise bad(f"msg.ops: unknown op {op.get('op')!r} (known: {', '.join(OPS)})")
    try:
        verdicts = sc.msg_verdicts + sc.skb_verdicts
    except ScenarioError as exc:
        raise bad(str(exc)) from None
    for v in verdicts:
        if v["verdict"] not in ("pass", "drop", "redirect"):
            raise bad(f"unknown verdict {v['verdict']!r} (pass, drop or redirect)")
        if v["verdict"] == "redirect" and v.get("map", "map_a") not in MAPS[:4]:
            raise bad(f"redirect map must be one of {MAPS[:4]}, got {v.get('map')!r}")
    for i, step in enumerate(sc.steps):
        op = step.get("op")
        if op not in STEP_KEYS:
            raise bad(f"step {i}: unknown op {op!r} (known: {', '.join(STEP_KEYS)})")
        required, optional = STEP_KEYS[op]
        keys = set(step) - {"op"}
        if missing := required - keys:
            raise bad(f"step {i} ({op}): missing {', '.join(sorted(missing))}")
        if extra := keys - required - optional:
            raise bad(f"step {i} ({op}): unknown keys {', '.join(sorted(extra))}")
        if "map" in step and step["map"] not in MAPS:
            raise bad(f"step {i} ({op}): unknown map {step['map']!r} (known: {', '.join(MAPS)})")
        if op in ("attach", "detach"):
            if step["prog"] not in PROGS:
                raise bad(f"step {i}: unknown program {step['prog']!r}")
            if step["type"] not in ATTACH:
                raise bad(f"step {i}: unknown attach type {step['type']!r}")
        if op == "update":
            if ("sock" in step) == ("fd" in step):
                raise bad(f"step {i} (update): give exactly one of sock and fd")
            if "sock" in step and step["sock"] not in names | set(SPECIAL_SOCKS):
                raise bad(f"step {i} (update): unknown socket {step['sock']!r}")
            try:
                flag_value(step.get("flags", 0))
            except ScenarioError as exc:
                raise bad(f"step {i} (update): {exc}") from None
        if op == "send":
            if step["sock"] not in names:
                raise bad(f"step {i} (send): unknown socket {step['sock']!r}")
            given = [k for k in ("shape", "data", "size") if k in step]
            if len(given) != 1:
                raise bad(f"step {i} (send): give exactly one of shape, data, size")
            shape = step.get("shape")
            if isinstance(shape, str) and shape not in SHAPES:
                raise bad(f"step {i} (send): unknown shape {shape!r} (known: {', '.join(SHAPES)})")
            if step.get("more") and sc.kind_of(step["sock"]) != "tcp":
                raise bad(f"step {i} (send): more (MSG_MORE) is for TCP sockets only")
        if op in ("close", "shutdown") and step["sock"] not in names:
            raise bad(f"step {i} ({op}): unknown socket {step['sock']!r}")
        if op == "shutdown" and not sc.is_stream(step["sock"]):
            raise bad(f"step {i} (shutdown): {step['sock']!r} is a datagram socket")
        if op == "connect":
            if step["listener"] not in sc.listeners:
                raise bad(f"step {i} (connect): unknown listener {step['listener']!r}")
            names.add(step["client"])
        if op == "accept":
            names.add(step["server"])
    for d in sc.declared:
        for k in ("id", "doc", "field"):
            if k not in d:
                raise bad(f"declared difference without {k!r}: {d!r}")
        if "ignore" not in d and ("kernel" not in d or "skmsg" not in d):
            raise bad(f"declared difference {d['id']!r}: give ignore, or kernel and skmsg")


def _merge_topology(raw: dict[str, Any], topologies: dict[str, Any], where: str) -> dict[str, Any]:
    name = raw.get("topology")
    if name is None:
        return raw
    chain: list[dict[str, Any]] = []
    while name is not None:
        if name not in topologies:
            raise ScenarioError(f"{where}: scenario {raw.get('name')!r}: unknown topology {name!r}")
        chain.insert(0, topologies[name])
        name = topologies[name].get("extends")
    merged: dict[str, Any] = {"listeners": [], "pairs": [], "steps": [], "skb": {}, "msg": {}}
    socketpairs: list[Any] = []
    for topo in [*chain, raw]:
        merged["listeners"] += [
            x for x in topo.get("listeners", []) if x not in merged["listeners"]
        ]
        merged["pairs"] += topo.get("pairs", [])
        socketpairs += topo.get("socketpairs", [])
        merged["steps"] += topo.get("steps", [])
        merged["skb"] = {**merged["skb"], **topo.get("skb", {})}
        merged["msg"] = {**merged["msg"], **topo.get("msg", {})}
    if socketpairs:  # only where used: the digest of every other scenario stays as it was
        merged["socketpairs"] = socketpairs
    out = dict(raw)
    out.update(merged)
    return out


def load_scenarios(directory: Path = SCENARIO_DIR) -> list[Scenario]:
    """Every scenario in ``directory``, checked, in file then file order.

    Raises:
        ScenarioError: a file is not valid TOML or a scenario is malformed, or
            two scenarios share a name.
    """
    topo_file = directory / "topologies.toml"
    topologies = tomllib.loads(topo_file.read_text()) if topo_file.exists() else {}
    out: list[Scenario] = []
    seen: set[str] = set()
    for path in sorted(directory.glob("*.toml")):
        if path.name == "topologies.toml":
            continue
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{path.name}: not valid TOML: {exc}") from exc
        for raw in data.get("scenario", []):
            if "name" not in raw or "steps" not in raw:
                raise ScenarioError(f"{path.name}: a scenario needs name and steps: {raw!r}"[:300])
            sc = Scenario(_merge_topology(raw, topologies, path.name), path.name)
            if sc.name in seen:
                raise ScenarioError(f"{path.name}: duplicate scenario name {sc.name!r}")
            seen.add(sc.name)
            _check(sc)
            out.append(sc)
    return out
