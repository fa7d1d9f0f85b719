"""skmsg's pytest plugin: every fixture used for real, on loopback sockets."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import skmsg_core as sk
import skmsg_core.pytest_plugin
import skmsg_tcp
from skmsg_core.runtime import Runtime, current_runtime
from skmsg_tcp.testing import TestServer

from .test_streams import drop_x, frame, parse_length_prefixed, receive_exactly


def drop_all(msg: sk.SkMsg) -> int:
    return sk.SK_DROP


# USAGE.md section 5, as written there.
async def test_drop_is_eacces(tcp_stream_pair, sockmap):  # type: ignore[no-untyped-def]
    client, server = tcp_stream_pair
    sockmap.attach(lambda msg: sk.SK_DROP, sk.SK_MSG_VERDICT)
    sockmap.update(0, client)
    with pytest.raises(PermissionError) as info:
        await client.send_all(b"x")
    assert info.value.errno == errno.EACCES
    assert server.sk.psock is None  # only the client is policed


def test_pytest_loaded_the_plugin_through_its_pytest11_entry_point(
    request: pytest.FixtureRequest,
) -> None:
    assert request.config.pluginmanager.get_plugin("skmsg") is skmsg_core.pytest_plugin


def test_importing_the_plugin_imports_neither_trio_nor_a_protocol_plugin() -> None:
    code = (
        "import sys\n"
        "import skmsg_core.pytest_plugin\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "               ('trio', 'outcome', 'skmsg_tcp', 'skmsg_tls', 'skmsg_udp'))\n"
        "heavy += [m for m in sys.modules if m.startswith(('skmsg_core.runtime',\n"
        "                                                  'skmsg_core.testing'))]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


async def test_skmsg_runtime_is_current_for_the_test(skmsg_runtime: Runtime) -> None:
    assert isinstance(skmsg_runtime, Runtime)
    assert current_runtime() is skmsg_runtime


async def test_tcp_stream_pair_runs_receive_programs_under_the_runtime(
    tcp_stream_pair: tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream],
    sockmap: sk.SockMap,
    skmsg_runtime: Runtime,
) -> None:
    client, server = tcp_stream_pair
    assert client.sk.local_addr == server.sk.remote_addr
    sockmap.attach(parse_length_prefixed, sk.SK_SKB_STREAM_PARSER)
    sockmap.attach(drop_x, sk.SK_SKB_STREAM_VERDICT)
    sockmap.update(0, server)
    assert skmsg_runtime.pumping(server)
    await client.send_all(frame(b"keep") + frame(b"xgone"))
    await client.send_eof()
    assert await receive_exactly(server, 8) == frame(b"keep")
    assert await server.receive_some() == b""


async def test_sockmap_and_sockhash_are_empty_maps_of_64(
    sockmap: sk.SockMap, sockhash: sk.SockHash
) -> None:
    assert type(sockmap) is sk.SockMap and type(sockhash) is sk.SockHash
    assert (sockmap.max_entries, len(sockmap)) == (64, 0)
    assert (sockhash.max_entries, len(sockhash)) == (64, 0)
    assert not sockmap.closed and not sockhash.closed


@pytest.mark.parametrize("sockmap", [2], indirect=True)
@pytest.mark.parametrize("sockhash", [1], indirect=True)
async def test_map_sizes_come_from_indirect_params(
    sockmap: sk.SockMap,
    sockhash: sk.SockHash,
    tcp_stream_pair: tuple[skmsg_tcp.SkStream, skmsg_tcp.SkStream],
) -> None:
    client, server = tcp_stream_pair
    assert sockmap.max_entries == 2
    with pytest.raises(OSError) as info:
        sockmap.update(2, client)
    assert info.value.errno == errno.E2BIG
    sockhash.update(b"a", client)
    with pytest.raises(OSError) as info:
        sockhash.update(b"b", server)
    assert info.value.errno == errno.E2BIG


async def test_test_server_echoes(test_server: TestServer) -> None:
    client = await test_server.connect()
    await client.send_all(b"echo me")
    assert await receive_exactly(client, 7) == b"echo me"
    assert test_server.sockmap.get(0) is test_server.peer(client).sk


@pytest.mark.parametrize("test_server", [{"msg_verdict": drop_all}], indirect=True)
async def test_test_server_takes_its_programs_from_an_indirect_param(
    test_server: TestServer,
) -> None:
    prog = test_server.sockmap.progs["msg_parser"]
    assert prog is not None and prog.func is drop_all
    client = await test_server.connect()
    await client.send_all(b"never echoed")
    await client.send_eof()
    assert await client.receive_some() == b""  # every echo dropped, then EOF
    assert prog.statistics().dropped == 1  # the kernel's sticky DROP: it ran once


async def test_the_factory_runs_servers_with_different_policies(
    skmsg_test_server_factory: skmsg_core.pytest_plugin.ServerFactory,
) -> None:
    framed = await skmsg_test_server_factory(
        stream_parser=parse_length_prefixed, stream_verdict=drop_x
    )
    greeted: list[skmsg_tcp.SkStream] = []

    async def greet(stream: skmsg_tcp.SkStream) -> None:
        greeted.append(stream)
        await stream.send_all(b"hello")

    greeter = await skmsg_test_server_factory(greet)
    assert framed.port != greeter.port
    client = await framed.connect()
    await client.send_all(frame(b"a") + frame(b"xb") + frame(b"c"))
    assert await receive_exactly(client, 10) == frame(b"a") + frame(b"c")
    other = await greeter.connect()
    assert await receive_exactly(other, 5) == b"hello"
    assert greeted == [greeter.peer(other)]


def test_fixture_teardown_closes_and_a_server_failure_fails_the_test(tmp_path: Path) -> None:
    """In a fresh pytest: fixtures are torn down (streams, maps, servers closed),
    and a handler's exception fails the test that ran the server."""
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    (tmp_path / "test_fresh.py").write_text(
        textwrap.dedent(
            """
            import trio
            import skmsg_core as sk

            seen = {}

            async def test_use(tcp_stream_pair, sockmap, test_server):
                client, server = tcp_stream_pair
                sockmap.update(0, client)
                seen.update(pair=tcp_stream_pair, map=sockmap, server=test_server,
                            client=await test_server.connect())

            def test_all_closed_afterwards():
                assert all(s.sk.dead for s in seen["pair"])
                assert seen["map"].closed
                assert seen["client"].sk.dead and seen["server"].sockmap.closed
                assert all(s.sk.dead for s in seen["server"].streams)

            async def test_handler_failure(skmsg_test_server_factory):
                async def boom(stream):
                    raise RuntimeError("handler exploded")
                server = await skmsg_test_server_factory(boom)
                await server.connect()
                await trio.sleep_forever()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fresh.py"],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 failed, 2 passed" in out.stdout, out.stdout + out.stderr
    assert "FAILED test_fresh.py::test_handler_failure" in out.stdout
    assert "RuntimeError: handler exploded" in out.stdout
