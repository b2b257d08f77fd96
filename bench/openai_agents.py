"""What the OpenAI Agents SDK adds on top of a shuru sandbox.

For one session of `ShuruSandboxClient` (restored sandbox, network off), the time of:

* `AsyncSandbox.start` alone (the floor: restore to a running VM);
* `session.start()`: the VM plus the SDK's start (workspace made, its path helper
  installed, the manifest applied: here two small files);
* one `session.exec` (through `sh -lc`, in the workspace) against one `sb.exec`;
* `persist_workspace` and `hydrate_workspace` (into a second session) of a workspace of
  200 files of 10 KiB and one of 20 MiB;
* `session.aclose()` + `client.delete()`.

Run: .venv/bin/python bench/openai_agents.py (needs `pip install 'shuru[openai-agents]'`).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from agents.sandbox import Manifest
from agents.sandbox.entries import File

from shuru import AsyncSandbox
from shuru.integrations.openai_agents import ShuruSandboxClient

N = 10


async def timed(label: str, awaitable):
    t0 = time.perf_counter()
    result = await awaitable
    print(f"{label:<40} {time.perf_counter() - t0:8.3f} s")
    return result


async def main() -> None:
    sb = await timed("AsyncSandbox.start", AsyncSandbox.start())
    plain = []
    for _ in range(N):
        t0 = time.perf_counter()
        await sb.exec("true")
        plain.append(time.perf_counter() - t0)
    await sb.stop()

    client = ShuruSandboxClient()
    manifest = Manifest(entries={"a.txt": File(content=b"a\n"), "b/c.txt": File(content=b"c\n")})
    session = await client.create(manifest=manifest)
    await timed("session.start() (VM + SDK start)", session.start())
    through = []
    for _ in range(N):
        t0 = time.perf_counter()
        await session.exec("true")
        through.append(time.perf_counter() - t0)
    print(f"{'sb.exec(true), median':<40} {statistics.median(plain):8.3f} s")
    print(f"{'session.exec(true), median':<40} {statistics.median(through):8.3f} s")

    await session.exec("mkdir -p many && for i in $(seq 200); do head -c 10240 /dev/urandom "
                       "> many/$i; done && head -c 20971520 /dev/urandom > big.bin")
    archive = await timed("persist_workspace (~22 MiB)", session.persist_workspace())
    size = archive.seek(0, 2)
    archive.seek(0)
    print(f"{'  archive size':<40} {size / 2**20:8.1f} MiB")
    other = await client.create()
    await other.start()
    await timed("hydrate_workspace (into a new session)", other.hydrate_workspace(archive))
    count = await other.exec("ls many | wc -l")
    assert count.stdout.strip() == b"200", count.stdout
    for s in (session, other):
        await s.aclose()
        await client.delete(s)


if __name__ == "__main__":
    asyncio.run(main())
