"""Which addresses the proxy may dial: every refused range, IPv4 and IPv6, and the IPv6 forms
that carry an IPv4 address. Pure: nothing here sends a packet anywhere."""

import pytest

from shuru.net.addresses import refusal

# (address, words the reason must hold): one or more per range, at its edges.
REFUSED_V4 = [
    ("0.0.0.0", "unspecified"), ("0.255.255.255", "0.0.0.0/8"),
    ("10.0.0.0", "private"), ("10.255.255.255", "RFC 1918"),
    ("100.64.0.0", "carrier-grade NAT"), ("100.127.255.255", "100.64.0.0/10"),
    ("127.0.0.1", "loopback"), ("127.0.0.0", "loopback"), ("127.255.255.254", "127.0.0.0/8"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "169.254.0.0/16"),
    ("172.16.0.1", "private"), ("172.31.255.255", "172.16.0.0/12"),
    ("192.0.0.8", "IETF protocol assignment"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "6to4 relay"),
    ("192.168.0.1", "private"), ("192.168.255.255", "192.168.0.0/16"),
    ("198.18.0.1", "benchmarking"), ("198.19.255.255", "198.18.0.0/15"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
]

# Public addresses next to the refused ranges (strings only: nothing connects to them).
GLOBAL_V4 = ["1.1.1.1", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0",
             "126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0",
             "172.15.255.255", "172.32.0.0", "192.0.1.255", "192.0.3.0", "192.167.255.255",
             "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255"]

REFUSED_V6 = [
    ("::", "unspecified"), ("::1", "loopback"),
    ("::7f00:1", "IPv4-compatible"), ("::8.8.8.8", "IPv4-compatible"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("100::1", "discard-only"),
    ("2001::1", "Teredo"), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:2::1", "benchmarking"),
    ("2001:db8::1", "documentation"), ("2001:db8:ffff::1", "documentation"),
    ("2001:10::1", "IETF protocol assignment"), ("2001:1ff::1", "IETF protocol assignment"),
    ("3fff::1", "documentation"),
    ("5f00::1", "segment routing"),
    ("fc00::1", "unique local"), ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"), ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"), ("ff05::1:3", "multicast"),
    ("1::1", "reserved"), ("4000::1", "reserved"), ("e000::1", "reserved"),
    ("8000::", "reserved"),
]

GLOBAL_V6 = ["2606:4700:4700::1111", "2a00:1450:4001::1", "2001:200::1", "2400::1",
             "2002:808:808::1",  # 6to4 of 8.8.8.8
             "64:ff9b::808:808",  # NAT64 of 8.8.8.8
             "::ffff:8.8.8.8"]  # IPv4-mapped 8.8.8.8


@pytest.mark.parametrize("address, words", REFUSED_V4)
def test_refused_ipv4_ranges_name_their_range(address, words):
    reason = refusal(address)
    assert reason and words in reason and address in reason


@pytest.mark.parametrize("address", GLOBAL_V4)
def test_global_ipv4_is_dialable(address):
    assert refusal(address) is None


@pytest.mark.parametrize("address, words", REFUSED_V6)
def test_refused_ipv6_ranges_name_their_range(address, words):
    reason = refusal(address)
    assert reason and words in reason


@pytest.mark.parametrize("address", GLOBAL_V6)
def test_global_ipv6_is_dialable(address):
    assert refusal(address) is None


@pytest.mark.parametrize("address, words", REFUSED_V4)
def test_every_refused_ipv4_range_is_refused_in_its_ipv6_forms(address, words):
    v4 = [int(part) for part in address.split(".")]
    hi, lo = v4[0] << 8 | v4[1], v4[2] << 8 | v4[3]
    forms = {
        f"::ffff:{address}": "IPv4-mapped",
        f"::ffff:{hi:x}:{lo:x}": "IPv4-mapped",   # the same, written in hex
        f"64:ff9b::{address}": "NAT64",
        f"2002:{hi:x}:{lo:x}::1": "6to4",
        f"::{address}": None,                      # IPv4-compatible, or :: and ::1 themselves
    }
    for form, kind in forms.items():
        reason = refusal(form)
        assert reason, form
        if kind:
            assert kind in reason and address in reason and words in reason, (form, reason)


@pytest.mark.parametrize("text", ["", "localhost", "1.2.3", "256.1.1.1", "::g", None, 42,
                                  "127.0.0.1 ", "0x7f000001"])
def test_anything_but_an_address_is_refused(text):
    assert "not an IP address" in refusal(text)
