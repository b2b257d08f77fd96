"""Guest architectures without building or booting anything: how an arch is named and
selected, where each arch's current image lives, what the arm64 build and the aarch64
QEMU command line look like, and the clear errors for an arch that cannot run here."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from shuru.backends.qemu import accel as accel_mod
from shuru.image import build
from shuru.launch import states as snapshots
from shuru.backends.qemu.accel import Accel
from shuru.backends.base import MachineSpec
from shuru.backends.qemu.machine import RamFile, RunPaths, board, build_argv, kernel_cmdline
from shuru.image.build import (
    decompress_kernel,
    download_hook,
    foreign_arch_problem,
    install,
    mmdebstrap_argv,
)
from shuru.config import merge, validate
from shuru.errors import ConfigError, HostError, ImageError
from shuru.image.store import (
    FILES,
    agent_fingerprint,
    current_image,
    current_link_name,
    fingerprint,
    host_arch,
    image_arch,
    image_id,
    normalize_arch,
    recipe_files,
    recipe_fingerprint,
)


def make_image(home: Path, arch: str = "amd64", tag: bytes = b"") -> Path:
    """A fake installed image of `arch` with a correct manifest (not made current)."""
    contents = {name: tag + name.encode() * 3 for name in FILES}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    iid = image_id(hashes)
    path = home / "images" / iid
    path.mkdir(parents=True)
    for name, data in contents.items():
        (path / name).write_bytes(data)
    manifest = {"format": 1, "image_id": iid, "arch": arch, "agent_sha256": agent_fingerprint(),
                "recipe_sha256": recipe_fingerprint(arch),
                "files": {n: {"sha256": hashes[n], "size": len(d)} for n, d in contents.items()}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


# ---- naming and selecting an architecture ---------------------------------------------------


def test_arch_names_and_aliases():
    assert normalize_arch("arm64") == normalize_arch("aarch64") == normalize_arch("AArch64") \
        == "arm64"
    assert normalize_arch("x86_64") == normalize_arch("amd64") == "amd64"
    with pytest.raises(ImageError, match=r"--arch 'riscv64'.*amd64, arm64"):
        normalize_arch("riscv64")
    assert host_arch("x86_64") == "amd64" and host_arch("aarch64") == "arm64"


def test_the_hosts_arch_keeps_current_and_others_get_their_own_link():
    assert current_link_name("amd64", host="amd64") == "current"
    assert current_link_name(None, host="amd64") == "current"
    assert current_link_name("arm64", host="amd64") == "current-arm64"
    # on a Mac (or an arm64 Linux host) the arm64 image is the plain `current`
    assert current_link_name("arm64", host="arm64") == "current"
    assert current_link_name("amd64", host="arm64") == "current-amd64"


def test_a_missing_foreign_image_names_the_flag_and_what_to_run(tmp_path):
    foreign = "arm64" if host_arch() == "amd64" else "amd64"
    with pytest.raises(ImageError) as e:
        current_image(tmp_path, foreign)
    text = str(e.value)
    assert f"--arch {foreign}" in text and "config field `arch`" in text
    assert f"shuru init --arch {foreign}" in text and "shuru image import" in text
    assert str(tmp_path / "images" / f"current-{foreign}") in text


def test_each_arch_finds_its_own_current_image(tmp_path):
    native = make_image(tmp_path, host_arch(), b"n")
    foreign_arch = "arm64" if host_arch() == "amd64" else "amd64"
    foreign = make_image(tmp_path, foreign_arch, b"f")
    os.symlink(native.name, tmp_path / "images" / "current")
    os.symlink(foreign.name, tmp_path / "images" / f"current-{foreign_arch}")
    assert current_image(tmp_path).path == native
    assert current_image(tmp_path, host_arch()).path == native
    got = current_image(tmp_path, foreign_arch)
    assert got.path == foreign and image_arch(got) == foreign_arch


def test_config_field_arch_is_checked_and_named():
    assert merge(validate({"arch": "arm64"})).arch == "arm64"
    assert merge().arch is None  # the host's
    with pytest.raises(ConfigError, match="arch"):
        validate({"arch": "sparc"})


def test_old_amd64_images_stay_current_and_arm64_has_its_own_recipe_fingerprint():
    # The amd64 fingerprint is what it always was: existing data dirs are not rebuilt.
    assert recipe_fingerprint("amd64") == recipe_fingerprint() == fingerprint(recipe_files())
    assert recipe_fingerprint("arm64") != recipe_fingerprint("amd64")
    # a manifest without `arch` (none lacked it, but be safe) is amd64
    from shuru.image.store import Image
    assert image_arch(Image("x", Path("/x"), {})) == "amd64"


# ---- building for arm64 ---------------------------------------------------------------------


def test_mmdebstrap_builds_the_requested_arch(tmp_path):
    argv = mmdebstrap_argv(tmp_path / "t", "http://apt.example/debian", ["python3"],
                           tmp_path / "h", tmp_path / "d", "arm64")
    assert "--architectures=arm64" in argv
    assert "--architectures=amd64" in mmdebstrap_argv(
        tmp_path / "t", "http://apt.example/debian", ["python3"], tmp_path / "h", tmp_path / "d")


def test_the_download_hook_fetches_that_archs_cloud_kernel():
    assert "linux-image-cloud-arm64" in download_hook("arm64")
    assert "amd64" not in download_hook("arm64")
    assert "linux-image-cloud-amd64" in download_hook("amd64")


def test_foreign_builds_need_binfmt_and_say_what_to_run():
    assert foreign_arch_problem("amd64", "amd64", None, False) is None
    missing = foreign_arch_problem("arm64", "amd64", None, True)
    assert "qemu-user-static" in missing and "binfmt-support" in missing
    assert "update-binfmts --enable qemu-aarch64" in missing and "scripts/setup arm64" in missing
    disabled = foreign_arch_problem("arm64", "amd64", "disabled\ninterpreter x\n", True)
    assert "update-binfmts --enable qemu-aarch64" in disabled
    assert "apt-get install arch-test" in foreign_arch_problem("arm64", "amd64", "enabled\n", False)
    assert foreign_arch_problem("arm64", "amd64", "enabled\ninterpreter x\n", True) is None


def test_an_arm64_kernel_is_stored_uncompressed_for_vz():
    raw = b"\x00" * 56 + b"ARM\x64" + os.urandom(1000)
    assert decompress_kernel(gzip.compress(raw)) == raw
    assert decompress_kernel(raw) == raw  # x86's bzImage is left as it is


def test_installing_an_image_keeps_the_other_archs_current_and_its_states(tmp_path):
    images = tmp_path / "images"
    native = make_image(tmp_path, host_arch(), b"n")
    os.symlink(native.name, images / "current")
    (native / "states" / "abc").mkdir(parents=True)
    discarded = []
    real = snapshots.discard

    def spy(path):
        discarded.append(path)
        real(path)

    snapshots.discard, saved = spy, snapshots.discard
    try:
        foreign_arch = "arm64" if host_arch() == "amd64" else "amd64"
        out = make_image(tmp_path / "work", foreign_arch, b"f")
        final = install(out, images)
    finally:
        snapshots.discard = saved
    assert os.readlink(images / "current") == native.name
    assert os.readlink(images / f"current-{foreign_arch}") == final.name
    assert (native / "states" / "abc").is_dir() and not discarded


# ---- booting arm64 under QEMU ---------------------------------------------------------------

SPEC = MachineSpec(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"),
                   rootfs=Path("/img/rootfs.img"), cpus=2, memory=1024, disk_size=4096,
                   arch="arm64")
A72 = Accel("tcg", accel_mod.AARCH64_TCG_CPU, "test")


def _opt(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_aarch64_command_line_uses_virt_and_mmio_devices():
    argv = build_argv("qemu-system-aarch64", SPEC, A72, RunPaths.inside(Path("/run/x")), "C")
    assert _opt(argv, "-M") == ["virt"] and _opt(argv, "-cpu") == ["cortex-a72"]
    devices = _opt(argv, "-device")
    assert "virtio-blk-device,drive=root" in devices and "virtio-serial-device" in devices
    assert "-netdev" not in argv and "-nic" not in argv  # still no network device at all
    clone = build_argv("qemu-system-aarch64", SPEC, A72, RunPaths.inside(Path("/run/x")), "C",
                       ram=RamFile(Path("/s/ram"), shared=False), incoming=True)
    assert _opt(clone, "-M") == ["virt,memory-backend=ram"]
    # the host's arch still gets microvm
    x86 = build_argv("qemu-system-x86_64", MachineSpec(**{**SPEC.__dict__, "arch": "amd64"}),
                     Accel("tcg", "max", "t"), RunPaths.inside(Path("/run/x")), "C")
    assert _opt(x86, "-M") == ["microvm"]


def test_aarch64_kernel_console_is_the_pl011():
    line = kernel_cmdline(verbose=False, tsc_khz=2_000_000, arch="arm64")
    assert "console=ttyAMA0" in line and "ttyS0" not in line
    assert "tsc_early_khz" not in line and "i8042" not in line
    assert "root=/dev/vda" in line and "panic=-1" in line and "quiet" in line
    assert "console=ttyS0" in kernel_cmdline(verbose=True, tsc_khz=None, arch="amd64")
    assert board("arm64").machine == "virt" and board("amd64").machine == "microvm"


def test_a_foreign_guest_is_emulated_and_kvm_is_refused_by_flag():
    a = accel_mod.foreign("arm64", "amd64", "auto")
    assert a.name == "tcg" and a.cpu == "cortex-a72" and a.qemu_arg.startswith("tcg")
    assert accel_mod.foreign("arm64", "amd64", "tcg").name == "tcg"
    with pytest.raises(HostError, match="--accel kvm.*arm64.*amd64"):
        accel_mod.foreign("arm64", "amd64", "kvm")
