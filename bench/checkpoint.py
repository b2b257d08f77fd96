"""Checkpoints: time to create one (sync, stop, keep the disk, save its machine state), the
fan-out right after it (N sandboxes started from the fresh checkpoint at once: until all have
run a first command), the same fan-out when the checkpoint has no saved state yet (as before
checkpoint() saved one: the first start boots cold and saves while the others wait),
start-to-first-exec from it against a fresh start from the base image (median of N each), and
disk bytes a fork uses before it writes anything.

Run: .venv/bin/python bench/checkpoint.py [--runs 5] [--forks 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
import warnings

from shuru import AsyncSandbox, ShuruWarning
from shuru.launch import states
from shuru import checkpoints as ck

from start import start_to_exec  # bench/ is the script's directory, so on sys.path


async def make(name: str) -> tuple[ck.Checkpoint, float]:
    sb = await AsyncSandbox.start()
    await sb.exec("mkdir -p /opt/app && head -c 20000000 /dev/urandom > /opt/app/blob && sync")
    start = time.monotonic()
    cp = await sb.checkpoint(name)
    return cp, time.monotonic() - start


async def fan_out(name: str, forks: int) -> tuple[float, list[float], int]:
    """(seconds until every fork has run `true`, each fork's own time, how many restored)."""
    start = time.monotonic()

    async def one() -> tuple[float, bool]:
        sb = await AsyncSandbox.start(from_=name)
        try:
            await sb.exec("true")
            return time.monotonic() - start, sb.restored
        finally:
            await sb.stop()

    results = await asyncio.gather(*(one() for _ in range(forks)))
    return time.monotonic() - start, [t for t, _ in results], sum(r for _, r in results)


def show(label: str, total: float, each: list[float], restored: int) -> None:
    print(f"{label}: all {len(each)} ran a command after {total:.2f} s "
          f"(each: {' '.join(f'{t:.2f}' for t in sorted(each))}; {restored} restored)")


async def main(runs: int, forks: int) -> None:
    warnings.simplefilter("ignore", ShuruWarning)
    ready, bare = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
    try:
        cp, create = await make(ready)
        print(f"checkpoint create (sync, stop, keep {cp.manifest['disk']['size'] / 2**20:.1f} MiB "
              f"of disk, save the machine state): {create:.2f} s")
        show(f"fan-out of {forks} right after checkpoint()", *await fan_out(ready, forks))

        cp, _ = await make(bare)
        states.discard(states.Layer.of_checkpoint(cp).states_dir)
        show(f"fan-out of {forks}, checkpoint without a saved state (before)",
             *await fan_out(bare, forks))

        fork = await AsyncSandbox.start(from_=ready)
        fork_bytes = fork._machine.layer.stat().st_blocks * 512
        await fork.stop()

        fresh = [await start_to_exec() for _ in range(runs)]
        forked = [await start_to_exec(from_=ready) for _ in range(runs)]
        print(f"start to first exec, fresh:     median {statistics.median(fresh):.2f} s "
              f"({' '.join(f'{t:.2f}' for t in fresh)})")
        print(f"start to first exec, from ckpt: median {statistics.median(forked):.2f} s "
              f"({' '.join(f'{t:.2f}' for t in forked)})")
        print(f"disk used by a fork after boot, before it writes anything itself: "
              f"{fork_bytes / 1024:.0f} KiB")
        print(f"ratio from-checkpoint/fresh: "
              f"{statistics.median(forked) / statistics.median(fresh):.2f}x")
    finally:
        for name in (ready, bare):
            if (ck.checkpoints_dir() / name).exists():
                ck.delete(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--forks", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.forks))
