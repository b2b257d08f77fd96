"""Host names and allowlist patterns: normalising, checking and matching. Pure.

A pattern is an exact name (`api.example.com`) or a wildcard (`*.example.com`) that matches
the subdomains of `example.com` at any depth, never `example.com` itself. Matching ignores
case and a trailing dot, as DNS does. An empty allowlist allows every host.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

MAX_NAME = 253
# Letters, digits, hyphen; underscore too, because real service names use it (_dmarc,
# SRV-style hosts). Anything else cannot be a host we dial, so it is never allowed.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def normalize(name: str) -> str:
    """The comparable form of a name: lower case, without a trailing dot."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def valid_name(name: str) -> bool:
    """Whether `name` (normalised) is a syntactically valid DNS host name."""
    if not name or len(name) > MAX_NAME or not name.isascii():
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def pattern_problem(pattern: object) -> str | None:
    """Why `pattern` is not a valid allowlist pattern, or None when it is."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a host name such as api.example.com or *.example.com"
    name = normalize(pattern)
    if name in ("*", "*.*"):
        return "a bare wildcard is not a pattern; leave the list empty to allow every host"
    if is_ip(name.strip("[]")):
        return ("IP addresses cannot be allowed, only names (map a name to an address "
                "with network.resolve)")
    base = name[2:] if name.startswith("*.") else name
    if "*" in base:
        return "a wildcard may only be the whole first label, as in *.example.com"
    if not valid_name(base):
        return "is not a valid host name"
    return None


def matches(pattern: str, host: str) -> bool:
    """Whether normalised `host` matches `pattern` (normalised, valid)."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def allowed(patterns: Iterable[str], host: str, *, empty_allows_all: bool = True) -> bool:
    """Whether `host` matches any pattern; with no patterns at all, every host is allowed."""
    host = normalize(host)
    patterns = tuple(patterns)
    if not patterns:
        return empty_allows_all
    return any(matches(p, host) for p in patterns)


def covered(pattern: str, patterns: Iterable[str]) -> bool:
    """Whether every host `pattern` matches is matched by one of `patterns` too (so a
    secret's hosts can be checked against the allowlist). No patterns covers everything."""
    patterns = tuple(patterns)
    if not patterns:
        return True
    if not pattern.startswith("*."):
        return allowed(patterns, pattern)
    # `*.a.b` is covered by `*.a.b` itself or by any wildcard over a parent, `*.b`.
    return any(p.startswith("*.") and (pattern == p or pattern.endswith(p[1:]))
               for p in patterns)
