"""The guest image, without building one: module resolution, the initramfs archive, manifests
and image ids, mirror discovery, and how installed images are found and checked."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from shuru.image import build
from shuru.image.build import (
    apt_sources,
    build_image,
    host_mirror,
    initramfs,
    mmdebstrap_argv,
    module_name,
    mounts_under,
    pick_mirror,
    recipe_lines,
    resolve_modules,
    rootfs_size_mb,
)
from shuru.errors import ImageError, ShuruError
from shuru.image.store import (
    FILES,
    agent_files,
    agent_fingerprint,
    current_image,
    image_id,
    image_status,
    is_current,
    recipe_files,
    recipe_fingerprint,
    stale_reason,
    verify,
)

# ---- kernel modules ---------------------------------------------------------------------

MODULES_DEP = """\
kernel/drivers/virtio/virtio_mmio.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko.xz: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz kernel/net/vmw_vsock/vsock.ko.xz
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko.xz: kernel/net/vmw_vsock/vsock.ko.xz
kernel/net/vmw_vsock/vsock.ko.xz:
"""
MODULES_BUILTIN = """\
kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko
kernel/fs/ext4/ext4.ko
"""


def test_dependencies_come_first():
    assert resolve_modules(MODULES_DEP, ["virtio_net"]) == [
        "kernel/net/core/failover.ko.xz",
        "kernel/drivers/net/net_failover.ko.xz",
        "kernel/drivers/net/virtio_net.ko.xz",
    ]


def test_each_module_is_loaded_once_in_wanted_order():
    paths = resolve_modules(MODULES_DEP, ["virtio_mmio", "vmw_vsock_virtio_transport",
                                          "vsock", "virtio_mmio", "net_failover", "virtio_net"])
    assert len(paths) == len(set(paths))
    names = [module_name(p) for p in paths]
    assert names == ["virtio_mmio", "vsock", "vmw_vsock_virtio_transport_common",
                     "vmw_vsock_virtio_transport", "failover", "net_failover", "virtio_net"]


def test_dash_and_underscore_are_the_same_name():
    assert resolve_modules(MODULES_DEP, ["virtio_rng"]) == [
        "kernel/drivers/char/hw_random/virtio-rng.ko.xz"]
    assert resolve_modules(MODULES_DEP, ["virtio-blk"]) == ["kernel/drivers/block/virtio_blk.ko.xz"]


def test_builtin_modules_are_skipped():
    wanted = ["virtio_mmio", "virtio_blk", "virtio_console", "virtio_rng"]
    assert [module_name(p) for p in resolve_modules(MODULES_DEP, wanted, MODULES_BUILTIN)] == [
        "virtio_mmio", "virtio_blk", "virtio_rng"]


def test_a_module_that_is_nowhere_is_named_in_the_error():
    with pytest.raises(ImageError, match="no_such_driver"):
        resolve_modules(MODULES_DEP, ["virtio_blk", "no_such_driver"], MODULES_BUILTIN)
    # built in, but no builtin list given: also an error, not a silent skip
    with pytest.raises(ImageError, match="virtio_console"):
        resolve_modules(MODULES_DEP, ["virtio_console"])


def test_module_name():
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("kernel/fs/ext4/ext4.ko") == "ext4"
    assert module_name("virtio_blk") == "virtio_blk"


def test_recipe_lists_parse():
    assert recipe_lines("# comment\npython3\n\n  kmod  # why\n") == ["python3", "kmod"]
    recipe = recipe_files()
    packages = recipe_lines(recipe["packages.txt"].decode())
    assert {"python3", "python3-msgpack", "e2fsprogs", "ca-certificates"} <= set(packages)
    modules = recipe_lines(recipe["modules.txt"].decode())
    assert modules == ["virtio_mmio", "virtio_blk", "virtio_console", "virtio_rng"]
    assert recipe["init"].startswith(b"#!/bin/sh\n")


# ---- the initramfs archive --------------------------------------------------------------


def read_newc(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """{path: (mode, data, (rdev major, minor))} of a newc archive, checking its framing."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        assert fields[2] == fields[3] == 0  # owned by root
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries[name] = (mode, data[pos:pos + size], (fields[9], fields[10]))
        pos += size
        pos += -pos % 4


