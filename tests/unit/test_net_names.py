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
