"""The launch step through a real backend (the Swift helper's process driver: the guest agent
as a host process): a step that fails, or a start cancelled, after the machine is up leaves
nothing behind: the helper is gone, its run dir removed, the channel closed, the forwarded
host port free again; and a started sandbox holds the plan it booted."""

import asyncio
import os
import socket

import pytest

from shuru import AsyncSandbox
from shuru import mounts
from shuru.mounts import MountError

from .test_helper import alive, boot_files, helper_binary, helper_env  # noqa: F401 (fixtures)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as again:
        try:
            again.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def seen(monkeypatch):
    """The channel and helper pid of the machine the launch brought up, seen at the mount
    step, which then does what the test says."""
    state = {"channel": None, "pid": None, "do": None}

    async def mount(channel, spec):
        state["channel"] = channel
        state["pid"] = next(iter(helper_pids()), None)
        return await state["do"]()

    monkeypatch.setattr(mounts, "mount", mount)
    return state


def helper_pids() -> list[int]:
    """Pids of the helpers running now as children of this process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and argv and argv[0].endswith(b"shuru-helper"):
            out.append(int(entry))
    return out


def options(tmp_path, boot_files, port):  # noqa: F811 (the fixture's value)
    (tmp_path / "src").mkdir(exist_ok=True)
    return dict(boot_files, ports=[f"{port}:8000"], mounts={str(tmp_path / "src"): "/app"})


def nothing_left(helper_env, seen, port):  # noqa: F811
    assert seen["channel"] is not None and not seen["channel"].is_open
    assert seen["pid"] is not None and not alive(seen["pid"])
    assert not helper_env.exists() or not any(helper_env.iterdir()), list(helper_env.iterdir())
    assert port_is_free(port)


async def test_a_step_failing_after_boot_stops_the_machine_and_frees_the_port(
        helper_env, boot_files, seen, tmp_path):  # noqa: F811
    async def fail():
        raise MountError("stand-in for a mount the guest refused")

    seen["do"] = fail
    port = free_port()
    with pytest.raises(MountError, match="stand-in"):
        await AsyncSandbox.start(**options(tmp_path, boot_files, port))
    nothing_left(helper_env, seen, port)


async def test_a_start_cancelled_after_boot_leaves_nothing_running(
        helper_env, boot_files, seen, tmp_path):  # noqa: F811
    reached = asyncio.Event()

    async def hang():
        reached.set()
        await asyncio.Event().wait()

    seen["do"] = hang
    port = free_port()
    start = asyncio.create_task(AsyncSandbox.start(**options(tmp_path, boot_files, port)))
    await asyncio.wait_for(reached.wait(), 60)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    nothing_left(helper_env, seen, port)


async def test_a_started_sandbox_holds_the_plan_it_booted(helper_env, boot_files):  # noqa: F811
    sb = await AsyncSandbox.start(**boot_files)
    try:
        plan = sb._plan
        assert str(plan.spec.kernel) == boot_files["kernel"]
        assert str(plan.spec.rootfs) == boot_files["rootfs"]
        assert plan.image is None and plan.parent is None and plan.layer is None
    finally:
        await sb.stop()
