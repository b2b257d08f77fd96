"""Which addresses the proxy may dial: global unicast only. Pure.

The guest chooses names, and a name can resolve to anything, so every address the host
resolver returns is vetted here before the proxy connects to it. Refused: loopback,
unspecified, private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254 among
them), CGNAT, multicast, broadcast, reserved, benchmarking and documentation ranges, and
the IPv6 forms that carry an IPv4 address inside them (IPv4-mapped, NAT64, 6to4) when the
address inside is one of those. The tables are written out rather than taken from
`ipaddress.is_global`, whose answers have changed between Python versions; each entry
names its range, so a refusal says exactly why.

Addresses a user wrote in `network.resolve` are trusted and never come here.
"""

from __future__ import annotations

import ipaddress

_V4 = [(ipaddress.IPv4Network(net), what) for net, what in (
    ("255.255.255.255/32", "the broadcast address"),
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a carrier-grade NAT address (RFC 6598)"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (where cloud metadata services live)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.0.0.0/24", "an IETF protocol assignment (RFC 6890)"),
    ("192.0.2.0/24", "a documentation address (TEST-NET-1)"),
    ("192.88.99.0/24", "a 6to4 relay anycast address (deprecated)"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("198.18.0.0/15", "a benchmarking address (RFC 2544)"),
    ("198.51.100.0/24", "a documentation address (TEST-NET-2)"),
    ("203.0.113.0/24", "a documentation address (TEST-NET-3)"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address (240.0.0.0/4)"),
)]

# Forms that carry an IPv4 address; the address inside is vetted as IPv4.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_6TO4 = ipaddress.IPv6Network("2002::/16")

_V6 = [(ipaddress.IPv6Network(net), what) for net, what in (
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address (RFC 8215)"),
    ("100::/64", "a discard-only address (RFC 6666)"),
    ("2001::/32", "a Teredo address (a tunnel to an IPv4 address inside it)"),
    ("2001:2::/48", "a benchmarking address (RFC 5180)"),
    ("2001:db8::/32", "a documentation address"),
    ("2001::/23", "an IETF protocol assignment (RFC 6890)"),
    ("3fff::/20", "a documentation address (RFC 9637)"),
    ("5f00::/16", "a segment routing (SRv6) address"),
    ("fc00::/7", "a unique local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address (deprecated)"),
    ("ff00::/8", "a multicast address"),
)]
_GLOBAL_V6 = ipaddress.IPv6Network("2000::/3")


def _v4_problem(ip: ipaddress.IPv4Address) -> str | None:
    for net, what in _V4:
        if ip in net:
            return f"{what}, in {net}"
    return None


def refusal(address: object) -> str | None:
    """Why the proxy must not dial `address` (an IP address as text), or None when it is
    global unicast and may be dialled."""
    try:
        if not isinstance(address, str):  # ipaddress would take an int as an address
            raise TypeError(address)
        ip = ipaddress.ip_address(address)
    except (ValueError, TypeError):
        return f"{str(address)[:64]!r} is not an IP address"
    shown = address[:64]
    if isinstance(ip, ipaddress.IPv4Address):
        problem = _v4_problem(ip)
        return f"{shown} is {problem}" if problem else None
    ip = ipaddress.IPv6Address(ip.compressed.split("%")[0])  # the zone says nothing
    for net, form in ((_MAPPED, "an IPv4-mapped"), (_NAT64, "a NAT64")):
        if ip in net:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            problem = _v4_problem(inner)
            return f"{shown} is {form} form of {inner}, {problem}" if problem else None
    if ip in _6TO4:
        inner = ip.sixtofour
        problem = _v4_problem(inner)
        return f"{shown} is a 6to4 form of {inner}, {problem}" if problem else None
    for net, what in _V6:
        if ip in net:
            return f"{shown} is {what}, in {net}"
    if ip not in _GLOBAL_V6:
        return f"{shown} is a reserved address, outside global unicast {_GLOBAL_V6}"
    return None
