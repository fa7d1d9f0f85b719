"""The scenario format's errors and the comparison's verdicts, without a kernel.

A malformed scenario must fail with a message naming the file, the scenario
and the key; the comparison must call any undeclared difference, and any
declaration that does not hold, a mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ._compare import compare, format_table
from ._results import encode_bytes
from ._scenario import ScenarioError, load_scenarios

TOPOLOGY = """
[one_pair]
listeners = ["s1"]
pairs = [["c1", "p1", "s1"]]
"""


def load(tmp_path: Path, text: str) -> list[Any]:
    (tmp_path / "topologies.toml").write_text(TOPOLOGY)
    (tmp_path / "x.toml").write_text(text)
    return load_scenarios(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[scenario]]\nname = 'a'\n", "needs name and steps"),
        ("[[scenario]]\nname = 'a'\nsteps = [{ op = 'fly' }]\n", "step 0: unknown op 'fly'"),
        (
            "[[scenario]]\nname = 'a'\n"
            "steps = [{ op = 'update', map = 'map_z', key = 0, fd = 1 }]\n",
            "unknown map 'map_z'",
        ),
        (
            "[[scenario]]\nname = 'a'\ntopology = 'one_pair'\n"
            "steps = [{ op = 'update', map = 'map_a', key = 0 }]\n",
            "give exactly one of sock and fd",
        ),
        (
            "[[scenario]]\nname = 'a'\ntopology = 'one_pair'\n"
            "steps = [{ op = 'send', sock = 'c9', size = 3 }]\n",
            "unknown socket 'c9'",
        ),
        (
            "[[scenario]]\nname = 'a'\ntopology = 'one_pair'\n"
            "steps = [{ op = 'send', sock = 'c1', size = 3, data = 'x' }]\n",
            "exactly one of shape, data, size",
        ),
        (
            "[[scenario]]\nname = 'a'\ntopology = 'nowhere'\nsteps = []\n",
            "unknown topology 'nowhere'",
        ),
        (
            "[[scenario]]\nname = 'a'\nmsg = { ops = [{ op = 'shove' }] }\nsteps = []\n",
            "unknown op 'shove'",
        ),
        (
            "[[scenario]]\nname = 'a'\nsteps = [{ op = 'update', map = 'map_a', key = 0, "
            "fd = 1, flags = 'BPF_WHATEVER' }]\n",
            "unknown flag 'BPF_WHATEVER'",
        ),
        (
            "[[scenario]]\nname = 'a'\nsteps = []\n[[scenario]]\nname = 'a'\nsteps = []\n",
            "duplicate scenario name 'a'",
        ),
        ("[[scenario]\n", "not valid TOML"),
        (
            "[[scenario]]\nname = 'a'\nsteps = []\n[[scenario.declared]]\nid = 'x'\n",
            "declared difference without 'doc'",
        ),
        (
            "[[scenario]]\nname = 'a'\nsocketpairs = [['u0', 'u1', 'unix_seqpacket']]\n"
            "steps = []\n",
            "kind one of unix_stream, unix_dgram, udp",
        ),
        (
            "[[scenario]]\nname = 'a'\ntopology = 'one_pair'\n"
            "socketpairs = [['c1', 'u1', 'unix_stream']]\nsteps = []\n",
            "a name is taken",
        ),
        (
            "[[scenario]]\nname = 'a'\nsocketpairs = [['u0', 'u1', 'unix_stream']]\n"
            "steps = [{ op = 'send', sock = 'u0', data = 'x', more = true }]\n",
            "more (MSG_MORE) is for TCP sockets only",
        ),
        (
            "[[scenario]]\nname = 'a'\nsocketpairs = [['d0', 'd1', 'unix_dgram']]\n"
            "steps = [{ op = 'shutdown', sock = 'd0' }]\n",
            "'d0' is a datagram socket",
        ),
    ],
)
def test_malformed_scenarios_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=r"x\.toml") as info:
        load(tmp_path, text)
    assert message in str(info.value)


SCENARIO = """
[[scenario]]
name = "s"
topology = "one_pair"
steps = [{ op = "send", sock = "c1", data = "abcd" }]
"""


def result(p1: bytes, send: Any = 4, runs: int = 1) -> dict[str, Any]:
    return {
        "steps": [[[send, 1]]],
        "received": {"c1": encode_bytes(b""), "p1": encode_bytes(p1)},
        "msg_runs": runs,
        "msg_log": [],
        "skb_runs": 0,
        "skb_log": [],
    }


def test_equal_results_match(tmp_path: Path) -> None:
    [sc] = load(tmp_path, SCENARIO)
    assert compare(sc, result(b"abcd"), result(b"abcd")).status == "match"


@pytest.mark.parametrize(
    ("skmsg", "field"),
    [
        (result(b"abce"), "received.p1"),
        (result(b"abcd", send="EACCES"), "steps.0"),
        (result(b"abcd", runs=2), "msg_runs"),
    ],
)
def test_any_undeclared_difference_is_a_mismatch(
    tmp_path: Path, skmsg: dict[str, Any], field: str
) -> None:
    [sc] = load(tmp_path, SCENARIO)
    outcome = compare(sc, result(b"abcd"), skmsg)
    assert outcome.status == "mismatch"
    assert [p.split(":")[0] for p in outcome.problems] == [field]
    assert field in format_table([outcome], "live") and "1 mismatch(es)" in format_table(
        [outcome], "live"
    )


DECLARED_BYTES = (
    SCENARIO
    + """
[[scenario.declared]]
id = "push-uninitialised"
doc = "d"
field = "received.p1"
ignore = [[1, 1, 2, 2]]
skmsg = "zeros"
"""
)


def test_ignored_bytes_must_be_zeros_in_skmsg_and_equal_elsewhere(tmp_path: Path) -> None:
    [sc] = load(tmp_path, DECLARED_BYTES)
    kernel = result(b"aXcY")
    assert compare(sc, kernel, result(b"a\0c\0")).status == "declared"
    # the kernel's unspecified bytes may happen to be zeros: still declared, not stale
    assert compare(sc, result(b"a\0c\0"), result(b"a\0c\0")).status == "declared"
    assert compare(sc, kernel, result(b"a\0cZ")).status == "mismatch"  # not zeros
    assert compare(sc, kernel, result(b"b\0c\0")).status == "mismatch"  # outside the ranges
    assert compare(sc, kernel, result(b"a\0c")).status == "mismatch"  # length


DECLARED_VALUE = (
    SCENARIO
    + """
[[scenario.declared]]
id = "odd"
doc = "d"
field = "msg_runs"
kernel = 1
skmsg = 2
"""
)


def test_declared_values_must_hold_exactly_and_still_differ(tmp_path: Path) -> None:
    [sc] = load(tmp_path, DECLARED_VALUE)
    assert compare(sc, result(b"abcd"), result(b"abcd", runs=2)).status == "declared"
    stale = compare(sc, result(b"abcd"), result(b"abcd", runs=1))
    assert stale.status == "mismatch" and "does not hold" in stale.problems[0]
    assert compare(sc, result(b"abcd"), result(b"abcd", runs=3)).status == "mismatch"
