"""Cold start: shuru's start-to-first-exec-result against the floor of the same boot.

The floor boots the same kernel and initramfs with a bare QEMU command line, where a
replacement /init (appended as a second cpio archive, which the kernel unpacks over the
first) prints one line and powers off; we time from spawning QEMU to reading that line.
shuru's figure is `AsyncSandbox.start()` plus `exec("true")` returning. Median of N runs each,
the ratio printed last. Run: .venv/bin/python bench/boot.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from shuru import AsyncSandbox
from shuru.backends.qemu import accel as accel_mod
from shuru.backends.qemu.machine import find_qemu, host_tsc_khz, kernel_cmdline
from shuru.image.cpio import Entry, archive
from shuru.image.store import current_image, shuru_home

MARKER = b"SHURU-FLOOR-READY"


def floor_initrd(initrd: Path, dest: Path) -> Path:
    init = b"#!/bin/sh\necho " + MARKER + b" >/dev/console\nexec poweroff -f\n"
    dest.write_bytes(initrd.read_bytes() + archive([Entry.file("init", init, 0o755)]))
    return dest


def floor_once(qemu: str, accel: accel_mod.Accel, kernel: Path, initrd: Path,
               cmdline: str) -> float:
    argv = [qemu, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-M", "microvm",
            "-accel", accel.qemu_arg, "-cpu", accel.cpu, "-smp", "2", "-m", "2048M",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
            "-serial", "stdio"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if MARKER in line:
                return time.monotonic() - start
        raise RuntimeError("the floor VM never printed its line")
    finally:
        proc.kill()
        proc.wait()


async def shuru_once() -> float:
    start = time.monotonic()
    sandbox = await AsyncSandbox.start(cpus=2, memory=2048, cold=True)  # a boot, not a restore
    try:
        result = await sandbox.exec("true")
        took = time.monotonic() - start
        assert result.exit_code == 0
        return took
    finally:
        await sandbox.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    image = current_image()
    qemu = find_qemu()
    accel = accel_mod.choose("auto", qemu, shuru_home() / "cache" / "accel.json")
    tsc = host_tsc_khz(Path("/proc/cpuinfo").read_text()) if accel.name == "tcg" else None
    cmdline = kernel_cmdline(verbose=False, tsc_khz=tsc)
    print(f"image {image.id}, kernel {image.manifest.get('kernel_version')}, accel {accel.name}")

    with tempfile.TemporaryDirectory() as tmp:
        initrd = floor_initrd(image.initrd, Path(tmp) / "floor-initrd.img")
        floors = [floor_once(qemu, accel, image.kernel, initrd, cmdline) for _ in range(args.runs)]
    starts = [asyncio.run(shuru_once()) for _ in range(args.runs)]

    floor, cold = statistics.median(floors), statistics.median(starts)
    print(f"floor (bare QEMU, same kernel+initramfs, prints a line): "
          f"median {floor:.2f} s  runs {' '.join(f'{t:.2f}' for t in floors)}")
    print(f"shuru cold start to first exec result:                  "
          f"median {cold:.2f} s  runs {' '.join(f'{t:.2f}' for t in starts)}")
    print(f"ratio shuru/floor: {cold / floor:.2f}x")


if __name__ == "__main__":
    main()
