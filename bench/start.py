"""Fast start: start-to-first-exec for a cold boot and for a restore from saved machine
state (median of N each), for the base image and for a checkpoint; then the memory that 1
and 4 idle restored sandboxes take (QEMU's PSS, and what the host lost from MemAvailable);
the speed-up ratios last.

Run: .venv/bin/python bench/start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
import warnings

from shuru import AsyncSandbox, ShuruWarning
from shuru import checkpoints as ck


async def start_to_exec(**options) -> float:
    start = time.monotonic()
    sb = await AsyncSandbox.start(**options)
    try:
        await sb.exec("true")
        return time.monotonic() - start
    finally:
        await sb.stop()


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


async def idle_memory(n: int) -> tuple[float, float]:
    """(median PSS per QEMU, MemAvailable drop per sandbox), both MiB, for n idle clones."""
    before = mem_available_kib()
    sandboxes = [await AsyncSandbox.start() for _ in range(n)]
    try:
        await asyncio.gather(*(sb.exec("true") for sb in sandboxes))
        pss = [pss_kib(sb._machine.proc.pid) for sb in sandboxes]
        drop = (before - mem_available_kib()) / n
        return statistics.median(pss) / 1024, drop / 1024
    finally:
        await asyncio.gather(*(sb.stop() for sb in sandboxes))


def show(label: str, times: list[float]) -> float:
    med = statistics.median(times)
    print(f"{label:<34} median {med:5.2f} s  ({' '.join(f'{t:.2f}' for t in times)})")
    return med


async def main(runs: int) -> None:
    warnings.simplefilter("ignore", ShuruWarning)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        sb = await AsyncSandbox.start()  # makes sure the image's state exists
        await sb.exec("mkdir -p /opt/app && echo v1 > /opt/app/VERSION")
        await sb.checkpoint(name)
        await (await AsyncSandbox.start(from_=name)).stop()  # saves the checkpoint's state

        cold = show("image, cold boot", [await start_to_exec(cold=True) for _ in range(runs)])
        warm = show("image, restore", [await start_to_exec() for _ in range(runs)])
        ccold = show("checkpoint, cold boot",
                     [await start_to_exec(from_=name, cold=True) for _ in range(runs)])
        cwarm = show("checkpoint, restore", [await start_to_exec(from_=name) for _ in range(runs)])
        for n in (1, 4):
            pss, drop = await idle_memory(n)
            print(f"{n} idle restored sandbox(es) of 2048 MiB: QEMU PSS median {pss:.0f} MiB, "
                  f"MemAvailable drop {drop:.0f} MiB per sandbox")
        print(f"speed-up, image: {cold / warm:.1f}x; checkpoint: {ccold / cwarm:.1f}x")
    finally:
        if (ck.checkpoints_dir() / name).exists():
            ck.delete(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
