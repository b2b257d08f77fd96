"""The backend contract's capability rule: what a backend lacks is refused with an
UnsupportedError naming the capability and the backend, before anything is changed. A
checkpoint on a backend that cannot keep disks must not stop the VM first; a pause on one
that cannot pause leaves the sandbox running. (That every backend implements every declared
operation is tests/backend_contract.py, run on the helper in tests/contract/test_helper.py
and on QEMU in tests/integration/test_backend_contract.py.)"""

from __future__ import annotations

import asyncio

import pytest

from shuru import AsyncSandbox, State, UnsupportedError
from shuru.backends.base import CHECKPOINT, FAST_START, PAUSE, Capabilities
from shuru.launch.plan import Plan

NOTHING = Capabilities(backend="bare (test)", checkpoint=False,
                       fast_start=False, pause=False)


class Recorder:
    """A machine and channel pair that records what was done to them."""

    def __init__(self):
        self.calls: list[str] = []
        self.capabilities = NOTHING
        self.exited = asyncio.Future()
        self.accel, self.pid, self.layer, self.restored_from = "none", None, None, None

    async def shutdown(self) -> None:  # the channel's: the guest syncs and powers off
        self.calls.append("shutdown")

    async def close(self) -> None:
        self.calls.append("close")

    async def pause(self) -> None:
        self.calls.append("pause")

    async def resume(self) -> None:
        self.calls.append("resume")

    async def stop(self) -> None:
        self.calls.append("stop")

    def console_tail(self, lines: int = 40) -> str:
        return ""


@pytest.fixture
async def running(tmp_path, monkeypatch):
    monkeypatch.setenv("SHURU_HOME", str(tmp_path))
    sb = AsyncSandbox()
    rec = Recorder()
    sb._machine = sb._channel = rec
    # Started from an image: checkpointable as far as the sandbox goes.
    sb._plan = Plan(spec=None, image=object(), parent=None, layer=None)
    sb.state = State.RUNNING
    return sb, rec


async def test_checkpoint_without_the_capability_is_refused_before_the_vm_stops(running):
    sb, rec = running
    with pytest.raises(UnsupportedError, match="bare \\(test\\) backend cannot keep") as err:
        await sb.checkpoint("kept")
    assert (err.value.capability, err.value.backend) == (CHECKPOINT, "bare (test)")
    assert rec.calls == [] and sb.state == State.RUNNING  # nothing was shut down or stopped


async def test_pause_without_the_capability_is_refused_and_the_sandbox_runs_on(running):
    sb, rec = running
    for call in (sb.pause, sb.resume):
        with pytest.raises(UnsupportedError, match="pause") as err:
            await call()
        assert err.value.capability == PAUSE
    assert rec.calls == [] and sb.state == State.RUNNING


def test_require_names_the_capability_and_backend():
    with pytest.raises(UnsupportedError, match="'fast_start'") as err:
        NOTHING.require(FAST_START)
    assert "bare (test)" in str(err.value)
    Capabilities(backend="x", checkpoint=True, fast_start=True,
                 pause=True).require(FAST_START)  # has it: no error
