"""Host names and allowlist patterns: normalising, checking and matching. Pure.

A pattern is an exact name (`api.example.com`) or a wildcard (`*.example.com`) that matches
the subdomains of `example.com` at any depth, never `example.com` itself, optionally with a
port (`api.internal:8443`, `*.example.com:443`) that limits it to that port; without one
every port is allowed. Matching ignores case and a trailing dot, as DNS does. An empty
allowlist allows every host.

A host name is never a number or an address in disguise: resolvers read `127.1`,
`2130706433` or `0x7f000001` as IPv4 addresses, so a name whose last label is a number is
not a name. Names that mean this machine or its local network (`localhost`, the host's own
name, `.local`...) are local names: the proxy goes there only through `network.resolve`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Iterable

MAX_NAME = 253
# Letters, digits, hyphen; underscore too, because real service names use it (_dmarc,
# SRV-style hosts). Anything else cannot be a host we dial, so it is never allowed.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
# A last label that inet_aton, browsers (WHATWG URL) and getaddrinfo read as a number:
# decimal, octal or 0x-hex.
_NUMBER = re.compile(r"(?:[0-9]+|0x[0-9a-f]*)\Z")
_PRINTABLE = re.compile(r"[a-z0-9._-]{1,253}\Z")
# Special-use names that stand for this machine or the local network (RFC 6761 localhost,
# RFC 6762 .local, RFC 8375 .home.arpa, the private-use .internal, distributions'
# .localdomain): never in public DNS, so only a network.resolve entry can mean them.
LOCAL_SUFFIXES = ("localhost", "local", "localdomain", "home.arpa", "internal")


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


def is_number(name: str) -> bool:
    """Whether normalised `name` reads as an IPv4 address (its last label is a number)."""
    return bool(_NUMBER.match(name.rsplit(".", 1)[-1]))


def valid_name(name: str) -> bool:
    """Whether `name` (normalised) is a syntactically valid DNS host name, and not an
    address or a number that resolvers would read as one."""
    if not name or len(name) > MAX_NAME or not name.isascii() or is_number(name):
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def printable(name: str) -> bool:
    """Whether `name` holds only what host names hold, so it can be logged as it is."""
    return bool(_PRINTABLE.match(name))


def name_problem(name: str) -> str | None:
    """Why normalised `name` is not a host name the proxy will resolve, or None."""
    if is_ip(name.strip("[]")):
        return f"{name[:64]!r} is an IP address, not a host name"
    if printable(name) and is_number(name):
        return (f"{name!r} ends in a number, which resolvers read as an IPv4 "
                f"address, not a host name")
    if not valid_name(name):
        return "not a valid host name"
    return None


@functools.lru_cache(maxsize=1)
def own_names() -> frozenset[str]:
    """This host's own names (its hostname and fully qualified name), normalised."""
    found = set()
    for lookup in (socket.gethostname, socket.getfqdn):
        try:
            found.add(normalize(lookup()))
        except OSError:
            pass
    return frozenset(n for n in found if n)


def local_problem(name: str, own: Iterable[str] = ()) -> str | None:
    """Why normalised `name` stands for this machine or its local network (so only a
    network.resolve entry may send it anywhere), or None. `own` is the host's own names."""
    for suffix in LOCAL_SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return f"{name} is a local name (.{suffix}), reachable only through network.resolve"
    if name in own:
        return f"{name} is this host's own name, reachable only through network.resolve"
    return None


def split_pattern(pattern: str) -> tuple[str, int | None]:
    """A normalised pattern as (name pattern, port or None); ValueError for a bad port."""
    name, colon, port = pattern.rpartition(":")
    if not colon:
        return pattern, None
    if not port.isdigit() or not 0 < int(port) < 65536 or ":" in name:
        raise ValueError(pattern)
    return name, int(port)


def normalize_pattern(pattern: str) -> str:
    """The comparable form of an allowlist pattern, port kept (`API.io.:443` -> `api.io:443`)."""
    try:
        name, port = split_pattern(pattern.lower())
    except ValueError:
        return normalize(pattern)
    return normalize(name) + (f":{port}" if port is not None else "")


def pattern_problem(pattern: object, *, port_ok: bool = False) -> str | None:
    """Why `pattern` is not a valid allowlist pattern, or None when it is. With `port_ok`
    it may end in `:port`."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a host name such as api.example.com or *.example.com"
    name = normalize(pattern)
    if is_ip(name.strip("[]")) or (name.startswith("[") and is_ip(name[1:].split("]")[0])):
        return ("IP addresses cannot be allowed, only names (map a name to an address "
                "with network.resolve)")
    if port_ok and ":" in name:
        try:
            name, _ = split_pattern(name)
        except ValueError:
            return "has a port that is not a number from 1 to 65535"
        name = normalize(name)
    if name in ("*", "*.*"):
        return "a bare wildcard is not a pattern; leave the list empty to allow every host"
    if is_ip(name.strip("[]")):
        return ("IP addresses cannot be allowed, only names (map a name to an address "
                "with network.resolve)")
    base = name[2:] if name.startswith("*.") else name
    if "*" in base:
        return "a wildcard may only be the whole first label, as in *.example.com"
    if base and base.isascii() and is_number(base):
        return "ends in a number, which resolvers read as an IPv4 address, not a host name"
    if not valid_name(base):
        return "is not a valid host name"
    return None


def matches(pattern: str, host: str, port: int | None = None) -> bool:
    """Whether normalised `host` (on `port`; None: on any of the pattern's ports) matches
    `pattern` (normalised, valid)."""
    pattern, only = split_pattern(pattern) if ":" in pattern else (pattern, None)
    if only is not None and port is not None and port != only:
        return False
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def allowed(patterns: Iterable[str], host: str, port: int | None = None, *,
            empty_allows_all: bool = True) -> bool:
    """Whether `host` on `port` matches any pattern (port None: the name on some port);
    with no patterns at all, every host is allowed."""
    host = normalize(host)
    patterns = tuple(patterns)
    if not patterns:
        return empty_allows_all
    return any(matches(p, host, port) for p in patterns)


def covered(pattern: str, patterns: Iterable[str]) -> bool:
    """Whether every host `pattern` matches is matched by one of `patterns` too (so a
    secret's hosts can be checked against the allowlist). No patterns covers everything."""
    # A port limits where an entry lets a connection go, not which names it covers.
    patterns = tuple(split_pattern(p)[0] if ":" in p else p for p in patterns)
    if not patterns:
        return True
    if not pattern.startswith("*."):
        return allowed(patterns, pattern)
    # `*.a.b` is covered by `*.a.b` itself or by any wildcard over a parent, `*.b`.
    return any(p.startswith("*.") and (pattern == p or pattern.endswith(p[1:]))
               for p in patterns)
