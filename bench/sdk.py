"""SDK speed against floors measured in the same run.

* exec round trip: median of 100 `exec(["/bin/true"])`, against a bare shell on the QEMU
  serial port of a VM booted from the same image with `init=/bin/sh`, timing
  `/bin/true; echo MARK` from write to the marker coming back (median of 100).
* stdout throughput: a spawned `head -c 100M /dev/zero` streamed to the host, against `cat`
  of a 100 MiB file to /dev/null on the host.
* file write / read throughput: 100 MiB through `sandbox.files`, against the same host `cat`.

Ratios are printed last. Run: .venv/bin/python bench/sdk.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from shuru import AsyncSandbox
from shuru.backends.qemu import accel as accel_mod
from shuru.backends.qemu.disks import find_qemu_img
from shuru.backends.qemu.machine import find_qemu, host_tsc_khz, kernel_cmdline
from shuru.image.store import current_image, shuru_home

MIB = 1024 * 1024
SIZE = 100 * MIB
N = 100


def serial_shell_round_trip(n: int) -> list[float]:
    """A VM whose serial console is a plain shell; time `/bin/true; echo MARKi` each."""
    image = current_image()
    qemu = find_qemu()
    accel = accel_mod.choose("auto", qemu, shuru_home() / "cache" / "accel.json")
    tsc = host_tsc_khz(Path("/proc/cpuinfo").read_text()) if accel.name == "tcg" else None
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "disk.qcow2"
        subprocess.run([find_qemu_img(), "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(image.rootfs), str(overlay)], check=True)
        cmdline = kernel_cmdline(verbose=False, tsc_khz=tsc) + " init=/bin/sh"
        proc = subprocess.Popen(
            [qemu, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-M", "microvm",
             "-accel", accel.qemu_arg, "-cpu", accel.cpu, "-smp", "2", "-m", "2048M",
             "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline,
             "-drive", f"id=root,file={overlay},format=qcow2,if=none,cache=unsafe",
             "-device", "virtio-blk-device,drive=root", "-serial", "stdio"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            def until(marker: bytes) -> None:
                buf = b""
                while marker not in buf:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        raise RuntimeError("the serial-shell VM went away")
                    buf = buf[-256:] + chunk

            proc.stdin.write(b"stty -echo; echo READY\n")
            proc.stdin.flush()
            until(b"READY")
            times = []
            for i in range(n):
                start = time.monotonic()
                # The marker is computed by the shell, so a terminal echo of the typed line
                # can never match it.
                proc.stdin.write(b"/bin/true; echo M$((%d + 1))K\n" % i)
                proc.stdin.flush()
                until(b"M%dK" % (i + 1))
                times.append(time.monotonic() - start)
            return times
        finally:
            proc.kill()
            proc.wait()


def host_cat_rate() -> float:
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(MIB) * 100)
        f.flush()
        subprocess.run(["cat", f.name], stdout=subprocess.DEVNULL, check=True)  # warm cache
        start = time.monotonic()
        subprocess.run(["cat", f.name], stdout=subprocess.DEVNULL, check=True)
        return SIZE / (time.monotonic() - start)


async def shuru_figures() -> dict[str, float]:
    async with await AsyncSandbox.start(cpus=2, memory=2048) as sb:
        for _ in range(5):
            await sb.exec(["/bin/true"])  # warm up
        rtts = []
        for _ in range(N):
            start = time.monotonic()
            await sb.exec(["/bin/true"])
            rtts.append(time.monotonic() - start)

        proc = await sb.spawn(["head", "-c", str(SIZE), "/dev/zero"])
        start = time.monotonic()
        got = 0
        async for chunk in proc:
            got += len(chunk.data)
        stdout_rate = got / (time.monotonic() - start)
        assert got == SIZE and await proc.wait() == 0

        block = os.urandom(MIB)

        async def blocks():
            for _ in range(SIZE // MIB):
                yield block

        start = time.monotonic()
        await sb.files.write("/tmp/bench.bin", blocks())
        write_rate = SIZE / (time.monotonic() - start)
        start = time.monotonic()
        got = 0
        async for chunk in sb.files.iter_read("/tmp/bench.bin"):
            got += len(chunk)
        read_rate = got / (time.monotonic() - start)
        assert got == SIZE
        return {"rtt": statistics.median(rtts), "stdout": stdout_rate, "write": write_rate,
                "read": read_rate}


def main() -> None:
    floor_rtt = statistics.median(serial_shell_round_trip(N))
    cat_rate = host_cat_rate()
    f = asyncio.run(shuru_figures())
    print(f"exec round trip: shuru {f['rtt'] * 1000:.1f} ms, floor (serial shell) "
          f"{floor_rtt * 1000:.1f} ms")
    print(f"stdout throughput: shuru {f['stdout'] / MIB:.1f} MiB/s, floor (host cat) "
          f"{cat_rate / MIB:.0f} MiB/s")
    print(f"file write: shuru {f['write'] / MIB:.1f} MiB/s; file read: shuru "
          f"{f['read'] / MIB:.1f} MiB/s; floor (host cat) {cat_rate / MIB:.0f} MiB/s")
    print(f"ratios: exec rtt {f['rtt'] / floor_rtt:.2f}x of floor (target <= 1.3); "
          f"stdout {f['stdout'] / cat_rate:.3f}, write {f['write'] / cat_rate:.3f}, "
          f"read {f['read'] / cat_rate:.3f} of floor (target >= 0.5)")


if __name__ == "__main__":
    main()
