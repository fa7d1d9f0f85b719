"""Fixtures for the core tests: see ``_support`` for the in-test sockets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import skmsg_core as sk

from ._support import MemProto, Net


@pytest.fixture
def proto() -> MemProto:
    return MemProto()


@pytest.fixture
def net(proto: MemProto) -> Net:
    return Net(proto)


@pytest.fixture
def sockmap() -> Iterator[sk.SockMap]:
    m = sk.SockMap(max_entries=20)
    yield m
    m.close()
