"""Policy files, sans-I/O: what loads, what it loads as, and the default policy."""

from __future__ import annotations

import pathlib
import sys

import pytest

import skmsg_core as sk
from skmsg import Policy, PolicyError
from skmsg._policy import RoundRobin


def sock() -> sk.Sock:
    return sk.Sock(sk.SkProtoBase(), state=sk.TcpState.ESTABLISHED)


def test_round_robin_takes_turns_and_skips_empty_slots() -> None:
    backends = sk.SockMap(max_entries=3)
    first, last = sock(), sock()
    backends.update(0, first)
    backends.update(2, last)
    rr = RoundRobin()
    skb = sk.SkBuff(sock())
    picks = []
    for _ in range(4):
        assert rr(skb.reset(memoryview(b"m")), backends) == sk.SK_PASS
        picks.append(skb.sk_redir)
    assert picks == [first, last, first, last]
    backends.close()
    assert rr(skb.reset(memoryview(b"m")), backends) == sk.SK_DROP


def test_a_policy_file_loads_as_a_module_with_its_programs(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "policy.txt"  # any name: it is read as Python source
    path.write_text(
        "import dataclasses\n"
        "import skmsg_core as sk\n"
        "@dataclasses.dataclass\n"
        "class Seen:\n"
        "    n: int = 0\n"
        "seen = Seen()\n"
        "def verdict(skb, backends):\n"
        "    seen.n += 1\n"
        "    return sk.SK_DROP\n"
        "def parse(skb):\n"
        "    return 2\n"
    )
    policy = Policy.from_file(path)
    assert policy.name == str(path)
    assert policy.parse is not None
    assert policy.parse.prog_type == sk.BpfProgType.SK_SKB
    assert policy.parse.run(sk.SkBuff()) == 2
    assert policy.verdict(sk.SkBuff(), sk.SockMap(max_entries=1)) == sk.SK_DROP
    assert sys.modules["skmsg_policy"].seen.n == 1


@pytest.mark.parametrize(
    "definition",
    [
        "class V:\n    def __call__(self, skb, backends):\n        return 1\nverdict = V()\n",
        "def _v(skb, backends, extra=0):\n    return 1\nverdict = _v\n",
        "verdict = lambda skb, backends: 1\n",
    ],
    ids=["callable-object", "defaulted-extra", "lambda"],
)
def test_any_plain_callable_of_two_arguments_is_a_verdict(
    definition: str, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "route.py"
    path.write_text(definition)
    assert Policy.from_file(path).verdict(sk.SkBuff(), sk.SockMap(max_entries=1)) == 1


def test_an_async_callable_object_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "route.py"
    path.write_text(
        "class V:\n    async def __call__(self, skb, backends):\n        return 1\nverdict = V()\n"
    )
    with pytest.raises(PolicyError, match="verdict must be a plain function"):
        Policy.from_file(path)


def test_a_partial_of_an_async_verdict_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "route.py"
    path.write_text(
        "import functools\n"
        "async def _v(skb, backends, x):\n    return 1\n"
        "verdict = functools.partial(_v, x=1)\n"
    )
    with pytest.raises(PolicyError, match="verdict must be a plain function"):
        Policy.from_file(path)
