"""Trees through `sandbox.files` on a real VM, and the floor the guest sets by itself.

* listing: `files.walk` of a 20,000-entry guest tree (entries/s), against `find` of the same
  tree inside the guest (its own listing rate, with nothing crossing the channel);
  `files.list` of one 10,000-entry directory.
* copying: `files.upload` and `files.download` of a 2,000-file tree (files/s), against
  `tar` of that tree inside the guest to /dev/null.

Run: .venv/bin/python bench/files.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from shuru import AsyncSandbox

DIRS, PER_DIR = 20, 999  # 20,000 entries with the directories
FLAT = 10_000
COPY_DIRS, COPY_PER_DIR = 20, 100


async def main() -> None:
    async with await AsyncSandbox.start(memory=1024) as sb:
        await sb.exec(f"mkdir -p /bench/tree && cd /bench/tree && for d in $(seq 1 {DIRS}); "
                      f"do mkdir d$d && (cd d$d && seq 1 {PER_DIR} | xargs touch); done; "
                      f"mkdir /bench/flat && cd /bench/flat && seq 1 {FLAT} | xargs touch",
                      timeout=600)
        t = time.perf_counter()
        r = await sb.exec("find /bench/tree -mindepth 1 | wc -l")
        find_s = time.perf_counter() - t
        n = int(r.stdout.split()[0])

        t = time.perf_counter()
        walked = 0
        async for _ in sb.files.walk("/bench/tree"):
            walked += 1
        walk_s = time.perf_counter() - t
        assert walked == n, (walked, n)

        t = time.perf_counter()
        listed = len(await sb.files.list("/bench/flat"))
        list_s = time.perf_counter() - t

        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "src"
            for d in range(COPY_DIRS):
                (src / f"d{d}").mkdir(parents=True)
                for i in range(COPY_PER_DIR):
                    (src / f"d{d}" / f"f{i}").write_text(f"{d}/{i}\n" * 20)
            files = COPY_DIRS * COPY_PER_DIR
            t = time.perf_counter()
            await sb.files.upload(src, "/bench/copy")
            up_s = time.perf_counter() - t
            t = time.perf_counter()
            await sb.files.download("/bench/copy", Path(tmp) / "back")
            down_s = time.perf_counter() - t
            t = time.perf_counter()
            await sb.exec("tar -cf - /bench/copy > /dev/null")
            tar_s = time.perf_counter() - t

    rows = [(f"walk of {n} entries", walk_s, n, "entries"),
            ("find in the guest (exec)", find_s, n, "entries"),
            (f"list of {listed} entries", list_s, listed, "entries"),
            (f"upload of {files} files", up_s, files, "files"),
            (f"download of {files} files", down_s, files, "files"),
            ("tar in the guest (exec)", tar_s, files, "files")]
    for label, seconds, count, unit in rows:
        print(f"{label:28} {seconds:6.2f} s  {count / seconds:8.0f} {unit}/s")
    print(f"walk / find: {find_s / walk_s:.2f}x the guest's own rate")


if __name__ == "__main__":
    asyncio.run(main())
