"""Host folders through a mount on a real VM, against copying the same tree in.

* start: a restored start with one read-only mount, against one without (what a mount adds
  to fast start: one stream, a FUSE mount, an overlay).
* tree: 10,000 small files (100 directories of 100) read through the mount (`cat` of every
  file: a lookup, open, read and release each, over the agent channel), against
  `files.upload` of the same tree and the same `cat` of the uploaded copy on the guest's disk.
* metadata: `find` and `find -exec stat` (a stat of each entry) over the mounted tree.
* one 100 MiB file read through the mount (`cat > /dev/null`, then `sha256sum` checked against
  the host's), against `files.upload` of it.

Run: .venv/bin/python bench/mounts.py
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from pathlib import Path

from shuru import AsyncSandbox

DIRS, PER_DIR = 100, 100
BIG_MIB = 100


def make_tree(root: Path) -> None:
    for d in range(DIRS):
        (root / "tree" / f"d{d}").mkdir(parents=True)
        for i in range(PER_DIR):
            (root / "tree" / f"d{d}" / f"f{i}.txt").write_text(f"file {d}/{i}\n" * 8)
    with open(root / "big.bin", "wb") as f:
        for _ in range(BIG_MIB):
            f.write(os.urandom(1 << 20))


async def timed(sb, command: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = await sb.exec(command, timeout=3600)
    assert r.exit_code == 0, (command, r.stderr)
    return time.perf_counter() - t, r.stdout


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root)
        files = DIRS * PER_DIR
        big_digest = hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()

        t = time.perf_counter()
        async with await AsyncSandbox.start():
            plain_start = time.perf_counter() - t
        t = time.perf_counter()
        async with await AsyncSandbox.start(mounts={str(root): "/host"}) as sb:
            mount_start = time.perf_counter() - t
            print(f"start (restored): {plain_start:.2f} s plain, {mount_start:.2f} s with a "
                  f"mount (+{mount_start - plain_start:.2f} s)")

            cat_s, _ = await timed(sb, "find /host/tree -type f -exec cat {} + > /dev/null")
            find_s, out = await timed(sb, "find /host/tree | wc -l")
            assert int(out.split()[0]) == files + DIRS + 1
            stat_s, _ = await timed(sb, "find /host/tree -exec stat {} + > /dev/null")

            t = time.perf_counter()
            await sb.files.upload(root / "tree", "/copy/tree")
            upload_s = time.perf_counter() - t
            disk_cat_s, _ = await timed(sb, "find /copy/tree -type f -exec cat {} + >/dev/null")

            big_s, _ = await timed(sb, "cat /host/big.bin > /dev/null")
            _, out = await timed(sb, "sha256sum /host/big.bin")
            assert out.split()[0] == big_digest
            t = time.perf_counter()
            await sb.files.upload(root / "big.bin", "/copy/big.bin")
            big_up_s = time.perf_counter() - t

        print(f"tree of {files} small files: read through the mount {cat_s:.1f} s "
              f"({files / cat_s:.0f} files/s); files.upload {upload_s:.1f} s "
              f"({files / upload_s:.0f} files/s), then reading the copy {disk_cat_s:.1f} s; "
              f"mount/upload {cat_s / upload_s:.2f}x")
        print(f"metadata over the mount: find {find_s:.1f} s ({(files + DIRS) / find_s:.0f} "
              f"entries/s), find -exec stat {stat_s:.1f} s")
        print(f"{BIG_MIB} MiB file: read through the mount {big_s:.1f} s "
              f"({BIG_MIB / big_s:.1f} MiB/s); files.upload {big_up_s:.1f} s "
              f"({BIG_MIB / big_up_s:.1f} MiB/s)")


if __name__ == "__main__":
    asyncio.run(main())
