"""Port forwarding speed: a server in the sandbox reached through a forward, against the same
server on the host's loopback.

The server is `python3 -m http.server` serving a 2-byte file and a 50 MiB file, started the
same way in the guest (reached through `ports=["HOST:8000"]`, on a restored sandbox with the
network off) and on the host (127.0.0.1 directly). The same client (Python http.client, on
the host) measures both:

* request latency: median of 20 fresh connections, from connect to the whole tiny response;
* throughput: the 50 MiB download, from the response head to the last byte;
* `connect()`: median time for the SDK to open a connection to the guest port (no listener).

The same client also runs inside the guest against its own loopback, which separates the
forward's cost from the guest's (TCG emulation where KVM is missing).

Ratios are printed last. Run: .venv/bin/python bench/ports.py
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shuru import AsyncSandbox

MIB = 1024 * 1024
SIZE = 50 * MIB
N = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The same measurement as `measure`, run inside the guest against its own loopback: what the
# guest's server and client cost without the forward.
IN_GUEST = r'''
import http.client, json, statistics, time
lat = []
for _ in range(%(n)d):
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=120)
    conn.request("GET", "/tiny"); conn.getresponse().read(); conn.close()
    lat.append(time.perf_counter() - start)
conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=120)
conn.request("GET", "/big"); resp = conn.getresponse(); first = time.perf_counter(); got = 0
while chunk := resp.read(1 << 18):
    got += len(chunk)
print(json.dumps({"latency": statistics.median(lat), "rate": got / (time.perf_counter() - first)}))
'''


def measure(port: int) -> dict:
    """Latency and throughput of the server behind 127.0.0.1:`port` (runs in a thread)."""
    latencies = []
    for _ in range(N):
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("GET", "/tiny")
        body = conn.getresponse().read()
        latencies.append(time.perf_counter() - start)
        conn.close()
        assert body == b"ok", body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", "/big")
    resp = conn.getresponse()
    first = time.perf_counter()
    got = 0
    while chunk := resp.read(1 << 18):
        got += len(chunk)
    rate = got / (time.perf_counter() - first)
    conn.close()
    assert got == SIZE, got
    return {"latency": statistics.median(latencies), "rate": rate}


async def on_host() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "tiny").write_bytes(b"ok")
        Path(tmp, "big").write_bytes(os.urandom(SIZE))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", str(port), "--bind",
                                 "127.0.0.1", "--directory", tmp],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            if b"Serving HTTP" not in proc.stdout.readline():  # it listens now
                raise SystemExit("the host's http.server did not start")
            return await asyncio.to_thread(measure, port)
        finally:
            proc.terminate()
            proc.wait()


async def in_sandbox() -> dict:
    port = free_port()
    async with await AsyncSandbox.start(ports=[f"{port}:8000"]) as sb:
        print(f"sandbox: {sb.accel}, restored={sb.restored}", file=sys.stderr)
        await sb.exec("mkdir -p /srv && printf ok > /srv/tiny && "
                      f"head -c {SIZE} /dev/urandom > /srv/big")
        server = await sb.spawn("cd /srv && exec python3 -u -m http.server 8000")
        seen = ""
        async for chunk in server:
            seen += chunk.text
            if "Serving HTTP" in seen:
                break
        result = await asyncio.to_thread(measure, port)
        local = await sb.exec(["python3", "-c", IN_GUEST % {"n": N}])
        result["guest_local"] = json.loads(local.stdout)
        opens = []
        for _ in range(N):
            start = time.perf_counter()
            reader, writer = await sb.connect(8000)
            opens.append(time.perf_counter() - start)
            writer.close()
        result["connect"] = statistics.median(opens)
        return result


async def main() -> None:
    host = await on_host()
    guest = await in_sandbox()
    local = guest["guest_local"]
    print(f"{'':28}{'host loopback':>16}{'through forward':>18}{'guest loopback':>18}")
    print(f"{'request latency (median)':28}{host['latency'] * 1e3:>13.2f} ms"
          f"{guest['latency'] * 1e3:>15.2f} ms{local['latency'] * 1e3:>15.2f} ms")
    print(f"{'50 MiB download':28}{host['rate'] / MIB:>11.1f} MiB/s"
          f"{guest['rate'] / MIB:>13.1f} MiB/s{local['rate'] / MIB:>13.1f} MiB/s")
    print(f"{'connect() (median)':28}{'':>16}{guest['connect'] * 1e3:>15.2f} ms")
    print(f"ratios: latency x{guest['latency'] / host['latency']:.1f}, "
          f"throughput x{guest['rate'] / host['rate']:.3f} of host loopback; "
          f"x{guest['latency'] / local['latency']:.1f} and "
          f"x{guest['rate'] / local['rate']:.2f} of the guest's own loopback")


if __name__ == "__main__":
    asyncio.run(main())
