"""The classic BPF programs the proxy attaches to reuseport groups, on real sockets."""

from __future__ import annotations

import errno
import socket

import pytest

from skmsg._reuseport import MAX_CPUS, select_by_cpu


def _reuseport_listener() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_the_program_attaches_to_a_group() -> None:
    with _reuseport_listener() as s:
        select_by_cpu(s, [0])
        select_by_cpu(s, list(range(MAX_CPUS)))  # the longest program: within cBPF's 4096


def test_a_socket_without_so_reuseport_is_refused_by_the_kernel() -> None:
    with socket.socket() as s:
        with pytest.raises(OSError) as info:
            select_by_cpu(s, [0])
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(("cpus", "says"), [
    ([], "1 to 1024 CPUs, not 0"),
    (list(range(MAX_CPUS + 1)), "not 1025"),
    ([0, -1], "whole numbers >= 0"),
    ([0, 1.0], "whole numbers >= 0"),
])
def test_bad_cpu_lists_are_refused_before_the_kernel(cpus: list[int], says: str) -> None:
    with _reuseport_listener() as s, pytest.raises(ValueError, match=says):
        select_by_cpu(s, cpus)
