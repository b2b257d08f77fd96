"""Shared fixtures. Contract tests run the guest agent as a host subprocess over a
socketpair; integration tests boot real VMs (see tests/integration/conftest.py).

The tests have a data dir of their own: `$SHURU_HOME` when it is set, else `.test-home/` in
the checkout (git ignores it; `scripts/test` picks the same default, so `scripts/setup`
builds the guest image where the tests look, and it stays there for the next run). The
user's data dir is never written: a run that changes anything under it fails."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_HOME = ROOT / ".test-home"
# shuru's data dir when SHURU_HOME is not set (as `shuru.image.store.shuru_home` finds it).
USER_HOME = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share") / "shuru"
# Set before shuru is imported, and inherited by every `shuru` and agent subprocess.
if not os.environ.get("SHURU_HOME"):
    os.environ["SHURU_HOME"] = str(TEST_HOME)

from shuru.channel import Channel  # noqa: E402


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its mtime and size (directories too: an entry made or
    removed changes its directory's mtime). Links are not followed."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            out[os.path.relpath(path, root)] = (st.st_mtime_ns, st.st_size)
    return out


_USER_TREE = pytest.StashKey[dict]()


def pytest_configure(config):
    if Path(os.environ["SHURU_HOME"]).resolve() == USER_HOME.resolve():
        raise pytest.UsageError(
            f"SHURU_HOME is the user's data dir ({USER_HOME}): the tests must not write there; "
            f"unset it (the tests then use {TEST_HOME}) or point it elsewhere")
    config.stash[_USER_TREE] = _tree(USER_HOME)


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_USER_TREE, None)
    if before is None:
        return
    after = _tree(USER_HOME)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more"
                                           if len(changed) > 10 else "")
        sys.stderr.write(f"\nFAILED: the tests changed the user's data dir {USER_HOME}: {shown}\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class AgentProcess:
    """The guest agent running on the host, connected to a Channel by a socketpair."""

    def __init__(self):
        host_sock, agent_sock = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shuru_guest", "--fd", str(agent_sock.fileno())],
            pass_fds=[agent_sock.fileno()],
        )
        agent_sock.close()
        self.sock = host_sock
        self.channel: Channel | None = None

    async def connect(self) -> Channel:
        reader, writer = await asyncio.open_connection(sock=self.sock)
        self.channel = Channel(reader, writer)
        await self.channel.handshake()
        return self.channel

    async def close(self) -> None:
        """Close the channel and let the agent end its processes (as it does when a host
        goes away), then make sure the agent itself is gone."""
        if self.channel:
            await self.channel.close()
        self.sock.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def agent():
    a = AgentProcess()
    await a.connect()
    yield a
    await a.close()
