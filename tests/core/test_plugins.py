"""The plugin manager: built-ins through entry points, a third-party plugin by hand."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from importlib import metadata

import pluggy
import pytest

import skmsg_core as sk

from ._support import MemProto, Net


def test_builtins_load_through_the_skmsg_entry_point_group() -> None:
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="skmsg")}
    assert eps == {
        "tcp": "skmsg_tcp", "tls": "skmsg_tls", "udp": "skmsg_udp", "unix": "skmsg_unix"
    }
    names = sk.plugins().plugin_names()
    assert {"tcp", "tls", "udp", "unix"} <= set(names)


def test_a_third_party_plugin_registers_a_protocol_and_ulp() -> None:
    proto = MemProto()

    class Ulp:
        name = "fake-ulp"

    class ThirdParty:
        @sk.hookimpl
        def skmsg_protocols(self) -> Sequence[sk.SkProto]:
            return [proto]

        @sk.hookimpl
        def skmsg_ulps(self) -> Sequence[object]:
            return [Ulp()]

    plugin = ThirdParty()
    facade = sk.plugins()
    facade.register(plugin, name="third-party")
    try:
        assert facade.protocol("memtcp") is proto
        assert facade.ulp("fake-ulp").name == "fake-ulp"
    finally:
        facade.unregister(plugin)
    with pytest.raises(OSError, check=lambda e: e.errno == errno.ENOPROTOOPT):
        facade.protocol("memtcp")
    with pytest.raises(OSError, check=lambda e: e.errno == errno.ENOENT):
        facade.ulp("fake-ulp")


def test_a_plugin_with_an_unknown_hook_is_refused() -> None:
    class Typo:
        @sk.hookimpl
        def skmsg_protocol(self) -> list[object]:  # misspelt hook name
            return []

    with pytest.raises(pluggy.PluginValidationError):
        sk.plugins().register(Typo(), name="typo")
    sk.plugins().pm.unregister(name="typo")


def test_duplicate_protocol_names_are_refused() -> None:
    class A:
        @sk.hookimpl
        def skmsg_protocols(self) -> Sequence[sk.SkProto]:
            return [MemProto()]

    a1, a2 = A(), A()
    facade = sk.plugins()
    facade.register(a1, name="a1")
    facade.register(a2, name="a2")
    try:
        with pytest.raises(ValueError, match="memtcp"):
            facade.protocols()
    finally:
        facade.unregister(a1)
        facade.unregister(a2)


def test_non_protocol_objects_are_refused() -> None:
    class Bad:
        @sk.hookimpl
        def skmsg_protocols(self) -> Sequence[object]:
            return [object()]

    bad = Bad()
    facade = sk.plugins()
    facade.register(bad, name="bad")
    try:
        with pytest.raises(TypeError, match="SkProto"):
            facade.protocols()
    finally:
        facade.unregister(bad)


def test_observers_see_map_changes_and_psock_drops(net: Net) -> None:
    seen: list[tuple[str, object, object]] = []

    class Observer:
        @sk.hookimpl
        def skmsg_map_update(self, smap: sk.SockMapBase, key: object, sk: sk.Sock) -> None:
            seen.append(("update", key, sk))

        @sk.hookimpl
        def skmsg_map_delete(self, smap: sk.SockMapBase, key: object, sk: sk.Sock) -> None:
            seen.append(("delete", key, sk))

        @sk.hookimpl
        def skmsg_psock_drop(self, psock: sk.SkPsock) -> None:
            seen.append(("drop", None, psock.sk))

        @sk.hookimpl
        def skmsg_sock_created(self, sk: sk.Sock) -> None:
            seen.append(("created", None, sk))

    observer = Observer()
    facade = sk.plugins()
    facade.register(observer, name="observer")
    try:
        m = sk.SockMap(max_entries=2)
        a, b = net.sock(), net.sock()
        facade.sock_created(a)
        m.update(0, a)
        m.update(0, b)  # replaces a: a leaves, its psock goes
        b.close()
    finally:
        facade.unregister(observer)
    assert seen == [
        ("created", None, a),
        ("update", 0, a),
        ("drop", None, a),
        ("delete", 0, a),
        ("update", 0, b),
        ("drop", None, b),
        ("delete", 0, b),
    ]
