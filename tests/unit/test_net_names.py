"""Allowlist patterns: validation and matching."""

import pytest

from shuru.net import names


@pytest.mark.parametrize("pattern, host, expected", [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.Example.COM.", True),
    ("api.example.com", "x.api.example.com", False),
    ("api.example.com", "example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "A.EXAMPLE.com.", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "badexample.com", False),
    ("*.example.com", "example.com.evil.net", False),
])
def test_matching(pattern, host, expected):
    assert names.allowed([names.normalize(pattern)], host) is expected


def test_empty_list_allows_every_host_unless_told_otherwise():
    assert names.allowed([], "anything.example")
    assert not names.allowed([], "anything.example", empty_allows_all=False)


@pytest.mark.parametrize("pattern", [
    "", "*", "*.*", "1.2.3.4", "::1", "[::1]", "a.*.com", "*example.com", "exa mple.com",
    "-bad.com", "x" * 64 + ".com", "ünicode.de", 42, None,
])
def test_bad_patterns_are_explained(pattern):
    assert names.pattern_problem(pattern)


@pytest.mark.parametrize("pattern", ["example.com", "*.example.com", "Example.COM.", "a_b.c-d.io",
                                     "localhost"])
def test_good_patterns(pattern):
    assert names.pattern_problem(pattern) is None


def test_coverage_of_a_secret_pattern_by_the_allowlist():
    allow = ("api.github.com", "*.example.com")
    assert names.covered("api.github.com", allow)
    assert not names.covered("github.com", allow)
    assert names.covered("a.example.com", allow)
    assert names.covered("*.example.com", allow)
    assert names.covered("*.b.example.com", allow)
    assert not names.covered("*.github.com", allow)
    assert names.covered("*.anything.org", ())


# ---- names that are addresses or numbers in disguise ------------------------------------

NUMERIC = ["127.0.0.1", "2130706433", "0x7f000001", "0X7F000001", "127.1", "0", "017700000001",
           "0x7f.1", "127.0.1", "10.0.0.1", "169.254.169.254", "example.123", "a.b.0x1f",
           "0x", "1.2.3.4.5"]


@pytest.mark.parametrize("name", NUMERIC)
def test_numeric_forms_are_not_host_names(name):
    name = names.normalize(name)
    assert not names.valid_name(name)
    assert names.is_number(name)
    reason = names.name_problem(name)
    assert "IP address" in reason or "ends in a number" in reason
    assert names.pattern_problem(name) and names.pattern_problem(name, port_ok=True)


@pytest.mark.parametrize("literal", ["::1", "[::1]", "::ffff:127.0.0.1", "fe80::1"])
def test_ipv6_literals_are_not_host_names(literal):
    assert not names.valid_name(literal)
    assert "IP address" in names.name_problem(literal)


@pytest.mark.parametrize("name", ["api.example.com", "123.example.com", "0x7f.example.com",
                                  "a1", "x0", "ex-0", "0x7g", "_dmarc.example.com"])
def test_names_with_digits_are_still_names(name):
    assert names.valid_name(name) and names.name_problem(name) is None


@pytest.mark.parametrize("name", ["localhost", "a.localhost", "x.y.localhost", "printer.local",
                                  "router.home.arpa", "db.internal",
                                  "metadata.google.internal", "box.localdomain"])
def test_local_names_are_local(name):
    assert "local name" in names.local_problem(name)


def test_the_hosts_own_names_are_local():
    own = names.own_names()
    assert names.normalize(__import__("socket").gethostname()) in own
    for name in own:
        assert names.local_problem(name, own)
    assert "own name" in names.local_problem("mybox.corp.example", {"mybox.corp.example"})
    assert names.local_problem("api.example.com", {"mybox"}) is None
    assert names.local_problem("notlocalhost.com") is None


# ---- allow entries with a port ------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["api.internal:8443", "*.example.com:443", "API.io.:1",
                                     "a.io:65535"])
def test_allow_entries_may_carry_a_port(pattern):
    assert names.pattern_problem(pattern, port_ok=True) is None
    assert names.pattern_problem(pattern)  # not where ports are not wanted (secret hosts)


@pytest.mark.parametrize("pattern, fragment", [
    ("a.io:0", "port"), ("a.io:65536", "port"), ("a.io:x", "port"), ("a.io:", "port"),
    ("1.2.3.4:443", "IP addresses"), ("[::1]:443", "IP addresses"), ("*:443", "bare wildcard"),
    ("a.*.io:443", "wildcard"), ("127.1:80", "number"),
])
def test_bad_ports_and_addresses_with_ports_are_explained(pattern, fragment):
    assert fragment in names.pattern_problem(pattern, port_ok=True)


def test_normalised_patterns_keep_their_port():
    assert names.normalize_pattern("API.io.:443") == "api.io:443"
    assert names.normalize_pattern("*.Example.COM.") == "*.example.com"
    assert names.split_pattern("*.example.com:443") == ("*.example.com", 443)


@pytest.mark.parametrize("pattern, host, port, expected", [
    ("api.internal:8443", "api.internal", 8443, True),
    ("api.internal:8443", "api.internal", 443, False),
    ("api.internal:8443", "api.internal", None, True),   # DNS: the name is allowed somewhere
    ("*.example.com:443", "a.example.com", 443, True),
    ("*.example.com:443", "a.example.com", 80, False),
    ("*.example.com:443", "example.com", 443, False),
    ("api.io", "api.io", 22, True),                       # no port: every port
])
def test_ports_are_matched(pattern, host, port, expected):
    assert names.allowed([pattern], host, port) is expected


def test_a_port_does_not_change_which_names_an_entry_covers():
    assert names.covered("api.io", ("api.io:443",))
    assert names.covered("a.example.com", ("*.example.com:8443",))
    assert not names.covered("b.io", ("api.io:443",))
