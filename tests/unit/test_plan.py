"""The start-up plan without a VM: which boot files, disk, image, parent checkpoint and saved-
state layer each combination of config fields gives, the combinations refused (naming the
fields), and that loading runs only after the check and loads what the config needs."""

import dataclasses
from pathlib import Path

import pytest

from shuru import AsyncSandbox
from shuru import checkpoints as ck
from shuru.config import ConfigError, SandboxConfig
from shuru.image import store
from shuru.launch import plan as plan_mod, states
from shuru.launch.plan import CHECKPOINT, IMAGE, NOTHING, needs, plan

IMG = store.Image("img0123456789abc", Path("/data/images/img0123456789abc"), {"format": 1})
CP = ck.Checkpoint("ready", Path("/data/checkpoints/ready"),
                   {"format": 1, "image_id": IMG.id, "virtual_size_mb": 6144,
                    "disk": {"sha256": "d" * 64}})


def config(**fields) -> SandboxConfig:
    return SandboxConfig(**fields)


# ---- what a config needs ---------------------------------------------------------------


@pytest.mark.parametrize("fields, need", [
    ({}, IMAGE),
    ({"kernel": "/k"}, IMAGE),
    ({"rootfs": "/r"}, IMAGE),
    ({"initrd": "/i"}, IMAGE),
    ({"kernel": "/k", "rootfs": "/r"}, NOTHING),
    ({"kernel": "/k", "rootfs": "/r", "initrd": "/i"}, NOTHING),
    ({"from_": "ready"}, CHECKPOINT),
    ({"from_": "ready", "kernel": "/k"}, CHECKPOINT),
])
def test_what_each_config_needs_loaded(fields, need):
    assert needs(config(**fields)) == need


# ---- the guest image ---------------------------------------------------------------------


def test_the_image_alone_gives_its_files_and_its_layer():
    c = config(cpus=3, memory=512, disk_size=1024, accel="tcg", console=True)
    p = plan(c, image=IMG)
    assert p.spec.kernel == IMG.kernel and p.spec.initrd == IMG.initrd
    assert p.spec.rootfs == IMG.rootfs and p.spec.rootfs_format == "raw"
    assert p.spec.rootfs_size_mb == 0
    assert (p.spec.cpus, p.spec.memory, p.spec.disk_size) == (3, 512, 1024)
    assert p.spec.accel == "tcg" and p.spec.verbose_console is True
    assert p.image is IMG and p.parent is None and p.disk_size == 1024
    assert p.layer == states.Layer.of_image(IMG)


@pytest.mark.parametrize("field, want", [
    ("kernel", lambda s: s.kernel == Path("/custom") and s.rootfs == IMG.rootfs
     and s.initrd == IMG.initrd),
    ("rootfs", lambda s: s.rootfs == Path("/custom") and s.kernel == IMG.kernel
     and s.initrd == IMG.initrd),
    ("initrd", lambda s: s.initrd == Path("/custom") and s.kernel == IMG.kernel
     and s.rootfs == IMG.rootfs),
])
def test_one_custom_file_replaces_the_images_and_leaves_no_layer(field, want):
    p = plan(config(**{field: "/custom"}), image=IMG)
    assert want(p.spec)
    assert p.image is IMG  # still on the image: checkpoint() works
    assert p.layer is None  # no saved state is keyed by a custom file


def test_custom_kernel_and_rootfs_stand_on_no_image():
    p = plan(config(kernel="/k", rootfs="/r"))
    assert (p.spec.kernel, p.spec.rootfs, p.spec.initrd) == (Path("/k"), Path("/r"), None)
    assert p.image is None and p.parent is None and p.layer is None
    p = plan(config(kernel="/k", rootfs="/r", initrd="/i"))
    assert p.spec.initrd == Path("/i")


# ---- a checkpoint ----------------------------------------------------------------------


