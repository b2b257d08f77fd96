"""The checkpoint store with real qcow2 files (qemu-img) but no VM: atomic saves, names,
overwrite, chains and their flattening, deletion rules, damage detection."""

import json
import os
import subprocess

import pytest

from shuru import checkpoints as ck
from shuru.backends.qemu.disks import Qcow2Disks
from shuru.image.store import Image, sha256_file

QCOW2 = Qcow2Disks()


@pytest.fixture
def home(tmp_path):
    img_dir = tmp_path / "images" / "img0"
    img_dir.mkdir(parents=True)
    rootfs = img_dir / "rootfs.img"
    with open(rootfs, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    manifest = {"format": 1, "image_id": "img0",
                "files": {"rootfs.img": {"sha256": sha256_file(rootfs), "size": 64 << 20}}}
    (img_dir / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _image(home) -> Image:
    path = home / "images" / "img0"
    return Image("img0", path, json.loads((path / "manifest.json").read_text()))


def _overlay(home, backing, fmt, tag: bytes):
    """A sandbox overlay with some data written into it, as a VM would leave it."""
    path = home / f"ov-{tag.decode()}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing),
                    str(path), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", f"write -P {tag[0]} {tag[0] * 65536} 65536", str(path)],
                   check=True, capture_output=True)
    return path


def _read_byte(path, offset) -> int:
    out = subprocess.run(["qemu-io", "-r", "-c", f"read -v {offset} 1", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split(":")[1].split()[0], 16)


def test_save_load_and_names(home):
    image = _image(home)
    cp = ck.save(_overlay(home, image.rootfs, "raw", b"a"), "base-1", image=image, parent=None,
                 virtual_size_mb=64, home=home, disks=QCOW2)
    assert cp.disk.is_file() and ck.load("base-1", home).manifest["parent"] is None
    assert [c.name for c in ck.list_all(home)] == ["base-1"]
    assert [p.name for p in (home / "checkpoints").iterdir()] == ["base-1"]  # no temp left
    with pytest.raises(ck.CheckpointError, match="already exists"):
        ck.save(_overlay(home, image.rootfs, "raw", b"b"), "base-1", image=image, parent=None,
                virtual_size_mb=64, home=home, disks=QCOW2)
    ck.save(_overlay(home, image.rootfs, "raw", b"c"), "base-1", image=image, parent=None,
            virtual_size_mb=64, overwrite=True, home=home, disks=QCOW2)
    assert _read_byte(ck.load("base-1", home).disk, ord("c") * 65536) == ord("c")
    for bad in ("", "../x", ".hidden", "a/b", "x" * 129, "sp ace"):
        with pytest.raises(ck.CheckpointError, match="not valid"):
            ck.check_name(bad)


def test_chains_are_flattened_past_the_limit(home):
    image = _image(home)
    parent = None
    for i in range(ck.MAX_CHAIN + 1):
        backing, fmt = (parent.disk, "qcow2") if parent else (image.rootfs, "raw")
        tag = bytes([ord("a") + i])
        parent = ck.save(_overlay(home, backing, fmt, tag), f"c{i}", image=image, parent=parent,
                         virtual_size_mb=64, home=home, disks=QCOW2)
    assert len(ck.chain(ck.load(f"c{ck.MAX_CHAIN - 1}", home), home)) == ck.MAX_CHAIN
    flat = ck.load(f"c{ck.MAX_CHAIN}", home)
    assert flat.parent is None  # stands on the image alone
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(flat.disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(image.rootfs)
    for i in range(ck.MAX_CHAIN + 1):  # every layer's data survived the flattening
        assert _read_byte(flat.disk, (ord("a") + i) * 65536) == ord("a") + i


def test_delete_rules_and_damage(home):
    image = _image(home)
    a = ck.save(_overlay(home, image.rootfs, "raw", b"a"), "a", image=image, parent=None,
                virtual_size_mb=64, home=home, disks=QCOW2)
    ck.save(_overlay(home, a.disk, "qcow2", b"b"), "b", image=image, parent=a,
            virtual_size_mb=64, home=home, disks=QCOW2)
    with pytest.raises(ck.CheckpointError, match="b stand on it"):
        ck.delete("a", home)
    with pytest.raises(ck.CheckpointError, match="no checkpoint named 'zzz'"):
        ck.load("zzz", home)
    disk = ck.load("b", home).disk
    disk.chmod(0o644)
    with open(disk, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    with pytest.raises(ck.CheckpointError, match="does not match the sha256"):
        ck.load("b", home)
    ck.load("a", home)  # the others keep working
    ck.delete("b", home)
    ck.delete("a", home)
    assert ck.list_all(home) == []


def test_an_unchanged_disk_is_hashed_once_a_changed_one_again(home, monkeypatch):
    image = _image(home)
    ck.save(_overlay(home, image.rootfs, "raw", b"a"), "a", image=image, parent=None,
            virtual_size_mb=64, home=home, disks=QCOW2)
    hashed = []
    real = ck.sha256_file
    monkeypatch.setattr(ck, "sha256_file", lambda path: hashed.append(path) or real(path))
    for _ in range(3):
        cp = ck.load("a", home)  # verified at creation: no start hashes it again
    assert hashed == []
    record = json.loads((cp.path / ck.VERIFIED).read_text())
    assert record["sha256"] == cp.manifest["disk"]["sha256"]
    assert record["mtime_ns"] == cp.disk.stat().st_mtime_ns

    # The same size, one byte changed, and the mtime put back: ctime still tells.
    before = cp.disk.stat()
    cp.disk.chmod(0o644)
    with open(cp.disk, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    os.utime(cp.disk, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ck.CheckpointError, match="does not match the sha256"):
        ck.load("a", home)
    assert hashed == [cp.disk]
    with pytest.raises(ck.CheckpointError, match="does not match the sha256"):
        ck.load("a", home)  # and a damaged disk never gets a record that would pass it
    assert len(hashed) == 2


def test_a_touched_but_intact_disk_is_hashed_once_more(home, monkeypatch):
    image = _image(home)
    cp = ck.save(_overlay(home, image.rootfs, "raw", b"a"), "a", image=image, parent=None,
                 virtual_size_mb=64, home=home, disks=QCOW2)
    (cp.path / ck.VERIFIED).unlink()  # as a checkpoint made before the record existed
    os.utime(cp.disk)
    hashed = []
    real = ck.sha256_file
    monkeypatch.setattr(ck, "sha256_file", lambda path: hashed.append(path) or real(path))
    ck.load("a", home)
    ck.load("a", home)
    assert hashed == [cp.disk]


def test_keeping_a_restored_clones_layer_stands_it_on_the_real_base(home, tmp_path):
    """A restored clone's layer stands on the saved state's overlay, which stands on the
    image; kept as a checkpoint it must stand on the image itself and read exactly as it
    did: the state's writes, the clone's writes, and the clone's where both wrote."""
    image = _image(home)
    state = _overlay(home, image.rootfs, "raw", b"s")  # the saved state's overlay
    subprocess.run(["qemu-io", "-c", f"write -P {ord('x')} 0 65536", str(state)], check=True,
                   capture_output=True)
    clone = _overlay(home, state, "qcow2", b"c")
    subprocess.run(["qemu-io", "-c", f"write -P {ord('y')} 0 65536", str(clone)], check=True,
                   capture_output=True)
    dest = tmp_path / "kept.qcow2"
    QCOW2.keep(clone, dest, rebase_onto=(image.rootfs, "raw"))
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(dest)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["backing-filename"] == str(image.rootfs)
    assert info["backing-filename-format"] == "raw"
    assert _read_byte(dest, ord("s") * 65536) == ord("s")  # from the state
    assert _read_byte(dest, ord("c") * 65536) == ord("c")  # from the clone
    assert _read_byte(dest, 0) == ord("y")  # both wrote: the clone's
    assert not clone.exists() and _read_byte(state, 0) == ord("x")  # the state is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_formats_are_recorded_and_never_mixed_in_a_chain(home, tmp_path):
    """The manifest records the disk's format; one without it (written before formats were
    recorded) reads as qcow2; a raw checkpoint (the helper's) cannot stand on a qcow2 one."""
    from shuru.backends.helper.disks import RawDisks

    image = _image(home)
    cp = ck.save(_overlay(home, image.rootfs, "raw", b"a"), "q", image=image, parent=None,
                 virtual_size_mb=64, home=home, disks=QCOW2)
    assert cp.manifest["disk"]["format"] == "qcow2" and cp.disk.name == "disk.qcow2"
    manifest = json.loads((cp.path / "manifest.json").read_text())
    del manifest["disk"]["format"]
    (cp.path / "manifest.json").write_text(json.dumps(manifest))
    old = ck.load("q", home)
    assert old.disk_format == "qcow2" and old.disk == cp.disk
    raw = tmp_path / "layer.img"
    raw.write_bytes(b"raw layer")
    with pytest.raises(ck.CheckpointError, match="cannot stand on 'q': that one is a qcow2 disk, this backend keeps raw"):
        ck.save(raw, "r", image=image, parent=old, virtual_size_mb=64, home=home,
                disks=RawDisks())
    assert raw.exists() and [c.name for c in ck.list_all(home)] == ["q"]
    kept = ck.save(raw, "r", image=image, parent=None, virtual_size_mb=64, home=home,
                   disks=RawDisks())
    assert (kept.disk.name, kept.disk_format, kept.disk.read_bytes()) == (
        "disk.img", "raw", b"raw layer")
    manifest["disk"]["format"] = "vmdk"
    (cp.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ck.CheckpointError, match="unknown format 'vmdk'"):
        ck.load("q", home)
