"""The guest agent's loop on the host, no VM: what each stream kind costs the agent itself.

Runs the agent as a host subprocess (as the contract tests do) and prints, for each case,
the wall time and the agent's own CPU time (user + system, from /proc), which depends far
less on a busy machine than the wall time does:

* walk: `files.walk` of a 100,100-entry tree (entries/s);
* output: one exec writing 256 MiB to stdout (MiB/s);
* execs: 200 short execs one after another (execs/s).

Run: .venv/bin/python bench/agent_loop.py   (PYTHONPATH=DIR runs the agent found in DIR)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shuru.channel import Channel
from shuru.files import Files
from shuru.process import run_to_completion

DIRS, PER_DIR = 100, 1_000
OUTPUT_MIB = 256
EXECS = 200


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _make_tree(root: Path) -> None:
    for d in range(DIRS):
        (root / f"d{d:03}").mkdir()
        for i in range(PER_DIR):
            (root / f"d{d:03}" / f"f{i:04}").touch()


async def main() -> None:
    host_sock, agent_sock = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "shuru_guest", "--fd",
                             str(agent_sock.fileno())], pass_fds=[agent_sock.fileno()])
    agent_sock.close()
    reader, writer = await asyncio.open_connection(sock=host_sock)
    channel = Channel(reader, writer)
    await channel.handshake()
    files = Files(lambda: channel)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            await asyncio.to_thread(_make_tree, Path(tmp))

            async def walk() -> int:
                return sum([1 async for _ in files.walk(tmp)])

            async def output() -> int:
                r = await run_to_completion(
                    channel.open_stream(), ["head", "-c", f"{OUTPUT_MIB}M", "/dev/zero"],
                    stdin=None, timeout=300, max_output=(OUTPUT_MIB + 1) << 20)
                return len(r.stdout) >> 20

            async def execs() -> int:
                for _ in range(EXECS):
                    await run_to_completion(channel.open_stream(), ["true"], stdin=None,
                                            timeout=60)
                return EXECS

            for name, case, unit in (("walk", walk, "entries"), ("output", output, "MiB"),
                                     ("execs", execs, "execs")):
                cpu, t = _cpu_s(proc.pid), time.perf_counter()
                n = await case()
                wall, cpu = time.perf_counter() - t, _cpu_s(proc.pid) - cpu
                print(f"{name:7} {n:>7} {unit:8} {wall:7.2f} s wall ({n / wall:9.0f}/s)  "
                      f"agent cpu {cpu:6.2f} s ({n / max(cpu, 0.01):9.0f}/cpu-s)")
    finally:
        await channel.close()
        host_sock.close()
        proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
