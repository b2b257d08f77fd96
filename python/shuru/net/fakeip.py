"""Fake IP addresses handed to the guest in DNS answers, and the names they stand for.

The guest never learns a real address: each allowed name gets an address from
198.18.0.0/15 (reserved for benchmarking, never routed), and a connection to it is a
connection to that name, dialled by the host. A hard-coded address is simply not in the
map. The map is bounded: past `max_names` the least recently asked name is forgotten, and
addresses are reused only after the whole range has gone round once.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

POOL = ipaddress.ip_network("198.18.0.0/15")


class FakeIPs:
    def __init__(self, *, max_names: int = 16384, pool: ipaddress.IPv4Network = POOL):
        self._max = max_names
        self._first = int(pool.network_address) + 1        # skip the network address
        self._size = pool.num_addresses - 2                # and the broadcast address
        self._next = 0
        self._by_name: OrderedDict[str, str] = OrderedDict()
        self._by_ip: dict[str, str] = {}

    def address(self, name: str) -> str:
        """The address for normalised `name`, the same one each time it is asked."""
        ip = self._by_name.get(name)
        if ip is not None:
            self._by_name.move_to_end(name)
            return ip
        ip = str(ipaddress.IPv4Address(self._first + self._next))
        self._next = (self._next + 1) % self._size
        stale = self._by_ip.pop(ip, None)
        if stale is not None:
            del self._by_name[stale]
        while len(self._by_name) >= self._max:
            old, old_ip = self._by_name.popitem(last=False)
            del self._by_ip[old_ip]
        self._by_name[name] = ip
        self._by_ip[ip] = name
        return ip

    def name(self, ip: str) -> str | None:
        """The name `ip` was handed out for, or None for any address we never gave."""
        return self._by_ip.get(ip)

    def __len__(self) -> int:
        return len(self._by_name)
