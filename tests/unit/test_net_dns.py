"""DNS messages: the parser against hostile input, the builder, fake-IP allocation."""

import ipaddress
import random
import struct

import pytest

from shuru.net import dns
from shuru.net.fakeip import POOL, FakeIPs


def test_a_query_round_trips():
    q = dns.parse_query(dns.build_query("Api.Example.com", dns.A, qid=0x1234))
    assert (q.id, q.name, q.qtype, q.qclass) == (0x1234, "Api.Example.com", dns.A, dns.IN)
    answer = dns.reply(q, addresses=("198.18.0.7",))
    assert struct.unpack_from("!H", answer)[0] == 0x1234
    assert dns.read_answer(answer) == (dns.NOERROR, ["198.18.0.7"])
    # The question comes back exactly as asked, case included (0x20 randomisation).
    assert b"\x03Api\x07Example\x03com\x00" in answer
    flags = struct.unpack_from("!H", answer, 2)[0]
    assert flags & 0x8000 and flags & 0x0100 and flags & 0x0080  # QR, RD echoed, RA


def test_refused_and_empty_answers():
    q = dns.parse_query(dns.build_query("x.com", dns.AAAA))
    assert dns.read_answer(dns.reply(q, dns.REFUSED)) == (dns.REFUSED, [])
    assert dns.read_answer(dns.reply(q)) == (dns.NOERROR, [])


def test_an_edns_query_parses():
    query = bytearray(dns.build_query("a.io"))
    struct.pack_into("!H", query, 10, 1)  # ARCOUNT = 1: an OPT record follows
    query += b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 0)
    assert dns.parse_query(bytes(query)).name == "a.io"


@pytest.mark.parametrize("message, why", [
    (b"\x12\x34\x01\x00\x00\x01", "short header"),
    (dns.build_query("a.io")[:-2], "truncated question"),
    (dns.build_query("a.io")[:14], "truncated label"),
    (struct.pack("!HHHHHH", 1, 0x100, 2, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 2, "two questions"),
    (struct.pack("!HHHHHH", 1, 0x100, 0, 0, 0, 0), "no question"),
    (struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", "compression loop"),
    (struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",
     "name over 255 bytes"),
    (struct.pack("!HHHHHH", 1, 0x100, 1, 0, 0, 0) + b"\x05ab", "label past the end"),
])
def test_malformed_queries_are_format_errors(message, why):
    with pytest.raises(dns.DNSFormatError):
        dns.parse_query(message)
    assert not dns.is_droppable(message)
    answer = dns.error(message, dns.FORMERR)
    assert answer[:2] == message[:2] and dns.read_answer(answer) == (dns.FORMERR, [])


@pytest.mark.parametrize("message", [b"", b"\x01", b"\x01\x02\x03",
                                     dns.reply(dns.parse_query(dns.build_query("a.io"))),
                                     b"\x00" * 70000])
def test_responses_and_fragments_are_dropped(message):
    assert dns.is_droppable(message)
    assert dns.error(message, dns.FORMERR) == b""


def hostile(seed: bytes, *, count: int = 3000, rng_seed: int = 6):
    """`count` messages: the good `seed` with a few bytes changed, or random bytes."""
    rng = random.Random(rng_seed)
    for _ in range(count):
        data = bytearray(seed if rng.random() < 0.6 else rng.randbytes(rng.randrange(0, 80)))
        for _ in range(rng.randrange(0, 6)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        yield bytes(data)


def test_random_garbage_never_raises_anything_but_format_errors():
    for data in hostile(dns.build_query("some.example.org")):
        try:
            q = dns.parse_query(data)
        except dns.DNSFormatError:
            continue
        assert len(q.question) >= 5 and len(q.name) <= 255


def test_fake_ips_are_stable_and_in_the_benchmark_range():
    fake = FakeIPs()
    a, b = fake.address("a.io"), fake.address("b.io")
    assert a != b and fake.address("a.io") == a
    assert all(ipaddress.ip_address(ip) in POOL for ip in (a, b))
    assert a != str(POOL.network_address)
    assert fake.name(a) == "a.io" and fake.name("8.8.8.8") is None


def test_fake_ip_map_is_bounded_and_forgets_the_least_recent_name():
    fake = FakeIPs(max_names=3)
    ips = [fake.address(n) for n in ("a", "b", "c")]
    fake.address("a")  # a is now the most recent
    fake.address("d")
    assert len(fake) == 3
    assert fake.name(ips[1]) is None and fake.name(ips[0]) == "a"


def test_fake_ips_wrap_round_the_pool_without_two_names_sharing_an_address():
    fake = FakeIPs(pool=ipaddress.ip_network("198.18.0.0/30"))  # two usable addresses
    first, second, third = fake.address("a"), fake.address("b"), fake.address("c")
    assert third == first and first != second
    assert fake.name(first) == "c" and fake.name(second) == "b"
    assert fake.address("a") == second


def test_the_proxys_dns_answers_garbage_without_raising():
    from shuru.net import NetworkConfig, PolicyProxy

    proxy = PolicyProxy(NetworkConfig(allow=("ok.io",)), environ={})
    seed = dns.build_query("ok.io")
    for data in hostile(seed, rng_seed=53):
        answer = proxy.answer_dns(data)
        assert answer == b"" or (answer[:2] == data[:2] and answer[2] & 0x80)
    assert len(proxy.audit) <= 10000
    # Other opcodes (NOTIFY, UPDATE) are not implemented.
    update = bytearray(seed)
    update[2] |= 5 << 3
    assert dns.read_answer(proxy.answer_dns(bytes(update)))[0] == dns.NOTIMP
