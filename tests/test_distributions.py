"""Each plugin is a distribution of its own, as a third party's would be.

Into a fresh virtual environment with only the core installed, ``pip install
./plugins/tcp`` (then udp, then tls, then unix) gives a working plugin whose
``skmsg`` entry point the core finds; before it, the core serves no protocol. Real
installs (not editable), from the project's own files; the dependencies come
from the package index as on any fresh machine.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A new virtual environment with the core, and nothing else of skmsg, in it."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(venv, str(ROOT))
    return venv


def pip(venv: pathlib.Path, *args: str) -> None:
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", *args],
        check=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
        timeout=600,
    )


def python(venv: pathlib.Path, code: str) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(code)],
        capture_output=True, text=True, check=True, cwd=venv,  # not the source tree
    )
    return out.stdout.strip()


SERVED = """
    import errno, importlib.metadata as md, skmsg_core as sk
    names = sorted(e.name for e in md.entry_points(group="skmsg"))
    served = []
    for name in ("tcp", "udp", "unix-stream", "unix-dgram"):
        try:
            sk.plugins().protocol(name)
            served.append(name)
        except OSError as exc:
            assert exc.errno == errno.ENOPROTOOPT
    print(names, served, sk.__file__)
"""


def test_the_core_alone_serves_no_protocol(fresh: pathlib.Path) -> None:
    out = python(fresh, SERVED)
    assert out.startswith("[] []"), out
    assert str(fresh) in out  # the installed copy, not the source tree


def test_each_plugin_installs_on_its_own_and_the_core_finds_it(fresh: pathlib.Path) -> None:
    pip(fresh, str(ROOT / "plugins" / "tcp"))
    assert python(fresh, SERVED).startswith("['tcp'] ['tcp']")
    pip(fresh, str(ROOT / "plugins" / "udp"))
    assert python(fresh, SERVED).startswith("['tcp', 'udp'] ['tcp', 'udp']")
    pip(fresh, str(ROOT / "plugins" / "tls"))
    assert python(fresh, SERVED).startswith("['tcp', 'tls', 'udp'] ['tcp', 'udp']")
    pip(fresh, str(ROOT / "plugins" / "unix"))
    assert python(fresh, SERVED).startswith(
        "['tcp', 'tls', 'udp', 'unix'] ['tcp', 'udp', 'unix-stream', 'unix-dgram']"
    )
    # written as a third party writes a plugin: it needs the core, no other plugin
    requires = python(fresh, """
        import importlib.metadata as md
        print(sorted(r.split(">")[0] for r in md.requires("skmsg-unix")))
    """)
    assert requires == "['attrs', 'skmsg-core', 'trio']"
    # each works as installed: the conformance check every protocol plugin
    # passes, and a program of the core on a real socket pair
    out = python(fresh, """
        import functools, trio, skmsg_core as sk, skmsg_tcp, skmsg_tls, skmsg_udp, skmsg_unix
        from skmsg_core.testing import check_protocol_plugin
        from skmsg_tcp.testing import clog_tcp_pair, tcp_stream_pair
        from skmsg_unix.testing import clog_unix_pair

        async def main():
            await check_protocol_plugin(
                tcp_stream_pair, proto=skmsg_tcp.TCP_PROTO, clog=clog_tcp_pair
            )
            await check_protocol_plugin(
                functools.partial(skmsg_udp.udp_socket_pair, "127.0.0.1"),
                proto=skmsg_udp.UDP_PROTO, kind="datagram",
            )
            await check_protocol_plugin(
                skmsg_unix.unix_stream_pair, proto=skmsg_unix.UNIX_STREAM_PROTO,
                clog=clog_unix_pair,
            )
            await check_protocol_plugin(
                skmsg_unix.unix_dgram_pair, proto=skmsg_unix.UNIX_DGRAM_PROTO,
                kind="datagram",
            )
            a, b = await tcp_stream_pair()
            m = sk.SockMap(1)
            m.attach(lambda msg: sk.SK_DROP if b"no" in msg.tobytes() else sk.SK_PASS,
                     sk.SK_MSG_VERDICT)
            m.update(0, a)
            await a.send_all(b"yes")
            got = await b.receive_some()
            try:
                await a.send_all(b"no")
            except PermissionError:
                got += b" dropped"
            await a.aclose(); await b.aclose()
            print(got.decode(), skmsg_tls.TlsSocket.__name__)

        trio.run(main)
    """)
    assert out == "yes dropped TlsSocket"
