"""Detached sandboxes: what attaching, pausing and resuming cost, against starting one.

For one machine size (default 1 CPU, 512 MiB; `--memory`), the median of N runs each of:
a cold start (boot) and a restore from saved machine state, both to the first exec result; a
detached start (a supervisor process too) to its first exec; then on one detached sandbox,
attach (from connect to a usable sandbox object) and attach-to-first-exec; pause (QMP stop:
the memory stays in host RAM, so it takes no time per GiB) and resume-to-first-exec; and the
VM's host memory (RSS) running and paused, to show that a paused sandbox keeps its RAM.

Run: .venv/bin/python bench/lifecycle.py [--runs 5] [--memory 512]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
import warnings

from shuru import AsyncSandbox, ShuruWarning


async def start_to_exec(**options) -> float:
    start = time.monotonic()
    sb = await AsyncSandbox.start(**options)
    try:
        await sb.exec("true")
        return time.monotonic() - start
    finally:
        await sb.stop()


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:8.1f} ms"


async def main(runs: int, memory: int) -> None:
    warnings.simplefilter("ignore", ShuruWarning)
    size = {"cpus": 1, "memory": memory}
    await start_to_exec(**size)  # make sure a saved state exists for this size
    cold = [await start_to_exec(cold=True, **size) for _ in range(runs)]
    restore = [await start_to_exec(**size) for _ in range(runs)]
    detached = [await start_to_exec(detach=True, name=f"bench-{uuid.uuid4().hex[:6]}", **size)
                for _ in range(runs)]

    name = f"bench-{uuid.uuid4().hex[:6]}"
    owner = await AsyncSandbox.start(detach=True, name=name, **size)
    attach, attach_exec, pause, resume, rss_run, rss_paused = [], [], [], [], [], []
    try:
        for _ in range(runs):
            t = time.monotonic()
            sb = await AsyncSandbox.attach(name)
            attach.append(time.monotonic() - t)
            await sb.exec("true")
            attach_exec.append(time.monotonic() - t)
            rss_run.append((await sb.metrics())["memory"]["rss"])
            t = time.monotonic()
            await sb.pause()
            pause.append(time.monotonic() - t)
            rss_paused.append((await sb.metrics())["memory"]["rss"])
            t = time.monotonic()
            await sb.resume()
            await sb.exec("true")
            resume.append(time.monotonic() - t)
            await sb.disconnect()
    finally:
        await owner.stop()

    print(f"lifecycle, {runs} runs each, 1 CPU, {memory} MiB (medians)")
    print(f"  cold start to first exec        {ms(cold)}")
    print(f"  restore to first exec           {ms(restore)}")
    print(f"  detached start to first exec    {ms(detached)}")
    print(f"  attach (connect + hello)        {ms(attach)}")
    print(f"  attach to first exec            {ms(attach_exec)}")
    print(f"  pause (CPUs stopped, RAM kept)  {ms(pause)}")
    print(f"  resume to first exec            {ms(resume)}")
    print(f"  host RSS running / paused       {statistics.median(rss_run) / 2**20:.0f} / "
          f"{statistics.median(rss_paused) / 2**20:.0f} MiB")
    print(f"  attach is {statistics.median(restore) / statistics.median(attach_exec):.0f}x "
          f"faster than a restore, resume "
          f"{statistics.median(restore) / statistics.median(resume):.0f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", type=int, default=512)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.memory))
