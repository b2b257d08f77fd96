"""The audit log of one sandbox's network: what was asked, allowed, denied and injected.

Events are plain dicts (newest last) with a fixed set of keys; secrets appear by name only,
never by value. The log is bounded, so a guest that floods DNS cannot grow host memory
without limit: past `max_events` the oldest tenth is dropped and `dropped` counts it.
"""

from __future__ import annotations

import time

EVENTS = ("dns", "connect", "deny", "inject", "close")
OPTIONAL = ("reason", "secrets", "bytes_up", "bytes_down")


class AuditLog:
    def __init__(self, *, max_events: int = 10000):
        self.events: list[dict] = []
        self.dropped = 0
        self._max = max_events

    def record(self, event: str, host: str | None, ip: str, port: int, **extra) -> dict:
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        unknown = set(extra) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"unknown audit fields {sorted(unknown)}")
        entry = {"time": time.time(), "event": event, "host": host, "ip": ip, "port": port}
        entry.update((k, v) for k, v in extra.items() if v is not None)
        self.events.append(entry)
        if len(self.events) > self._max:
            cut = max(1, self._max // 10)
            del self.events[:cut]
            self.dropped += cut
        return entry