def test_initramfs_holds_busybox_init_and_ordered_modules():
    modules = [("virtio_mmio.ko", b"m" * 5), ("virtio_blk.ko", b"b" * 7)]
    data = initramfs(b"BUSYBOX", b"#!/bin/sh\n", modules)
    entries = read_newc(data)
    mode, init, _ = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and init == b"#!/bin/sh\n"
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    for applet in ("sh", "mount", "insmod", "switch_root", "poweroff"):
        mode, target, _ = entries[f"bin/{applet}"]
        assert stat.S_ISLNK(mode) and target == b"busybox"
    mode, _, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    assert entries["lib/modules.order"][1] == b"/lib/modules/virtio_mmio.ko\n/lib/modules/virtio_blk.ko\n"
    assert entries["lib/modules/virtio_blk.ko"][1] == b"b" * 7
    assert stat.S_ISDIR(entries["newroot"][0])
    assert initramfs(b"BUSYBOX", b"#!/bin/sh\n", modules) == data  # deterministic


def test_init_uses_only_applets_the_initramfs_has():
    init = recipe_files()["init"].decode()
    commands = {"mount", "insmod", "sleep", "switch_root", "poweroff"}
    assert commands <= set(build.BUSYBOX_APPLETS)
    assert "/lib/modules.order" in init and "/usr/sbin/shuru-init" in init


# ---- sizes and command lines ------------------------------------------------------------


def test_rootfs_size_has_headroom_in_64_mib_steps():
    MiB = 1024 * 1024
    for used in (0, 150 * MiB, 200 * MiB, 900 * MiB):
        size = rootfs_size_mb(used)
        assert size % 64 == 0
        assert size * MiB >= used * 1.25 + 256 * MiB
    assert rootfs_size_mb(200 * MiB) == 512


def test_mmdebstrap_argv(tmp_path):
    hook = tmp_path / "with space" / "hook.sh"
    argv = mmdebstrap_argv(tmp_path / "tree", "http://apt.example/debian", ["python3", "kmod"],
                           hook, tmp_path / "debs")
    assert argv[0] == "mmdebstrap" and "--variant=minbase" in argv
    assert "--include=python3,kmod" in argv
    assert argv[-3:] == ["trixie", str(tmp_path / "tree"), "http://apt.example/debian"]
    assert f"--customize-hook='{hook}' \"$1\"" in argv
    assert any(a.startswith("--dpkgopt=path-exclude=/usr/share/doc") for a in argv)


def test_mounts_under_finds_leftovers_deepest_first():
    mountinfo = (
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "90 80 0:5 / /x/.build-1/tree/dev/pts rw - devpts devpts rw\n"
        "91 80 0:21 / /x/.build-1/tree/proc rw - proc proc rw\n"
        "92 80 0:20 / /x/.build-1/tree/sys rw - sysfs sysfs rw\n"
        "93 92 0:30 / /x/.build-1/tree/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "94 80 0:31 / /x/.build-10/tree/proc rw - proc proc rw\n"
        "95 80 0:32 / /x/.build-1/with\\040space rw - tmpfs tmpfs rw\n"
    )
    found = mounts_under(mountinfo, "/x/.build-1/")
    assert found[0] == "/x/.build-1/tree/sys/fs/cgroup"
    assert set(found) == {"/x/.build-1/tree/dev/pts", "/x/.build-1/tree/proc",
                          "/x/.build-1/tree/sys", "/x/.build-1/tree/sys/fs/cgroup",
                          "/x/.build-1/with space"}


# ---- the Debian mirror ------------------------------------------------------------------

DEB822 = """\
Types: deb
# a comment line
URIs: http://apt.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://apt.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_deb822_sources():
    assert pick_mirror(apt_sources({"debian.sources": DEB822})) == "http://apt.example/debian"


def test_mirror_skips_disabled_source_only_and_third_party_stanzas():
    text = ("Types: deb\nURIs: http://old.example/debian\nSuites: bookworm\nComponents: main\n"
            "Enabled: no\n\n"
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n"
            "Types: deb\nURIs: https://repo.example/node_20.x\nSuites: nodistro\nComponents: main\n\n"
            + DEB822)
    assert pick_mirror(apt_sources({"a.sources": text})) == "http://apt.example/debian"


def test_mirror_from_one_line_sources_list():
    text = """\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://apt.example/debian/ bookworm main contrib
