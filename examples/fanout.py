"""Sandbox-per-task fan-out: set up once, checkpoint, start one sandbox per task at once,
let each task change the project its own way, and collect each task's diff.

This is how several agents work on one repository side by side: every task gets the same
starting point (the project and the tools, installed once), none sees another's changes,
and what each one did comes back as a unified diff to review or apply.

    python examples/fanout.py
"""

import asyncio
import uuid

from shuru import AsyncSandbox, checkpoints

SIZE = {"cpus": 1, "memory": 1024}  # forks restore the checkpoint's saved state at this size

PROJECT = {
    "/work/project/README": "calc: a tiny calculater\n",
    "/work/project/VERSION": "1.4.2\n",
    "/work/project/calc.py": "def add(a, b):\n    return a + b\n",
}

# A tool the tasks share, installed in the checkpoint: bump the patch version.
BUMP = """#!/usr/bin/python3
import sys
path = sys.argv[1]
major, minor, patch = open(path).read().split(".")
open(path, "w").write(f"{major}.{minor}.{int(patch) + 1}\\n")
"""

# Each task is what an agent would do; here, fixed shell commands.
TASKS = {
    "fix-typo": "sed -i 's/calculater/calculator/' README",
    "add-sub": "printf 'def sub(a, b):\\n    return a - b\\n' >> calc.py && bump VERSION",
    "drop-readme": "rm README && echo 'calc: add numbers' > README.md",
}


async def prepare(name: str) -> None:
    """Install the tool, lay out the project, keep a pristine copy to diff against."""
    sb = await AsyncSandbox.start(**SIZE)
    await sb.files.write("/opt/tools/bin/bump", BUMP, mode=0o755)
    for path, text in PROJECT.items():
        await sb.files.write(path, text)
    await sb.exec("cp -a /work/project /opt/pristine")
    await sb.checkpoint(name)  # stops sb; its disk (and machine state) is the starting point


async def run_task(name: str, task: str, command: str) -> str:
    async with await AsyncSandbox.start(from_=name, **SIZE) as sb:
        done = await sb.exec(command, cwd="/work/project",
                             env={"PATH": "/opt/tools/bin:/usr/bin:/bin"})
        if not done.ok:
            raise RuntimeError(f"task {task} failed: {done.stderr}")
        # The diff is computed in the guest: only the changes come back. diff exits 1 when
        # the trees differ, which is the expected outcome here.
        diff = await sb.exec(["diff", "-ruN", "/opt/pristine", "/work/project"])
        return diff.stdout


async def main(n: int = len(TASKS)) -> dict[str, str]:
    name = f"fanout-{uuid.uuid4().hex[:8]}"
    await prepare(name)
    try:
        tasks = list(TASKS.items())[:n]
        diffs = await asyncio.gather(*(run_task(name, t, c) for t, c in tasks))
    finally:
        checkpoints.delete(name)
    results = dict(zip((t for t, _ in tasks), diffs))
    for task, diff in results.items():
        print(f"===== {task} =====\n{diff}")
    return results


if __name__ == "__main__":
    asyncio.run(main())
