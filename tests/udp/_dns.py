"""DNS wire format (RFC 1035) built and read by hand, for a DNS-shaped client and backends."""

from __future__ import annotations

import struct

TYPE_A, CLASS_IN = 1, 1


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"


def query(qid: int, name: str, qtype: int = TYPE_A) -> bytes:
    """A standard query with recursion desired: header, one question."""
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", qtype, CLASS_IN)


def parse_question(msg: bytes) -> tuple[int, str, int]:
    """(id, name, offset after the question) of a message with one question."""
    qid = struct.unpack_from("!H", msg)[0]
    labels, i = [], 12
    while msg[i]:
        labels.append(msg[i + 1 : i + 1 + msg[i]].decode())
        i += 1 + msg[i]
    return qid, ".".join(labels), i + 1 + 4


def answer(q: bytes, address: str, ttl: int = 60) -> bytes:
    """A response to query ``q``: the question, and one A record for its name
    (a compression pointer to the question's name) holding ``address``."""
    qid, _, end = parse_question(q)
    flags = 0x8000 | 0x0400 | 0x0100 | 0x0080  # QR, AA, RD, RA
    header = struct.pack("!HHHHHH", qid, flags, 1, 1, 0, 0)
    rdata = bytes(int(x) for x in address.split("."))
    record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, len(rdata)) + rdata
    return header + q[12:end] + record


def read_answer(msg: bytes) -> tuple[int, str, str]:
    """(id, question name, the first A record's address) of a response."""
    qid, name, end = parse_question(msg)
    flags, _, ancount = struct.unpack_from("!HHH", msg, 2)
    assert flags & 0x8000 and ancount >= 1, f"not a response with an answer: {msg!r}"
    _, rtype, _, _, rdlen = struct.unpack_from("!HHHIH", msg, end)
    assert rtype == TYPE_A and rdlen == 4
    rdata = msg[end + 12 : end + 16]
    return qid, name, ".".join(str(b) for b in rdata)
