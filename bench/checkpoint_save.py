"""Checkpoint save time: `checkpoint()` end to end (sync, stop, keep the disk, save the
checkpoint's machine state), and the part that keeps the disk (`checkpoints.save`: move the
layer, rebase it when it stood on a saved state, hash it), median of N runs. Each run starts a
sandbox from the image, writes 20 MB, and checkpoints it (a restored clone, so the disk is
rebased onto the image).

Run: .venv/bin/python bench/checkpoint_save.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
import uuid

from shuru import AsyncSandbox
from shuru import checkpoints as ck


async def main(runs: int) -> None:
    keep_times: list[float] = []
    real_save = ck.save

    def timed_save(*args, **kwargs):
        t = time.monotonic()
        try:
            return real_save(*args, **kwargs)
        finally:
            keep_times.append(time.monotonic() - t)

    ck.save = timed_save
    totals = []
    for _ in range(runs):
        name = f"bench-save-{uuid.uuid4().hex[:8]}"
        sb = await AsyncSandbox.start()
        try:
            await sb.exec("mkdir -p /opt/app && head -c 20000000 /dev/urandom > /opt/app/blob")
            t = time.monotonic()
            cp = await sb.checkpoint(name)
            totals.append(time.monotonic() - t)
            size = cp.manifest["disk"]["size"]
        finally:
            await sb.stop()
            shutil.rmtree(ck.checkpoints_dir() / name, ignore_errors=True)
    print(f"checkpoint() end to end: median {statistics.median(totals):.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in totals)})")
    print(f"keeping the disk ({size / 2**20:.1f} MiB): median {statistics.median(keep_times):.3f} s "
          f"(runs: {', '.join(f'{x:.3f}' for x in keep_times)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args().runs))
