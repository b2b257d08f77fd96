"""Starting from a checkpoint never blocks the event loop: loading it (which may hash its
disk) runs in a thread. Preparing a checkpoint's machine state (after `checkpoint()`) is a
cache: when it fails, a warning, never an error."""

import threading

import pytest

from shuru import AsyncSandbox, ShuruWarning
from shuru.launch import faststart, states
from shuru import checkpoints as ck
from shuru.backends.base import Capabilities, MachineSpec
from shuru.errors import BootError


async def test_a_checkpoint_is_loaded_off_the_event_loop(monkeypatch):
    seen = []

    def load(name, *args, **kwargs):
        seen.append(threading.current_thread())
        raise ck.CheckpointError(f"stop here ({name})")

    monkeypatch.setattr(ck, "load", load)
    with pytest.raises(ck.CheckpointError, match="stop here"):
        await AsyncSandbox.start(from_="ready")
    assert seen and seen[0] is not threading.main_thread()


class _FailingBackend:
    """A backend whose template VM never boots."""

    capabilities = Capabilities(backend="fake", checkpoint=True,
                                fast_start=True, pause=True)

    async def probe(self):
        return self.capabilities

    def machine_identity(self, spec):
        return {"qemu": "fake"}

    async def start_template(self, spec, workdir, *, on_console=None):
        raise BootError("the VM stopped before its agent came up", console_tail="\x1b]52;c;x\x07")


async def test_preparing_a_state_that_cannot_be_saved_is_a_warning_not_an_error(tmp_path):
    layer = states.Layer("checkpoint", "ready", tmp_path, "0" * 64)
    spec = MachineSpec(kernel=tmp_path / "k", initrd=None, rootfs=tmp_path / "d", cpus=1,
                       memory=256, disk_size=64)
    with pytest.warns(ShuruWarning, match="could not save a machine state for checkpoint"):
        assert await faststart.prepare(_FailingBackend(), spec, layer) is None
    assert [p.name for p in layer.states_dir.iterdir() if not p.name.endswith(".lock")] == []
