"""Fast start on real VMs: clones restored from one saved state are unique (RNG, clock) and
isolated, run side by side, and a stale or broken state falls back to a cold boot and is
saved again. The shared exec/files/spawn checks run on restored sandboxes too, in
test_sdk_async.py. Each test uses its own memory size, so it owns the states it looks at."""

import asyncio
import json
import os
import time
import uuid

import pytest

from shuru import AsyncSandbox, ShuruWarning
from shuru.launch import states
from shuru import checkpoints as ck
from shuru.image.store import current_image

from .conftest import shuru

pytestmark = [pytest.mark.usefixtures("image")]


def image_states(memory: int, cpus: int = 2) -> list[states.SavedState]:
    layer = states.Layer.of_image(current_image())
    return [st for st in states.list_layer(layer)
            if st.manifest["identity"]["memory"] == memory
            and st.manifest["identity"]["cpus"] == cpus]


def forget(*memories: int) -> None:
    """Start from no saved state for these sizes (the data dir outlives test runs)."""
    for st in states.list_layer(states.Layer.of_image(current_image())):
        if st.manifest["identity"]["memory"] in memories:
            states.discard(st.path)


async def stop_all(*sandboxes):
    await asyncio.gather(*(sb.stop() for sb in sandboxes if sb is not None))


PROBE = ("cat /proc/sys/kernel/random/uuid; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n';"
         " echo; date +%s.%N")


async def probe(sb):
    before = time.time()
    out = (await sb.exec(PROBE)).stdout.split()
    after = time.time()
    return out[0], out[1], float(out[2]), before, after


async def test_concurrent_clones_are_unique_isolated_and_on_the_hosts_clock():
    forget(640)
    first = await AsyncSandbox.start(memory=640)  # saves the state if there is none yet
    clones = []
    try:
        clones = list(await asyncio.gather(*(AsyncSandbox.start(memory=640) for _ in range(3))))
        everyone = [first, *clones]
        assert all(sb.restored for sb in everyone)
        assert len(image_states(640)) == 1  # all four came from one saved state
        results = await asyncio.gather(*(probe(sb) for sb in everyone))
        uuids = {r[0] for r in results}
        randoms = {r[1] for r in results}
        assert len(uuids) == 4 and len(randoms) == 4
        for _, _, guest_time, before, after in results:
            assert before - 1 <= guest_time <= after + 1
        # each clone writes to a disk of its own
        await clones[0].exec("echo mine > /root/only-here")
        checks = await asyncio.gather(*(sb.exec("cat /root/only-here") for sb in everyone))
        assert [r.exit_code == 0 for r in checks] == [False, True, False, False]
    finally:
        await stop_all(first, *clones)


async def starts_restored_after_warning(match: str, **options) -> None:
    with pytest.warns(ShuruWarning, match=match):
        sb = await AsyncSandbox.start(**options)
    try:
        assert sb.restored and (await sb.exec("echo ok")).stdout == "ok\n"
    finally:
        await sb.stop()


async def test_a_stale_or_broken_state_falls_back_and_is_saved_again():
    forget(704)
    sb = await AsyncSandbox.start(memory=704)
    await sb.stop()
    (state,) = image_states(704)
    real_qemu = state.manifest["identity"]["qemu"]

    manifest = dict(state.manifest, identity={**state.manifest["identity"], "qemu": "QEMU 0.1"})
    (state.path / "manifest.json").write_text(json.dumps(manifest))
    await starts_restored_after_warning("stale.*qemu", memory=704)
    (state,) = image_states(704)
    assert state.manifest["identity"]["qemu"] == real_qemu

    # Same size, garbage inside: QEMU cannot load it; the start still succeeds.
    size = state.state.stat().st_size
    state.state.write_bytes(os.urandom(size))
    await starts_restored_after_warning("failed to load", memory=704)
    (state,) = image_states(704)
    assert state.state.read_bytes()[:4] == b"QEVM"  # a real migration stream again

    state.ram.unlink()
    with pytest.warns(ShuruWarning, match="ram is missing"):
        sb = await AsyncSandbox.start(memory=704)
    await sb.stop()
    assert image_states(704)[0].ram.is_file()


async def test_machine_options_key_the_state_and_cold_boots_save_none():
    forget(576, 608)
    a = await AsyncSandbox.start(memory=576, cpus=1)
    b = await AsyncSandbox.start(memory=576, cpus=2)
    c = await AsyncSandbox.start(memory=608, cold=True)
    try:
        assert a.restored and b.restored and not c.restored
        assert (await a.exec("nproc")).stdout.strip() == "1"
        assert (await b.exec("nproc")).stdout.strip() == "2"
        (sa,), (sb_,) = image_states(576, cpus=1), image_states(576, cpus=2)
        assert sa.path != sb_.path
        assert image_states(608) == []
    finally:
        await stop_all(a, b, c)


async def test_checkpoints_get_states_and_a_restored_sandbox_checkpoints_cleanly():
    name = f"fs-{uuid.uuid4().hex[:8]}"
    try:
        sb = await AsyncSandbox.start()
        assert sb.restored
        await sb.exec("mkdir -p /opt/tool && echo v1 > /opt/tool/VERSION")
        cp = await sb.checkpoint(name)
        # The checkpoint stands on the image itself, not on the transient saved-state disk.
        info = json.loads(os.popen(f"qemu-img info --output=json {cp.disk}").read())
        assert info["backing-filename"] == str(current_image().rootfs)

        forks = list(await asyncio.gather(*(AsyncSandbox.start(from_=name) for _ in range(2))))
        try:
            assert all(f.restored for f in forks)
            outs = await asyncio.gather(*(f.exec("cat /opt/tool/VERSION") for f in forks))
            assert [o.stdout for o in outs] == ["v1\n", "v1\n"]
        finally:
            await stop_all(*forks)
        saved = states.list_layer(states.Layer.of_checkpoint(ck.load(name)))
        assert len(saved) == 1 and saved[0].path.parent == cp.path / "states"
        ck.load(name)  # still intact: states never change the checkpoint's disk
    finally:
        if (ck.checkpoints_dir() / name).exists():
            ck.delete(name)


def test_cli_cold_flag_and_image_list(runtime_dir):
    forget(544)
    r = shuru("run", "--cold", "--memory", "544", "--", "cat", "/proc/meminfo")
    assert r.returncode == 0, r.stderr
    assert image_states(544) == []
    r = shuru("run", "--memory", "544", "--", "true")
    assert r.returncode == 0 and b"saving one" in r.stderr
    r = shuru("image", "list", "--json")
    rows = json.loads(r.stdout)["states"]
    mine = [row for row in rows if row["memory"] == 544 and row["layer"] == "image"
            and row["name"] == current_image().id]
    assert len(mine) == 1 and mine[0]["status"] == "ok" and mine[0]["size"] > 0
    assert list(runtime_dir.iterdir()) == []  # nothing left behind by either run
