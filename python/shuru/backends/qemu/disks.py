"""QEMU's disk layers: qcow2 overlays, made and changed with `qemu-img` (the only place in
shuru that runs it).

A sandbox writes to its own qcow2 overlay over a read-only base (the image's raw rootfs, or a
checkpoint's qcow2 disk); a checkpoint keeps that overlay, so checkpoints form chains
(base ← A ← B) that `flatten` collapses onto the image when they grow deep.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from ...errors import BootError, CheckpointError, HostError, UnsupportedError

FORMAT = "qcow2"
BASE_FORMATS = ("raw", "qcow2")  # an image's rootfs, a checkpoint's disk


def find_qemu_img() -> str:
    path = shutil.which("qemu-img")
    if not path:
        raise HostError("qemu-img is not installed", hint="install it with: apt-get install qemu-utils")
    return path


async def create_overlay(base: Path, overlay: Path, size_mb: int, *, base_format: str = "raw",
                         base_size_mb: int = 0) -> None:
    base_size = max(base.stat().st_size if base_format == "raw" else 0,
                    base_size_mb * 1024 * 1024)
    if size_mb * 1024 * 1024 < base_size:
        raise BootError(f"disk_size {size_mb} MiB is smaller than the disk it starts from "
                        f"({-(-base_size // (1024 * 1024))} MiB)")
    proc = await asyncio.create_subprocess_exec(
        find_qemu_img(), "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base),
        str(overlay), f"{size_mb}M",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise HostError(f"qemu-img could not create {overlay}: {err.decode(errors='replace').strip()}")


def _qemu_img(*args: str) -> str:
    try:
        proc = subprocess.run([find_qemu_img(), *args], capture_output=True, text=True)
    except OSError as e:
        raise CheckpointError(f"qemu-img {args[0]} could not run: {e.strerror}") from None
    if proc.returncode != 0:
        raise CheckpointError(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


class Qcow2Disks:
    """`Disks` for QEMU: qcow2 overlays that read through to their base."""

    format = FORMAT
    chained = True

    def check_base(self, base: Path, base_format: str) -> None:
        if base_format not in BASE_FORMATS:
            raise UnsupportedError(
                f"{base} is a {base_format} disk; the qemu backend starts from "
                f"{' or '.join(BASE_FORMATS)} disks", capability=f"disk format {base_format}",
                backend="qemu")

    async def create_layer(self, base: Path, base_format: str, dest: Path, *, size_mb: int,
                           base_size_mb: int = 0) -> None:
        self.check_base(base, base_format)
        await create_overlay(base, dest, size_mb, base_format=base_format,
                             base_size_mb=base_size_mb)

    def keep(self, layer: Path, dest: Path, *, rebase_onto: tuple[Path, str] | None) -> None:
        shutil.move(str(layer), dest)
        if rebase_onto is not None:
            # Safe rebase: what the transient base held that the new one lacks is copied in.
            _qemu_img("rebase", "-f", "qcow2", "-b", str(rebase_onto[0]), "-F", rebase_onto[1],
                      str(dest))

    def flatten(self, disk: Path, image_rootfs: Path) -> None:
        _qemu_img("rebase", "-f", "qcow2", "-b", str(image_rootfs), "-F", "raw", str(disk))
