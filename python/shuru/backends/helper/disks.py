"""The helper's disk layers: whole raw disks. Virtualization.framework attaches raw images
only, so each sandbox gets its own copy of its base: an APFS clone (`cp -c`, clonefile) on
macOS, a reflink where the filesystem has them, else a plain copy. A layer therefore never
reads through to its base: a checkpoint keeps the sandbox's disk file as it is, and needs no
rebase or flattening.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

from ...errors import BootError, UnsupportedError

FORMAT = "raw"


async def clone_disk(base: Path, dest: Path, size_mb: int) -> None:
    """The sandbox's own raw disk, grown to `size_mb`: a copy-on-write clone where the
    filesystem can make one (APFS `cp -c`, reflink), else a plain copy."""
    base_size = base.stat().st_size
    if size_mb * 1024 * 1024 < base_size:
        raise BootError(f"disk_size {size_mb} MiB is smaller than the disk it starts from "
                        f"({-(-base_size // (1024 * 1024))} MiB)")
    for argv in (["cp", "-c", str(base), str(dest)], ["cp", "--reflink=auto", str(base), str(dest)]):
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.DEVNULL)
            if await proc.wait() == 0:
                break
    else:
        await asyncio.to_thread(shutil.copyfile, base, dest)
    os.chmod(dest, 0o644)  # a clone of a read-only checkpoint is still the sandbox's to write
    os.truncate(dest, size_mb * 1024 * 1024)


class RawDisks:
    """`Disks` for the helper: whole raw disks, cloned."""

    format = FORMAT
    chained = False

    def __init__(self, backend: str = "helper"):
        self.backend = backend

    def check_base(self, base: Path, base_format: str) -> None:
        if base_format != FORMAT:
            raise UnsupportedError(
                f"{base} is a {base_format} disk, and the {self.backend} backend starts only "
                f"from raw disks (a {base_format} checkpoint was made by another backend)",
                capability=f"disk format {base_format}", backend=self.backend,
                hint="checkpoints belong to the backend that made them: make this one again "
                     "with this backend")

    async def create_layer(self, base: Path, base_format: str, dest: Path, *, size_mb: int,
                           base_size_mb: int = 0) -> None:
        self.check_base(base, base_format)
        await clone_disk(base, dest, size_mb)

    def keep(self, layer: Path, dest: Path, *, rebase_onto: tuple[Path, str] | None) -> None:
        # The layer is whole: whatever it stood on is already in it.
        shutil.move(str(layer), dest)

    def flatten(self, disk: Path, image_rootfs: Path) -> None:
        return None  # never chained
