"""A policy that searches ``skb.data`` as if it were ``bytes``, end to end: the
policy loader and the ``skmsg`` command refuse it with the line and the fix;
rewritten with ``bytes(skb.data)``, a real TLS-terminating proxy drops the
forbidden message and counts the drop."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest
import trio

import skmsg_core as sk
from skmsg import Address, Policy, PolicyError, ProxyConfig, main, run_proxy
from skmsg._policy import RoundRobin
from skmsg._tls import TlsOptions, client_context, server_context, write_self_signed

from .test_proxy import Backend, backends, frame
from .test_tls_proxy import replies

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: Written the obvious way: ``in`` on a memoryview never finds b"FORBIDDEN".
OBVIOUS = """\
def verdict(skb, backends):
    if b"FORBIDDEN" in skb.data:
        return SK_DROP
    return sk_redirect_map(skb, backends, 0, 0)
"""
FIXED = "from skmsg_core import SK_DROP, sk_redirect_map\n\n" + OBVIOUS.replace(
    "in skb.data", "in bytes(skb.data)"
)
REFUSAL = (
    "verdict at line 2: `b'FORBIDDEN' in skb.data`: `in` on a memoryview compares single "
    "elements, it does not search for bytes; write `b'FORBIDDEN' in bytes(skb.data)`"
)


@pytest.fixture
def obvious(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "route.py"
    path.write_text(OBVIOUS)
    return path


def test_the_policy_loader_refuses_it(obvious: pathlib.Path) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_file(obvious)
    assert str(info.value) == f"policy file {str(obvious)!r}: {REFUSAL}"
    assert isinstance(info.value.__cause__, sk.ProgramShapeError)


def test_the_command_refuses_it_in_one_line(
    obvious: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["proxy", "--policy", str(obvious)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"skmsg proxy: error: --policy: policy file '{obvious}': {REFUSAL}\n"


def test_the_installed_command_refuses_it(obvious: pathlib.Path) -> None:
    skmsg = pathlib.Path(sys.executable).with_name("skmsg")  # the console script
    done = subprocess.run([str(skmsg), "proxy", "--tls", "--policy", str(obvious)],
                          capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"skmsg proxy: error: --policy: policy file '{obvious}': {REFUSAL}\n"


def test_a_parse_program_is_refused_the_same_way(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "route.py"
    path.write_text(
        "def verdict(skb, backends):\n    return 1\n\n"
        "def parse(skb):\n    return bytes(skb.data).find(b'\\n') + 1 if skb.data.find(b'\\n') "
        ">= 0 else 0\n"
    )
    with pytest.raises(PolicyError, match=r"parse: program parse: parse at line 5: "
                       r"`skb.data.find`: .* write `bytes\(skb.data\).find\(...\)`"):
        Policy.from_file(path)


def test_the_default_policy_and_the_fixed_one_load(tmp_path: pathlib.Path) -> None:
    sk.check_program_callable(RoundRobin(), nargs=2)
    path = tmp_path / "route.py"
    path.write_text(FIXED)
    assert Policy.from_file(path).parse is None


def test_help_shows_how_to_read_the_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--help"]) == 0
    out = capsys.readouterr().out
    assert 'b"FORBIDDEN" in bytes(skb.data)' in out
    assert "refused when the file is loaded" in out


async def test_rewritten_with_bytes_a_tls_proxy_drops_it(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "route.py"
    policy.write_text(FIXED)
    cert, key = write_self_signed(["127.0.0.1"])
    async with backends(Backend("b0")) as (b0,), trio.open_nursery() as nursery:
        config = ProxyConfig(
            listen=Address("127.0.0.1", 0), backends=(b0.address,), policy=str(policy),
            tls=TlsOptions(server=server_context(cert, key), cert_path=cert),
        )
        proxy = await nursery.start(run_proxy, config)
        addr = proxy.listen[0]
        tcp = await trio.open_tcp_stream(addr.host, addr.port)
        client = trio.SSLStream(tcp, client_context(cert), server_hostname="127.0.0.1")
        try:
            await client.send_all(
                frame(b"hello") + frame(b"GET /FORBIDDEN HTTP/1.1") + frame(b"bye")
            )
            assert await replies(client, 2) == [b"[b0] hello", b"[b0] bye"]
        finally:
            await trio.aclose_forcefully(client)
        assert b0.received == [b"hello", b"bye"]  # the forbidden message never left
        stats = proxy.verdict.statistics()
        assert (stats.redirected, stats.dropped, stats.errors) == (2, 1, 0)
        nursery.cancel_scope.cancel()


def test_the_guide_s_policy_loads_and_its_refusal_is_the_loader_s(tmp_path: pathlib.Path) -> None:
    guide = (ROOT / "docs" / "policies.md").read_text()
    source = re.findall(r"```python\n(.*?)```", guide, re.S)[0]
    path = tmp_path / "route.py"
    path.write_text(source)
    assert Policy.from_file(path).parse is None
    path.write_text(OBVIOUS.replace("def verdict", "\n\n\ndef verdict"))  # at line 5, as shown
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    assert str(info.value).replace(str(path), "route.py") in guide
