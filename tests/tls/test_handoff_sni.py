"""The server name read from the ClientHello bytes the hand-off keeps: real
ClientHellos from OpenSSL, the same split over records, and bad ones (a clear
``EPROTO`` naming what does not parse)."""

from __future__ import annotations

import errno
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

import skmsg_tls as tls
from skmsg_tls._handoff import _client_hello_server_name, _records


def client_hello(server_hostname: str | None, **ctx_opts: object) -> bytes:
    """The raw first flight of an OpenSSL client (its ClientHello records)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in ctx_opts.items():
        setattr(ctx, k, v)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def name_of(wire: bytes) -> str | None:
    return _client_hello_server_name(_records(wire))


def one_record_hello(body: bytes) -> bytes:
    """A ClientHello handshake message with ``body``, in one record."""
    msg = bytes([1]) + len(body).to_bytes(3, "big") + body
    return bytes([22, 3, 1]) + len(msg).to_bytes(2, "big") + msg


def hello_body(extensions: bytes | None) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return body


def sni_ext(entries: bytes, list_len: int | None = None) -> bytes:
    n = len(entries) if list_len is None else list_len
    data = n.to_bytes(2, "big") + entries
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def host_entry(name: bytes, name_type: int = 0) -> bytes:
    return bytes([name_type]) + len(name).to_bytes(2, "big") + name


@pytest.mark.parametrize(
    ("asked", "sent"),
    [("alpha.example", "alpha.example"), ("API.Example.COM", "api.example.com"),
     ("127.0.0.1", None), ("::1", None), (None, None)],
)
def test_openssl_client_hellos(asked: str | None, sent: str | None) -> None:
    assert name_of(client_hello(asked)) == sent


def test_tls12_only_client_hello() -> None:
    wire = client_hello("old.example", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert name_of(wire) == "old.example"


@pytest.fixture(scope="module")
def split_hello() -> bytes:
    return client_hello("split.example")


@given(data=st.data())
def test_a_client_hello_split_over_records_reads_the_same(
    split_hello: bytes, data: st.DataObject
) -> None:
    (rtype, rec), = _records(split_hello)
    payload = rec[5:]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(payload) - 1), max_size=6)))
    out = b""
    for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True):
        part = payload[start:end]
        out += bytes([rtype]) + rec[1:3] + len(part).to_bytes(2, "big") + part
    assert name_of(out) == "split.example"


def test_a_hello_without_extensions_or_sni_has_no_name() -> None:
    assert name_of(one_record_hello(hello_body(None))) is None
    assert name_of(one_record_hello(hello_body(b""))) is None
    other = b"\x00\x10\x00\x03\x02h2"  # ALPN only
    assert name_of(one_record_hello(hello_body(other))) is None
    # a server_name list with no host_name entry
    assert name_of(one_record_hello(hello_body(sni_ext(host_entry(b"x", 7))))) is None


def test_bytes_that_are_not_ascii_are_escaped_never_lost() -> None:
    ext = sni_ext(host_entry(b"caf\xc3\xa9.Example"))
    assert name_of(one_record_hello(hello_body(ext))) == "caf\\xc3\\xa9.example"


@pytest.mark.parametrize(
    ("ext", "what"),
    [
        (sni_ext(host_entry(b"alpha.example"), list_len=40), "server_name"),  # list length
        (sni_ext(host_entry(b"alpha.example")[:-3]), "server_name"),  # entry cut short
        (sni_ext(b"\x00\x00"), "server_name"),  # entry header cut short
        (b"\x00\x00\x00\x01\x00", "server_name"),  # no list length
        (b"\x00\x00\x00\x09\x00", "ClientHello extensions"),  # extension past the end
    ],
)
def test_a_bad_server_name_is_eproto_naming_it(ext: bytes, what: str) -> None:
    with pytest.raises(tls.TlsHandoffError, match=what) as info:
        name_of(one_record_hello(hello_body(ext)))
    assert info.value.errno == errno.EPROTO


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # nothing
        bytes([21, 3, 3, 0, 2, 2, 40]),  # an alert, no handshake
        one_record_hello(b"\x03\x03" + bytes(20)),  # cut inside the random
        one_record_hello(b"\x03\x03" + bytes(32) + b"\x20"),  # session id past the end
        bytes([22, 3, 1, 0, 4, 2, 0, 0, 0]),  # a ServerHello
    ],
)
def test_no_client_hello_is_eproto(wire: bytes) -> None:
    with pytest.raises(tls.TlsHandoffError, match="ClientHello") as info:
        name_of(wire)
    assert info.value.errno == errno.EPROTO
