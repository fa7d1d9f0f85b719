"""The core's hook for a ULP's facts: ``sk.ulp_info``, read by programs as
``sk.<ulp name>``. The core knows no ULP: a third-party one registered by
hand is read exactly as TLS is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import attrs
import pytest

import skmsg_core as sk


@attrs.frozen
class Facts:
    negotiated: str


class FakeUlp:
    name = "fakeulp"


class FakePlugin:
    @sk.hookimpl
    def skmsg_ulps(self) -> Sequence[object]:
        return [FakeUlp()]


@pytest.fixture
def fake_ulp() -> Iterator[None]:
    plugin = FakePlugin()
    sk.plugins().register(plugin, name="fake-ulp-plugin")
    try:
        yield
    finally:
        sk.plugins().unregister(plugin)


def test_a_registered_ulps_name_reads_none_until_the_socket_runs_it(fake_ulp: None) -> None:
    s = sk.Sock(None)
    assert s.ulp is None and s.ulp_info is None
    assert s.fakeulp is None  # type: ignore[attr-defined]
    facts = Facts("v2")
    s.ulp_info, s.ulp = facts, "fakeulp"  # what the ULP's plugin does once set up
    assert s.fakeulp is facts  # type: ignore[attr-defined]
    assert "fakeulp" in sk.plugins().ulp_names()


def test_another_registered_ulp_reads_none_on_a_socket_running_this_one(
    fake_ulp: None,
) -> None:
    s = sk.Sock(None, ulp="tls", ulp_info=Facts("tls facts"))
    assert s.fakeulp is None  # type: ignore[attr-defined]


def test_programs_read_it_through_the_contexts_socket(fake_ulp: None) -> None:
    s = sk.Sock(None)
    seen: list[object] = []

    def verdict(skb: sk.SkBuff) -> int:
        assert skb.sk is not None
        seen.append(skb.sk.fakeulp)  # type: ignore[attr-defined]
        return sk.SK_PASS

    prog = sk.Program.load(verdict, sk.BpfProgType.SK_SKB)
    skb = sk.SkBuff(s).reset(memoryview(b"x"))
    prog.run_verdict(skb)
    s.ulp_info, s.ulp = Facts("done"), "fakeulp"
    prog.run_verdict(skb)
    assert seen == [None, Facts("done")]


def test_the_ulps_name_is_read_only(fake_ulp: None) -> None:
    s = sk.Sock(None)
    with pytest.raises(AttributeError):
        s.fakeulp = Facts("forged")  # type: ignore[attr-defined]


def test_any_other_name_is_an_attribute_error_naming_it(fake_ulp: None) -> None:
    s = sk.Sock(None)
    with pytest.raises(AttributeError, match="'Sock' object has no attribute 'fakeulq'"):
        s.fakeulq  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        s._fakeulp  # type: ignore[attr-defined]
    assert not hasattr(s, "__html__")


def test_after_the_plugin_is_gone_its_name_is_unknown() -> None:
    plugin = FakePlugin()
    sk.plugins().register(plugin, name="fake-ulp-plugin")
    s = sk.Sock(None)
    assert s.fakeulp is None  # type: ignore[attr-defined]
    sk.plugins().unregister(plugin)
    with pytest.raises(AttributeError):
        s.fakeulp  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["state", "ulp_info", "describe", "_secret"])
def test_a_ulp_name_that_sock_has_is_refused_at_load(name: str) -> None:
    class Clash:
        @sk.hookimpl
        def skmsg_ulps(self) -> Sequence[object]:
            return [attrs.make_class("Ulp", {"name": attrs.field(default=name)})()]

    plugin = Clash()
    facade = sk.plugins()
    facade.register(plugin, name="clash")
    try:
        with pytest.raises(ValueError, match=f"plugin ULP name '{name}' cannot be used"):
            facade.ulp_names()
    finally:
        facade.unregister(plugin)
    assert "tls" in facade.ulp_names()  # the others load again


def test_a_ulp_without_a_str_name_is_refused() -> None:
    class Nameless:
        @sk.hookimpl
        def skmsg_ulps(self) -> Sequence[object]:
            return [object()]

    plugin = Nameless()
    facade = sk.plugins()
    facade.register(plugin, name="nameless")
    try:
        with pytest.raises(TypeError, match="has no str name"):
            facade.ulps()
    finally:
        facade.unregister(plugin)
