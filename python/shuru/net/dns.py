"""One DNS message at a time: a defensive parser for the guest's queries and a builder for
our answers. Pure.

The guest is hostile, so parsing is bounded and strict: one question, no compression in it,
labels and names within the RFC 1035 limits, nothing read past the end. A message that is
not a query at all (too short to carry an id, or already a response) is dropped, so two
resolvers can never echo each other; anything else that is malformed gets FORMERR. Answers
carry the question exactly as it was asked (0x20 case randomisation keeps working) and
nothing from the guest's other sections.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

MAX_MESSAGE = 65535  # the most TCP framing can carry; UDP is smaller still
TTL = 60  # short, so a guest re-asks after the host changes its mind (a new sandbox)

A, AAAA = 1, 28
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
_HEADER = struct.Struct("!HHHHHH")


class DNSFormatError(ValueError):
    """The message cannot be answered other than with FORMERR (or not at all)."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str          # as asked, without the trailing dot; compare with names.normalize
    qtype: int
    qclass: int
    question: bytes    # the raw question section, echoed back in the answer


def _read_name(msg: bytes, offset: int) -> tuple[str, int]:
    labels, total = [], 0
    while True:
        if offset >= len(msg):
            raise DNSFormatError("name runs past the end of the message")
        length = msg[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            # Compression makes no sense in the first question and would let a hostile
            # sender build loops; refuse it outright.
            raise DNSFormatError("compressed or extended label in the question")
        if offset + length > len(msg):
            raise DNSFormatError("label runs past the end of the message")
        total += length + 1
        if total > 255:
            raise DNSFormatError("name longer than 255 bytes")
        labels.append(msg[offset:offset + length].decode("latin-1"))
        offset += length
    return ".".join(labels), offset


def parse_query(msg: bytes) -> Query:
    """The one question of a standard query. DNSFormatError when it cannot be answered
    normally; `is_droppable` says whether to answer at all."""
    if len(msg) < _HEADER.size:
        raise DNSFormatError("shorter than a DNS header")
    if len(msg) > MAX_MESSAGE:
        raise DNSFormatError("longer than any DNS message")
    qid, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(msg)
    if flags & 0x8000:
        raise DNSFormatError("a response, not a query")
    if qdcount != 1:
        raise DNSFormatError(f"{qdcount} questions, expected 1")
    name, end = _read_name(msg, _HEADER.size)
    if end + 4 > len(msg):
        raise DNSFormatError("question runs past the end of the message")
    qtype, qclass = struct.unpack_from("!HH", msg, end)
    return Query(qid, flags, name, qtype, qclass, msg[_HEADER.size:end + 4])


def is_droppable(msg: bytes) -> bool:
    """Messages we never answer: too short to carry an id, oversized, or a response."""
    return len(msg) < 4 or len(msg) > MAX_MESSAGE or bool(msg[2] & 0x80)


def opcode(msg: bytes) -> int:
    return (msg[2] >> 3) & 0x0F if len(msg) > 2 else 0


def _flags(request_flags: int, rcode: int) -> int:
    # QR, the request's opcode and RD, RA set (we recurse on the guest's behalf), AA not.
    return 0x8000 | (request_flags & 0x7900) | 0x0080 | (rcode & 0x0F)


def error(msg: bytes, rcode: int) -> bytes:
    """An answer with `rcode` and no sections, for a message we could not parse (or a
    query we refuse before parsing further); b"" when `msg` must be dropped."""
    if is_droppable(msg):
        return b""
    qid, flags = struct.unpack_from("!HH", msg)
    return _HEADER.pack(qid, _flags(flags, rcode), 0, 0, 0, 0)


def reply(query: Query, rcode: int = NOERROR, addresses: tuple[str, ...] = ()) -> bytes:
    """The answer to `query`: its question echoed, then one A/AAAA record per address."""
    records = []
    for address in addresses:
        packed = ipaddress.ip_address(address).packed
        rtype = A if len(packed) == 4 else AAAA
        # 0xC00C points at the question's name, which always starts right after the header.
        records.append(struct.pack("!HHHIH", 0xC00C, rtype, IN, TTL, len(packed)) + packed)
    header = _HEADER.pack(query.id, _flags(query.flags, rcode), 1, len(records), 0, 0)
    return header + query.question + b"".join(records)


# ---- the client side, for tests and for checking a guest's resolver by hand -------------

def build_query(name: str, qtype: int = A, *, qid: int = 0x5348) -> bytes:
    """A standard recursive query for `name`."""
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".") if label]
    question = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return _HEADER.pack(qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, IN)


def read_answer(msg: bytes) -> tuple[int, list[str]]:
    """(rcode, addresses) of an answer this module built."""
    _qid, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(msg)
    offset = _HEADER.size
    for _ in range(qdcount):
        _name, offset = _read_name(msg, offset)
        offset += 4
    addresses = []
    for _ in range(ancount):
        _ptr, rtype, _cls, _ttl, length = struct.unpack_from("!HHHIH", msg, offset)
        offset += 12
        data = msg[offset:offset + length]
        offset += length
        if rtype in (A, AAAA):
            addresses.append(str(ipaddress.ip_address(data)))
    return flags & 0x0F, addresses
