"""Every operation of the backend contract (`shuru.backends.base`), called on a real backend:
`tests/contract/test_helper.py` runs it through the Swift helper's process driver,
`tests/integration/test_backend_contract.py` on QEMU. Not a signature check: each operation
is called and its effect looked at. An operation a backend lacks (by its own `probe`) must
be refused with UnsupportedError before it changes anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import pytest

from shuru.backends.base import FAST_START, PAUSE, Backend, Capabilities, MachineSpec
from shuru.errors import UnsupportedError
from shuru.launch import faststart
from shuru.process import run_to_completion

ACCELS = {"qemu": {"kvm", "tcg"}, "helper": {"vz", "process"}}


async def _echo(channel, text: str) -> str:
    r = await run_to_completion(channel.open_stream(), ["echo", text], stdin=None, timeout=60,
                                cwd="/", env={}, user=None)
    return r.stdout


async def exercise(backend: Backend, spec: MachineSpec, work: Path) -> Capabilities:
    """Call every declared operation of `backend`; `spec` boots its image, `work` is a
    scratch directory on the data dir's filesystem."""
    caps = await backend.probe()
    assert isinstance(caps, Capabilities)
    fmt = backend.disks.format
    assert fmt == {"qemu": "qcow2", "helper": "raw"}[backend.name]
    assert caps.checkpoint  # both backends keep disks

    # ---- start, machine facts, pause/resume, console, stop --------------------------------
    machine = await backend.start(spec)
    try:
        channel = await faststart.connect_agent(machine)
        assert machine.capabilities == caps
        assert machine.accel in ACCELS[backend.name]
        assert machine.pid and os.path.exists(f"/proc/{machine.pid}")
        assert machine.layer.is_file() and machine.backing == (spec.rootfs, spec.rootfs_format)
        assert machine.restored_from is None and machine.cmdline
        assert isinstance(machine.console_tail(5), str)
        if caps.pause:
            await machine.pause()
            late = asyncio.ensure_future(_echo(channel, "after-pause"))
            done, _ = await asyncio.wait({late}, timeout=0.5)
            assert not done  # a paused machine runs nothing
            await machine.resume()
            assert await asyncio.wait_for(late, 60) == "after-pause\n"
        else:
            with pytest.raises(UnsupportedError, match=PAUSE):
                await machine.pause()
        # The layer, kept as a checkpoint disk (after a clean shutdown, as checkpoint() does).
        await asyncio.wait_for(channel.shutdown(), 60)
        await asyncio.wait_for(asyncio.shield(machine.exited), 60)
        await machine.console_drained()
        kept = work / f"kept.{fmt}"
        backend.disks.keep(machine.layer, kept, rebase_onto=None)
        assert kept.is_file() and not machine.layer.exists()
    finally:
        await machine.stop()
    assert machine.exited.done()

    # ---- disks: a layer over the kept disk, flattening ------------------------------------
    backend.disks.check_base(kept, backend.disks.format)
    layer = work / f"layer.{fmt}"
    await backend.disks.create_layer(kept, backend.disks.format, layer,
                                     size_mb=spec.disk_size, base_size_mb=spec.disk_size)
    assert layer.is_file()
    backend.disks.flatten(layer, spec.rootfs)
    with pytest.raises(UnsupportedError, match="vmdk"):
        backend.disks.check_base(kept, "vmdk")

    # ---- fast start: template, save, restore ----------------------------------------------
    state_dir = work / "state"
    state_dir.mkdir()
    if not caps.fast_start:
        for call in (lambda: backend.start_template(spec, state_dir),
                     lambda: backend.restore(spec, state_dir, cmdline="x")):
            with pytest.raises(UnsupportedError, match=FAST_START):
                await call()
        assert list(state_dir.iterdir()) == []  # refused before anything was made
        return caps
    ident = backend.machine_identity(spec)
    assert isinstance(ident, dict) and ident
    template = await backend.start_template(spec, state_dir)
    try:
        channel = await faststart.connect_agent(template)
        await _echo(channel, "warm")
        await channel.park()
        await template.save_state(state_dir)
        await channel.close()
    finally:
        await template.stop()
    assert sorted(p.name for p in state_dir.iterdir()) >= sorted(backend.state_files)
    clone = await backend.restore(spec, state_dir, cmdline=template.cmdline)
    try:
        channel = await faststart.connect_agent(clone, resume=True)
        assert clone.restored_from == state_dir
        assert await _echo(channel, "restored") == "restored\n"
        await channel.close()
    finally:
        await clone.stop()
    return caps


def spec_for(image, *, disk_size: int = 0, **changes) -> MachineSpec:
    spec = MachineSpec(kernel=image.kernel, initrd=image.initrd, rootfs=image.rootfs, cpus=1,
                       memory=512, disk_size=disk_size or -(-image.rootfs.stat().st_size >> 20))
    return dataclasses.replace(spec, **changes)

