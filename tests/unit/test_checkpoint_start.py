"""Starting from a checkpoint never blocks the event loop: loading it (which may hash its
disk) runs in a thread."""

import threading

import pytest

from shuru import AsyncSandbox
from shuru import checkpoints as ck


async def test_a_checkpoint_is_loaded_off_the_event_loop(monkeypatch):
    seen = []

    def load(name, *args, **kwargs):
        seen.append(threading.current_thread())
        raise ck.CheckpointError(f"stop here ({name})")

    monkeypatch.setattr(ck, "load", load)
    with pytest.raises(ck.CheckpointError, match="stop here"):
        await AsyncSandbox.start(from_="ready")
    assert seen and seen[0] is not threading.main_thread()
