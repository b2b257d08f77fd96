"""The `network` a sandbox needs to reach real package registries from this host, shared by
the network tests and the KVM tier's set-up (the only places that fetch from a registry)."""

from __future__ import annotations

import socket

from shuru.net import addresses


def registry_network(*hosts: str) -> dict:
    """`network` allowing `hosts`. Where the host reaches a registry through a gateway at an
    address that is not public (this project's CI: a documentation-range address, which the
    proxy rightly refuses to dial), the name is pinned to that address with a
    `network.resolve` entry, the documented way to a non-public endpoint; on an ordinary
    host nothing is pinned and the proxy's own resolving and vetting are what is tested."""
    resolve = {}
    for host in hosts:
        found = {info[4][0] for info in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)}
        if any(addresses.refusal(a) for a in found):
            resolve[host] = sorted(found)[0]
    return {"allow": list(hosts), "resolve": resolve}
