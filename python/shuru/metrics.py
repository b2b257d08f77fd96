"""What a sandbox costs: `AsyncSandbox.metrics()` and `shuru ps --stats`.

Pure parsers for what Linux reports about the VM's process (`/proc/PID/stat` for CPU time,
`/proc/PID/smaps_rollup` for resident and proportional memory) and what the guest reports
about itself (its `/proc/meminfo`), and `collect`, the thin shell that reads them. Guest text
is untrusted: a line that does not parse is skipped, never an error.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def cpu_seconds(stat_text: str, ticks: int) -> float | None:
    """User + system CPU seconds from a /proc/PID/stat line (the command name, field 2, may
    hold spaces and parentheses, so fields are counted after its last ')')."""
    try:
        fields = stat_text[stat_text.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / ticks
    except (ValueError, IndexError):
        return None


def memory_kib(text: str, keys: tuple[str, ...]) -> dict[str, int]:
    """`Key:   123 kB` lines (smaps_rollup, meminfo) as {key: KiB} for the keys asked for."""
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


def process_usage(pid: int, proc: Path = Path("/proc")) -> dict[str, Any]:
    """CPU seconds and host memory (RSS, PSS in bytes) of one process; what cannot be read
    is None."""
    out: dict[str, Any] = {"cpu_seconds": None, "rss": None, "pss": None}
    try:
        out["cpu_seconds"] = cpu_seconds((proc / str(pid) / "stat").read_text(),
                                         os.sysconf("SC_CLK_TCK"))
        mem = memory_kib((proc / str(pid) / "smaps_rollup").read_text(), ("Rss", "Pss"))
        out["rss"] = mem["Rss"] * 1024 if "Rss" in mem else None
        out["pss"] = mem["Pss"] * 1024 if "Pss" in mem else None
    except OSError:
        pass
    return out


def guest_memory(meminfo: str) -> dict[str, Any]:
    """The guest's own view, in bytes: total, available, used (total - available)."""
    mem = memory_kib(meminfo, ("MemTotal", "MemAvailable"))
    total, avail = mem.get("MemTotal"), mem.get("MemAvailable")
    return {"total": total * 1024 if total is not None else None,
            "available": avail * 1024 if avail is not None else None,
            "used": (total - avail) * 1024 if total is not None and avail is not None else None}


def network_bytes(log: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes the guest's connections sent (up) and received (down), from the audit log's
    close events."""
    up = sum(e.get("bytes_up", 0) for e in log if isinstance(e.get("bytes_up"), int))
    down = sum(e.get("bytes_down", 0) for e in log if isinstance(e.get("bytes_down"), int))
    return {"up": up, "down": down}


def disk_bytes(path: Path | None) -> int | None:
    """Bytes the sandbox's own disk layer takes on the host (allocated, not its size)."""
    try:
        return os.stat(path).st_blocks * 512 if path else None
    except OSError:
        return None


def uptime(started: float) -> float:
    return max(0.0, time.time() - started)