def test_a_checkpoint_gives_its_disk_the_images_boot_files_and_its_layer():
    p = plan(config(from_="ready", disk_size=1024), image=IMG, checkpoint=CP)
    assert p.spec.rootfs == CP.disk and p.spec.rootfs_format == "qcow2"
    assert p.spec.rootfs_size_mb == 6144
    assert p.spec.kernel == IMG.kernel and p.spec.initrd == IMG.initrd
    assert p.image is IMG and p.parent is CP
    assert p.layer == states.Layer.of_checkpoint(CP) and p.layer.digest == "d" * 64
    # A smaller disk_size cannot shrink the checkpoint's disk; a bigger one grows it.
    assert p.disk_size == p.spec.disk_size == 6144
    assert plan(config(from_="ready", disk_size=8192), image=IMG,
                checkpoint=CP).disk_size == 8192


@pytest.mark.parametrize("field", ["kernel", "initrd"])
def test_custom_boot_files_on_a_checkpoint_leave_no_layer(field):
    p = plan(config(from_="ready", **{field: "/custom"}), image=IMG, checkpoint=CP)
    assert getattr(p.spec, field) == Path("/custom")
    assert p.spec.rootfs == CP.disk and p.parent is CP and p.layer is None


def test_rootfs_with_a_checkpoint_is_refused_naming_both_fields():
    with pytest.raises(ConfigError) as e:
        plan(config(from_="ready", rootfs="/r"), image=IMG, checkpoint=CP)
    (problem,) = e.value.problems
    assert problem.startswith("rootfs:") and "from 'ready'" in problem
    with pytest.raises(ConfigError, match="rootfs"):
        plan(config(from_="ready", kernel="/k", rootfs="/r"), image=IMG, checkpoint=CP)


# ---- the plan itself -------------------------------------------------------------------


def test_the_plan_is_immutable():
    p = plan(config(), image=IMG)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.layer = None  # type: ignore[misc]


@pytest.mark.parametrize("fields, given", [
    ({}, {}),  # needs the image
    ({"from_": "ready"}, {"image": IMG}),  # needs the checkpoint
    ({"from_": "ready"}, {"checkpoint": CP}),  # ... and its image
    ({"kernel": "/k", "rootfs": "/r"}, {"image": IMG}),  # needs nothing
])
def test_sources_that_do_not_fit_the_config_are_a_callers_bug(fields, given):
    with pytest.raises(ValueError, match="plan needs"):
        plan(config(**fields), **given)


# ---- loading (the I/O shell) -----------------------------------------------------------


def test_load_verifies_the_checkpoint_chain_and_plans_on_its_base_image(monkeypatch):
    calls = []
    monkeypatch.setattr(ck, "load", lambda name, *a, **k: calls.append(("load", name)) or CP)
    monkeypatch.setattr(ck, "chain", lambda cp, *a: calls.append(("chain", cp.name)) or [cp])
    monkeypatch.setattr(ck, "base_image", lambda cp, *a: IMG)
    monkeypatch.setattr(store, "current_image",
                        lambda *a, **k: pytest.fail("a checkpoint start read the current image"))
    p = plan_mod.load(config(from_="ready"))
    assert calls == [("load", "ready"), ("chain", "ready")]
    assert p == plan(config(from_="ready"), image=IMG, checkpoint=CP)


def test_load_reads_the_current_image_only_when_needed(monkeypatch):
    monkeypatch.setattr(store, "current_image", lambda *a, **k: IMG)
    assert plan_mod.load(config()).layer == states.Layer.of_image(IMG)
    monkeypatch.setattr(store, "current_image",
                        lambda *a, **k: pytest.fail("custom boot files read the image"))
    assert plan_mod.load(config(kernel="/k", rootfs="/r")).image is None


async def test_start_refuses_rootfs_with_from_before_loading_or_booting(monkeypatch):
    """The refusal comes before the checkpoint is loaded (hashed) and before any VM starts;
    before the plan, rootfs was silently ignored and the checkpoint's disk booted."""
    monkeypatch.setattr(ck, "load", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    monkeypatch.setattr("shuru.sandbox.default_backend",
                        lambda *a: pytest.fail("a VM was started"))
    with pytest.raises(ConfigError, match="rootfs: a sandbox started from a checkpoint"):
        await AsyncSandbox.start(from_="ready", rootfs="/some/rootfs.img")
