"""The arm64 image under emulation on an x86 host: cold boot to the agent's first exec result
(qemu-system-aarch64, TCG, `-M virt`) for each candidate CPU model, exec latency, checkpoint,
and a fast-start restore from the checkpoint. Prints figures; asserts nothing.

Needs the arm64 image (`shuru init --arch arm64`, its build time is printed by
`--build`). Run: .venv/bin/python bench/arm64.py [--runs 3] [--cpus cortex-a72,max] [--build]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from shuru import AsyncSandbox
from shuru.backends.qemu import accel as accel_mod
from shuru import checkpoints as ck


async def boot_once(cpus: int) -> tuple[float, AsyncSandbox]:
    start = time.monotonic()
    sb = await AsyncSandbox.start(arch="arm64", cpus=cpus, memory=1024, cold=True)
    r = await sb.exec("true")
    assert r.exit_code == 0
    return time.monotonic() - start, sb


async def main(args) -> None:
    if args.build:
        from shuru.image.build import build_image

        t0 = time.monotonic()
        image = await asyncio.to_thread(build_image, arch="arm64", force=True)
        print(f"arm64 image build: {time.monotonic() - t0:.0f} s ({image.id})")
    for model in args.cpus.split(","):
        accel_mod.AARCH64_TCG_CPU = model
        times = []
        for _ in range(args.runs):
            took, sb = await boot_once(args.vcpus)
            times.append(took)
            await sb.stop()
        print(f"cold boot to first exec, -cpu {model}, {args.vcpus} vCPU: median "
              f"{statistics.median(times):.1f} s of {[round(t, 1) for t in times]}")
    accel_mod.AARCH64_TCG_CPU = args.cpus.split(",")[0]
    took, sb = await boot_once(args.vcpus)
    lat = []
    for _ in range(20):
        t0 = time.monotonic()
        await sb.exec("true")
        lat.append(time.monotonic() - t0)
    print(f"exec('true') latency: median {statistics.median(lat) * 1000:.0f} ms")
    name = f"bench-arm64-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    await sb.checkpoint(name)  # stops the sandbox; then boots and saves a machine state
    print(f"checkpoint (with its machine state saved): {time.monotonic() - t0:.1f} s")
    try:
        for _ in range(2):
            t0 = time.monotonic()
            child = await AsyncSandbox.start(from_=name, cpus=args.vcpus, memory=1024)
            await child.exec("true")
            print(f"start from the checkpoint to first exec (restored={child.restored}): "
                  f"{time.monotonic() - t0:.1f} s")
            await child.stop()
    finally:
        ck.delete(name)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--cpus", default="cortex-a72,max")
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--build", action="store_true")
    asyncio.run(main(p.parse_args()))