deb http://apt.example/debian-security bookworm-security main
deb-src http://apt.example/debian bookworm main
"""
    assert pick_mirror(apt_sources({"sources.list": text})) == "http://apt.example/debian"


def test_no_debian_source_means_no_mirror():
    text = ("deb http://apt.example/debian-security bookworm-security main\n"
            "deb https://repo.example/node_20.x nodistro main\n"
            "deb http://apt.example/ubuntu noble main\n")
    assert pick_mirror(apt_sources({"sources.list": text})) is None
    assert pick_mirror([]) is None


def test_a_debian_mirror_need_not_end_in_debian():
    text = "deb http://cache.example:3142/archive trixie main\n"
    assert pick_mirror(apt_sources({"sources.list": text})) == "http://cache.example:3142/archive"


def test_host_mirror_reads_apt_dir_and_env_overrides(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://nope.example/debian bookworm main\n")
    assert host_mirror({}, tmp_path) == "http://apt.example/debian"
    assert host_mirror({"SHURU_MIRROR": "http://local.example/debian"}, tmp_path) == \
        "http://local.example/debian"


def test_missing_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(ImageError) as e:
        host_mirror({}, tmp_path)
    assert "SHURU_MIRROR" in str(e.value) and str(tmp_path) in str(e.value)


# ---- installed images -------------------------------------------------------------------


def make_image(home: Path, contents: dict[str, bytes] | None = None, **manifest_extra) -> Path:
    """A fake installed image with a correct manifest, made current."""
    contents = contents or {name: name.encode() * 3 for name in FILES}
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    iid = image_id(hashes)
    path = home / "images" / iid
    path.mkdir(parents=True)
    for name, data in contents.items():
        (path / name).write_bytes(data)
    manifest = {"format": 1, "image_id": iid, "kernel_version": "6.12.0-test",
                "debian_suite": "trixie", "agent_sha256": agent_fingerprint(),
                "recipe_sha256": recipe_fingerprint(),
                "files": {n: {"sha256": hashes[n], "size": len(d)} for n, d in contents.items()},
                **manifest_extra}
    (path / "manifest.json").write_text(json.dumps(manifest))
    os.symlink(iid, home / "images" / "current")
    return path


def test_image_id_is_stable_and_depends_on_every_file():
    hashes = {"vmlinuz": "a" * 64, "initrd.img": "b" * 64, "rootfs.img": "c" * 64}
    iid = image_id(hashes)
    assert len(iid) == 16 and int(iid, 16) >= 0
    assert image_id(dict(reversed(list(hashes.items())))) == iid
    for name in hashes:
        assert image_id({**hashes, name: "d" * 64}) != iid


def test_current_image_and_its_paths(tmp_path):
    path = make_image(tmp_path)
    image = current_image(tmp_path)
    assert image.path == path and image.id == path.name
    assert (image.kernel, image.initrd, image.rootfs) == (
        path / "vmlinuz", path / "initrd.img", path / "rootfs.img")
    verify(image)
    verify(image, full=True)
    assert is_current(image)


def test_no_image_says_where_and_how_to_build_one(tmp_path):
    with pytest.raises(ImageError) as e:
        current_image(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value) and "shuru init" in str(e.value)


def test_dangling_current_is_reported(tmp_path):
    (tmp_path / "images").mkdir()
    os.symlink("0123456789abcdef", tmp_path / "images" / "current")
    with pytest.raises(ImageError, match="0123456789abcdef.*does not exist") as e:
        current_image(tmp_path)
    assert "shuru init" in str(e.value)


@pytest.mark.parametrize("manifest, problem", [
    (None, "no manifest.json"), ("{not json", "unreadable"), ("[]", "not a JSON object"),
    ('{"format": 99}', "format 99"),
])
def test_bad_manifests_are_refused(tmp_path, manifest, problem):
    path = make_image(tmp_path)
    if manifest is None:
        (path / "manifest.json").unlink()
    else:
        (path / "manifest.json").write_text(manifest)
    with pytest.raises(ImageError, match=problem) as e:
        current_image(tmp_path)
    assert "shuru init --force" in str(e.value)


def test_verify_catches_missing_files_and_wrong_sizes(tmp_path):
    path = make_image(tmp_path)
    image = current_image(tmp_path)
    (path / "initrd.img").write_bytes(b"short")
    (path / "vmlinuz").unlink()
    with pytest.raises(ImageError) as e:
        verify(image)
    assert "vmlinuz is missing" in str(e.value) and "initrd.img has 5 bytes" in str(e.value)


def test_only_full_verify_rehashes(tmp_path):
    path = make_image(tmp_path)
    image = current_image(tmp_path)
    data = (path / "rootfs.img").read_bytes()
    (path / "rootfs.img").write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size
    verify(image)
    with pytest.raises(ImageError, match="rootfs.img does not match the sha256"):
        verify(image, full=True)


def test_a_changed_agent_makes_the_image_stale(tmp_path):
    make_image(tmp_path, agent_sha256="0" * 64)
    image = current_image(tmp_path)
    assert not is_current(image)
    assert "agent changed" in stale_reason(image)
    status = image_status(tmp_path)
    assert status["ok"] and status["stale"] and status["id"] == image.id


def test_agent_files_include_the_entry_point():
    files = agent_files()
    assert "shuru-init" in files and "__init__.py" in files
    assert all(name.endswith(".py") or name == "shuru-init" for name in files)
    assert not any("__pycache__" in name for name in files)


def test_image_status_without_an_image(tmp_path):
    status = image_status(tmp_path)
    assert status["ok"] is False and "shuru init" in status["hint"]


def test_image_status_of_a_good_image(tmp_path):
    make_image(tmp_path)
    status = image_status(tmp_path)
    assert status["ok"] and not status["stale"]
    assert status["kernel_version"] == "6.12.0-test" and status["disk_usage_bytes"] > 0


def test_build_is_a_no_op_when_the_image_is_current(tmp_path, monkeypatch):
    path = make_image(tmp_path)

    def no_build(*a, **kw):
        raise AssertionError("build_image must not build")

    monkeypatch.setattr(build, "check_tools", no_build)
    monkeypatch.setattr(build, "_build", no_build)
    t0 = time.monotonic()
    assert build_image(tmp_path).path == path
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize("failure, message", [
    (ImageError("mmdebstrap failed"), "mmdebstrap failed"),
    (OSError(28, "No space left on device"), "image failed: .*No space left on device"),
])
def test_a_failed_build_keeps_current_and_cleans_up(tmp_path, monkeypatch, failure, message):
    path = make_image(tmp_path, agent_sha256="stale")  # stale: a build is needed
    stale_dir = tmp_path / "images" / ".build-crashed"
    (stale_dir / "tree").mkdir(parents=True)
    monkeypatch.setattr(build, "check_tools", lambda: None)

    def broken_build(work, mirror, progress, arch="amd64"):
        (work / "build.log").write_text("I: something\nE: it broke\n")
        raise failure

    monkeypatch.setattr(build, "_build", broken_build)
    with pytest.raises(ShuruError, match=message) as e:
        build_image(tmp_path, mirror="http://127.0.0.1:9/debian")
    log = tmp_path / "images" / "last-failed-build.log"
    assert str(log) in str(e.value) and "E: it broke" in log.read_text()
    assert os.readlink(tmp_path / "images" / "current") == path.name
    assert not list((tmp_path / "images").glob(".build-*"))


def test_a_finished_build_becomes_current_atomically(tmp_path, monkeypatch):
    old = make_image(tmp_path, agent_sha256="stale")
    (tmp_path / "images" / "last-failed-build.log").write_text("an earlier failure")
    monkeypatch.setattr(build, "check_tools", lambda: None)

    def fake_build(work, mirror, progress, arch="amd64"):
        make_image(work / "h", {n: b"new " + n.encode() for n in FILES})
        out = next(p for p in (work / "h" / "images").iterdir() if not p.is_symlink())
        return out

    monkeypatch.setattr(build, "_build", fake_build)
    image = build_image(tmp_path, mirror="http://127.0.0.1:9/debian")
    assert image.path.parent == tmp_path / "images" and image.path != old
    assert current_image(tmp_path).id == image.id
    assert old.exists()  # older images stay: checkpoints may refer to them
    assert not list((tmp_path / "images").glob(".build-*"))
    assert not list((tmp_path / "images").glob(".current-*"))
    assert not (tmp_path / "images" / "last-failed-build.log").exists()


def test_a_second_build_waits_for_the_first(tmp_path, monkeypatch):
    import fcntl
    import threading

    old = make_image(tmp_path, agent_sha256="stale")
    monkeypatch.setattr(build, "check_tools", lambda: None)
    built = []

    def fake_build(work, mirror, progress, arch="amd64"):
        built.append(work)
        make_image(work / "h", {n: b"fresh " + n.encode() for n in FILES})
        return next(p for p in (work / "h" / "images").iterdir() if not p.is_symlink())

    monkeypatch.setattr(build, "_build", fake_build)
    steps = []
    fd = os.open(tmp_path / "images" / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another `shuru init` is building
    t = threading.Thread(target=build_image, args=(tmp_path,),
                         kwargs={"mirror": "http://127.0.0.1:9/debian",
                                 "progress": lambda step, f=None: steps.append(step)})
    t.start()
    time.sleep(0.3)
    assert built == [] and any("Waiting for another" in s for s in steps)
    os.close(fd)
    t.join(5)
    assert not t.is_alive()
    assert len(built) == 1 and current_image(tmp_path).path != old
