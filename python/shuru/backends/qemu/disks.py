"""QEMU's disk layers: qcow2 overlays, made and changed with `qemu-img` (the only place in
shuru that runs it).

A sandbox writes to its own qcow2 overlay over a read-only base (the image's raw rootfs, or a
checkpoint's qcow2 disk); a checkpoint keeps that overlay, so checkpoints form chains
(base ← A ← B) that `flatten` collapses onto the image when they grow deep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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


def _backing_chain(disk: Path) -> list[dict]:
    """`disk` and the files below it, nearest first ({"filename", "format", ...} each)."""
    try:
        chain = json.loads(_qemu_img("info", "--backing-chain", "--output=json", "-U",
                                     str(disk)))
    except ValueError as e:
        raise CheckpointError(f"qemu-img info {disk} gave no JSON: {e}") from None
    return chain if isinstance(chain, list) else [chain]


def _stands_on_overlay_of(layer: Path, base: Path, base_format: str) -> bool:
    """Whether `layer` stands on a qcow2 overlay that stands directly on `base`."""
    chain = _backing_chain(layer)
    return (len(chain) >= 3 and chain[1].get("format") == "qcow2"
            and chain[2].get("format") == base_format
            and Path(chain[2].get("filename", "")).resolve() == Path(base).resolve())


def _copy(src: str, dest: Path) -> None:
    """A copy of a (small, sparse) qcow2 file that the copy's owner may write."""
    proc = subprocess.run(["cp", "--reflink=auto", "--sparse=always", src, str(dest)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"cannot copy {src}: {proc.stderr.strip()}")
    os.chmod(dest, 0o644)


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
        if rebase_onto is not None and _stands_on_overlay_of(layer, *rebase_onto):
            # A restored clone's layer over the saved state's small overlay, over the layer
            # the checkpoint must stand on: copy that overlay (a few MiB) and commit the
            # layer into the copy. A safe rebase would compare the whole virtual disk of
            # the old chain with the new base instead: seconds, for the same result.
            tmp = dest.with_name(f".{dest.name}.commit")
            try:
                _copy(_backing_chain(layer)[1]["filename"], tmp)
                _qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(tmp), "-F", "qcow2",
                          str(layer))
                _qemu_img("commit", "-q", "-d", "-f", "qcow2", str(layer))
                # The same base, named as the checkpoint records it (metadata only).
                _qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(rebase_onto[0]),
                          "-F", rebase_onto[1], str(tmp))
                os.replace(tmp, dest)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            with contextlib.suppress(OSError):
                layer.unlink()
            return
        shutil.move(str(layer), dest)
        if rebase_onto is not None:
            # Safe rebase: what the transient base held that the new one lacks is copied in.
            _qemu_img("rebase", "-f", "qcow2", "-b", str(rebase_onto[0]), "-F", rebase_onto[1],
                      str(dest))

    def flatten(self, disk: Path, image_rootfs: Path) -> None:
        _qemu_img("rebase", "-f", "qcow2", "-b", str(image_rootfs), "-F", "raw", str(disk))
