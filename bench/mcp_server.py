"""What `shuru mcp` adds to a command: the same `true` run through the MCP `exec` tool (the
real `shuru mcp` over stdio, driven by the mcp package's Client) and through the SDK's
`AsyncSandbox.exec` in this process, each on a restored 1-CPU sandbox.

Prints the time to connect and start a sandbox through MCP, the median of 20 `exec` round
trips each way, and the ratio. Run: .venv/bin/python bench/mcp_server.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from mcp import Client, StdioServerParameters

from shuru import AsyncSandbox

N = 20
SIZE = {"cpus": 1, "memory": 1024}


async def timed(fn) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


async def main() -> None:
    shuru = str(Path(sys.executable).with_name("shuru"))
    params = StdioServerParameters(command=shuru, args=["mcp"], env=dict(os.environ))
    t = time.perf_counter()
    async with Client(params) as client:
        started = await client.call_tool("start_sandbox",
                                         {"cpus": 1, "memory_mb": SIZE["memory"]})
        first = time.perf_counter() - t
        sid = started.structured_content["sandbox_id"]
        over_mcp = [await timed(lambda: client.call_tool(
            "exec", {"sandbox_id": sid, "command": ["true"]})) for _ in range(N)]
    async with await AsyncSandbox.start(**SIZE) as sb:
        direct = [await timed(lambda: sb.exec(["true"])) for _ in range(N)]
    mcp_ms = statistics.median(over_mcp) * 1000
    sdk_ms = statistics.median(direct) * 1000
    print(f"spawn server + connect + start_sandbox: {first:.2f} s")
    print(f"exec `true`, median of {N}: MCP {mcp_ms:.1f} ms, SDK {sdk_ms:.1f} ms "
          f"(MCP/SDK {mcp_ms / sdk_ms:.2f}x)")


if __name__ == "__main__":
    asyncio.run(main())
