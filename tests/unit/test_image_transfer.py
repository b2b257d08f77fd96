"""`shuru image export` / `import` on small fake images: a round trip installs the same image
as current for its arch, and a tampered, truncated or hostile tarball is refused with an
error naming the file and the member, leaving the data dir as it was."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from shuru.errors import ImageError
from shuru.image.store import FILES, current_image, host_arch, image_arch, load, verify
from shuru.image.transfer import export_image, import_image, manifest_problems, member_problem

from .test_image_arch import make_image

FOREIGN = "arm64" if host_arch() == "amd64" else "amd64"


@pytest.fixture
def exported(tmp_path):
    """A foreign-arch image (with a sparse-ish rootfs) exported to a tarball."""
    src_home = tmp_path / "src"
    path = make_image(src_home, FOREIGN, b"x")
    # a root filesystem with holes: data, 3 MiB of zeros, data
    (path / "rootfs.img").write_bytes(b"root" + bytes(3 << 20) + b"end")
    path = _rewrite_manifest(path)
    os.symlink(path.name, src_home / "images" / f"current-{FOREIGN}")
    tar = tmp_path / "image.tar.gz"
    image = export_image(tar, arch=FOREIGN, home=src_home)
    return tar, image


def _rewrite_manifest(path: Path) -> Path:
    from shuru.image.store import image_id

    m = json.loads((path / "manifest.json").read_text())
    m["files"] = {n: {"sha256": hashlib.sha256((path / n).read_bytes()).hexdigest(),
                      "size": (path / n).stat().st_size} for n in FILES}
    m["image_id"] = image_id({n: m["files"][n]["sha256"] for n in FILES})
    (path / "manifest.json").write_text(json.dumps(m))
    return path.rename(path.parent / m["image_id"])


def _members(tar: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(tar) as t:
        return [(m, t.extractfile(m).read() if m.isreg() else None) for m in t.getmembers()]


def _write(tar: Path, members) -> Path:
    with tarfile.open(tar, "w:gz") as t:
        for info, data in members:
            info = tarfile.TarInfo(info.name) if isinstance(info, tarfile.TarInfo) and \
                info.isreg() and data is not None and info.size != len(data) else info
            if data is not None:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                t.addfile(info)
    return tar


def _untouched(home: Path) -> None:
    images = home / "images"
    if images.exists():
        assert not [p for p in images.iterdir() if p.name != ".lock"], list(images.iterdir())


def test_round_trip_installs_the_same_image_as_current_for_its_arch(exported, tmp_path):
    tar, image = exported
    assert oct(tar.stat().st_mode & 0o777) != "0o600"  # a plain file, not mkstemp's private one
    dest = tmp_path / "dest"
    got = import_image(tar, home=dest)
    assert got.id == image.id and image_arch(got) == FOREIGN
    assert current_image(dest, FOREIGN).path == got.path
    assert not (dest / "images" / "current").exists()  # the host's own image is not touched
    verify(load(got.path), full=True)
    rootfs = got.path / "rootfs.img"
    assert rootfs.read_bytes() == b"root" + bytes(3 << 20) + b"end"
    assert rootfs.stat().st_blocks * 512 <= 256 << 10  # the zeros came back as holes
    assert not list((dest / "images").glob(".build-*"))
    # importing the same image again is a no-op that keeps it current
    assert import_image(tar, home=dest).path == got.path


def test_members_are_the_manifest_first_then_the_files(exported):
    tar, _ = exported
    assert [m.name for m, _ in _members(tar)] == ["manifest.json", *FILES]


def test_a_tampered_member_is_refused_naming_it(exported, tmp_path):
    tar, _ = exported
    members = _members(tar)
    members = [(m, (b"evil" + d[4:]) if m.name == "initrd.img" else d) for m, d in members]
    bad = _write(tmp_path / "tampered.tar.gz", members)
    with pytest.raises(ImageError) as e:
        import_image(bad, home=tmp_path / "dest")
    assert str(bad) in str(e.value) and "member initrd.img" in str(e.value)
    assert "sha256" in str(e.value)
    _untouched(tmp_path / "dest")


def test_a_truncated_tarball_is_refused_naming_the_member(exported, tmp_path):
    tar, _ = exported
    data = gzip.decompress(tar.read_bytes())
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) - (2 << 20)])  # in the middle of rootfs.img
    with pytest.raises(ImageError, match=r"cut\.tar: member rootfs\.img is cut short"):
        import_image(cut, home=tmp_path / "dest")
    _untouched(tmp_path / "dest")
    gz = tmp_path / "cut.tar.gz"
    gz.write_bytes(tar.read_bytes()[:-200])
    with pytest.raises(ImageError, match=r"cut\.tar\.gz: member rootfs\.img"):
        import_image(gz, home=tmp_path / "dest")
    _untouched(tmp_path / "dest")


def test_a_missing_member_is_named(exported, tmp_path):
    tar, _ = exported
    members = [(m, d) for m, d in _members(tar) if m.name != "vmlinuz"]
    bad = _write(tmp_path / "short.tar.gz", members)
    with pytest.raises(ImageError, match=r"short\.tar\.gz: member vmlinuz is missing"):
        import_image(bad, home=tmp_path / "dest")
    _untouched(tmp_path / "dest")


@pytest.mark.parametrize("name", ["../vmlinuz", "/etc/passwd", "images/x", "./vmlinuz",
                                  "vmlinuz/../../escape"])
def test_member_paths_are_never_trusted(exported, tmp_path, name):
    tar, _ = exported
    members = _members(tar)
    evil = tarfile.TarInfo(name)
    bad = _write(tmp_path / "evil.tar.gz", [members[0], (evil, b"pwned"), *members[1:]])
    with pytest.raises(ImageError, match="unexpected member"):
        import_image(bad, home=tmp_path / "dest" / "home")
    assert not (tmp_path / "dest" / "vmlinuz").exists()
    assert not (tmp_path / "dest" / "escape").exists()
    _untouched(tmp_path / "dest" / "home")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE,
                                  tarfile.CHRTYPE, tarfile.FIFOTYPE])
def test_links_and_special_files_are_refused(exported, tmp_path, kind):
    tar, _ = exported
    members = _members(tar)
    link = tarfile.TarInfo("vmlinuz")
    link.type, link.linkname = kind, "/etc/shadow"
    rest = [(m, d) for m, d in members[1:] if m.name != "vmlinuz"]
    bad = _write(tmp_path / "link.tar.gz", [members[0], (link, None), *rest])
    with pytest.raises(ImageError, match="member 'vmlinuz' is not a regular file"):
        import_image(bad, home=tmp_path / "dest")
    _untouched(tmp_path / "dest")


def test_member_rules():
    reg = tarfile.TarInfo("vmlinuz")
    assert "before manifest.json" in member_problem(reg, set())
    assert member_problem(reg, {"manifest.json"}) is None
    assert "twice" in member_problem(reg, {"manifest.json", "vmlinuz"})


def test_manifest_rules():
    assert manifest_problems([]) == ["manifest.json is not a JSON object"]
    good = {"format": 1, "arch": "arm64", "image_id": "x",
            "files": {n: {"sha256": "a" * 64, "size": 1} for n in FILES}}
    assert any("image_id" in p for p in manifest_problems(good))
    assert any("arch" in p for p in manifest_problems({**good, "arch": "mips"}))
    assert any("format" in p for p in manifest_problems({**good, "format": 9}))
    assert any("sha256 for vmlinuz" in p for p in manifest_problems(
        {**good, "files": {**good["files"], "vmlinuz": {"sha256": "../x", "size": 1}}}))


def test_a_forged_manifest_is_refused(exported, tmp_path):
    tar, _ = exported
    members = _members(tar)
    m = json.loads(members[0][1])
    m["image_id"] = "0123456789abcdef"  # hashes that do not add up to the id
    bad = _write(tmp_path / "forged.tar.gz", [(members[0][0], json.dumps(m).encode()),
                                              *members[1:]])
    with pytest.raises(ImageError, match=r"forged\.tar\.gz: member manifest\.json: .*image_id"):
        import_image(bad, home=tmp_path / "dest")
    _untouched(tmp_path / "dest")


def test_not_a_tarball_and_no_file(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tarball at all" * 100)
    with pytest.raises(ImageError, match=r"junk\.tar\.gz: .*not a gzip or tar file"):
        import_image(junk, home=tmp_path / "dest")
    with pytest.raises(ImageError, match=r"nope\.tar\.gz: no such file"):
        import_image(tmp_path / "nope.tar.gz", home=tmp_path / "dest")
    _untouched(tmp_path / "dest")


def test_export_refuses_a_damaged_image_and_leaves_no_file(tmp_path):
    path = make_image(tmp_path, FOREIGN, b"d")
    os.symlink(path.name, tmp_path / "images" / f"current-{FOREIGN}")
    (path / "initrd.img").write_bytes(b"X" * (path / "initrd.img").stat().st_size)
    with pytest.raises(ImageError, match="damaged"):
        export_image(tmp_path / "out.tar.gz", arch=FOREIGN, home=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["images"]
