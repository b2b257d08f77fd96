"""Checkpoints: time to create one, start-to-first-exec from it against a fresh start from the
base image (median of N each), and disk bytes a fork uses before it writes anything.

Run: .venv/bin/python bench/checkpoint.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from shuru import AsyncSandbox
from shuru import checkpoints as ck

from start import start_to_exec  # bench/ is the script's directory, so on sys.path


async def main(runs: int) -> None:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        sb = await AsyncSandbox.start()
        await sb.exec("mkdir -p /opt/app && head -c 20000000 /dev/urandom > /opt/app/blob && sync")
        start = time.monotonic()
        cp = await sb.checkpoint(name)
        create = time.monotonic() - start

        fork = await AsyncSandbox.start(from_=name)
        fork_bytes = fork._machine.disk.stat().st_blocks * 512
        await fork.stop()

        fresh = [await start_to_exec() for _ in range(runs)]
        forked = [await start_to_exec(from_=name) for _ in range(runs)]
        print(f"checkpoint create (sync, stop, save {cp.manifest['disk']['size'] / 2**20:.1f} MiB "
              f"disk): {create:.2f} s")
        print(f"start to first exec, fresh:     median {statistics.median(fresh):.2f} s "
              f"({' '.join(f'{t:.2f}' for t in fresh)})")
        print(f"start to first exec, from ckpt: median {statistics.median(forked):.2f} s "
              f"({' '.join(f'{t:.2f}' for t in forked)})")
        print(f"disk used by a fork after boot, before it writes anything itself: {fork_bytes / 1024:.0f} KiB")
        print(f"ratio from-checkpoint/fresh: "
              f"{statistics.median(forked) / statistics.median(fresh):.2f}x")
    finally:
        ck.delete(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
