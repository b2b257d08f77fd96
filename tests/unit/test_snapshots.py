"""Saved machine states without a VM: identity and key, staleness, publishing, pruning."""

import json
import os
from pathlib import Path

import pytest

from shuru.launch import states
from shuru.backends.base import MachineSpec
from shuru.backends.qemu.machine import RamFile, RunPaths, build_argv
from shuru.backends.qemu.accel import Accel

MACHINE = {"qemu": "QEMU emulator version 7.2.22", "accel": "tcg", "cpu": "max",
           "accel_arg": "tcg,thread=single", "machine": "microvm"}


def layer(tmp_path: Path, kind="image", name="abc", digest="abc") -> states.Layer:
    (tmp_path / name).mkdir(exist_ok=True)
    return states.Layer(kind, name, tmp_path / name, digest)


def ident(lay, **changes):
    options = dict(cpus=2, memory=1024, disk_size=4096, verbose_console=False, machine=MACHINE)
    options.update(changes)
    return states.identity(lay, **options)


def test_every_machine_option_and_the_qemu_change_the_key(tmp_path):
    lay = layer(tmp_path)
    base = states.key(ident(lay))
    variants = [ident(lay, cpus=1), ident(lay, memory=2048), ident(lay, disk_size=8192),
                ident(lay, verbose_console=True), ident(lay, machine={**MACHINE, "qemu": "8.0"}),
                ident(lay, machine={**MACHINE, "accel": "kvm"}),
                ident(layer(tmp_path, digest="other"))]
    keys = {states.key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)
    assert states.key(ident(lay)) == base  # stable


def _work(lay, sizes=(10, 20, 30)):
    work = states.new_workdir(lay)
    for name, size in zip(states.FILES, sizes):
        (work / name).write_bytes(b"x" * size)
    return work


def test_publish_then_find_and_what_makes_a_state_stale(tmp_path):
    lay = layer(tmp_path)
    idt = ident(lay)
    assert states.find(lay, idt) is None
    st = states.publish(_work(lay), lay, idt, cmdline="console=ttyS0", guest={})
    assert states.find(lay, idt).path == st.path == lay.states_dir / states.key(idt)
    assert st.cmdline == "console=ttyS0" and st.disk.stat().st_mode & 0o222 == 0

    manifest = json.loads((st.path / "manifest.json").read_text())
    manifest["identity"]["qemu"] = "QEMU 0.1"
    (st.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(states.StaleStateError, match="qemu.*QEMU 0.1"):
        states.find(lay, idt)

    st = states.publish(_work(lay), lay, idt, cmdline="c", guest={})
    (st.path / "state.bin").write_bytes(b"short")
    with pytest.raises(states.StaleStateError, match="state.bin has 5 bytes"):
        states.find(lay, idt)
    st.ram.unlink()
    with pytest.raises(states.StaleStateError, match="ram is missing"):
        states.find(lay, idt)
    (st.path / "manifest.json").write_text("{not json")
    with pytest.raises(states.StaleStateError, match="unreadable"):
        states.find(lay, idt)


def test_problem_names_the_format_and_incomplete_manifests():
    idt = {"format": 1, "cpus": 2}
    assert "format" in states.problem({"format": 0}, idt, {})
    assert "identity" in states.problem({"format": 1}, idt, {})
    assert "incomplete" in states.problem({"format": 1, "identity": idt}, idt, {})


def test_publishing_without_the_files_is_refused(tmp_path):
    lay = layer(tmp_path)
    work = states.new_workdir(lay)
    (work / "disk.qcow2").write_bytes(b"x")
    with pytest.raises(states.StaleStateError, match="ram, state.bin"):
        states.publish(work, lay, ident(lay), cmdline="c", guest={})


def test_prune_drops_other_qemus_and_the_least_recently_used(tmp_path):
    lay = layer(tmp_path)
    old_qemu = ident(lay, machine={**MACHINE, "qemu": "old"})
    states.publish(_work(lay), lay, old_qemu, cmdline="c", guest={})
    made = []
    for memory in range(512, 512 + 64 * (states.KEEP_PER_LAYER + 1), 64):
        idt = ident(lay, memory=memory)
        made.append(states.publish(_work(lay), lay, idt, cmdline="c", guest={}))
        os.utime(made[-1].path, (memory, memory))  # older sizes were used longer ago
    left = {st.path for st in states.list_layer(lay)}
    assert states.find(lay, old_qemu) is None  # another QEMU's state can never load
    assert made[0].path not in left and len(left) == states.KEEP_PER_LAYER
    assert not [p for p in lay.states_dir.iterdir() if p.name.startswith(".new-")]


def test_template_and_clone_command_lines():
    spec = MachineSpec(kernel=Path("/k"), initrd=None, rootfs=Path("/r"), cpus=1,
                       memory=768, disk_size=1024)
    paths = RunPaths.inside(Path("/run/x"), Path("/state/disk.qcow2"))
    tcg = Accel("tcg", "max", "test")
    template = build_argv("qemu", spec, tcg, paths, "C", ram=RamFile(Path("/s/ram"), True))
    clone = build_argv("qemu", spec, tcg, paths, "C", ram=RamFile(Path("/s/ram"), False),
                       incoming=True)
    obj = lambda argv: argv[argv.index("-object") + 1]
    assert obj(template) == "memory-backend-file,id=ram,size=768M,mem-path=/s/ram,share=on"
    assert obj(clone).endswith("share=off")
    assert "microvm,memory-backend=ram" in template and "-incoming" not in template
    assert clone[clone.index("-incoming") + 1] == "defer"
    assert any("file=/state/disk.qcow2" in a for a in template)


def test_work_left_by_a_killed_save_is_swept_when_old(tmp_path):
    lay = layer(tmp_path)
    lay.states_dir.mkdir()
    for name in (".new-old", ".del-old", ".new-young"):
        (lay.states_dir / name).mkdir()
    for name in (".new-old", ".del-old"):
        os.utime(lay.states_dir / name, (0, 0))
    work = states.new_workdir(lay)
    assert {p.name for p in lay.states_dir.iterdir()} == {".new-young", work.name}


def test_a_new_current_image_drops_the_states_of_the_others(tmp_path):
    images = tmp_path / "images"
    for name in ("old", "new"):
        lay = states.Layer("image", name, images / name, name)
        lay.path.mkdir(parents=True)
        states.publish(_work(lay), lay, ident(lay), cmdline="c", guest={})
    (images / "current").symlink_to("new")
    states.drop_other_images(images, keep="new")
    assert not (images / "old" / "states").exists() and (images / "old").is_dir()
    assert len(list((images / "new" / "states").iterdir())) == 1
