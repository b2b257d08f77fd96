"""The real guest image through `shuru image export` and `shuru image import` into a fresh
data dir (how an image built on Linux reaches a Mac), and `--arch` for an architecture
with no image. Costs no VM boot: the always-on part of the arm64 work (the arm64 build and
boot are `tests/arm64`, run on demand by `scripts/test-arm64`)."""

from __future__ import annotations

import json
import os

import pytest

from shuru.image.store import host_arch, load, verify

from .conftest import shuru

pytestmark = [pytest.mark.usefixtures("image")]


@pytest.fixture(scope="module")
def exported(image, tmp_path_factory):
    """The image exported once for the module (gzip over the root filesystem: seconds)."""
    tar = tmp_path_factory.mktemp("export") / "img.tar.gz"
    r = shuru("image", "export", str(tar))
    assert r.returncode == 0, r.stderr
    assert image.id.encode() in r.stdout and tar.stat().st_size > 1 << 20
    return tar


def test_export_then_import_into_a_fresh_data_dir(image, exported, tmp_path):
    tar = exported
    home = tmp_path / "elsewhere"
    r = shuru("image", "import", str(tar), env={"SHURU_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    installed = home / "images" / image.id
    assert os.readlink(home / "images" / "current") == image.id
    verify(load(installed), full=True)  # every byte as built
    manifest = json.loads((installed / "manifest.json").read_text())
    assert manifest["arch"] == host_arch() == image.manifest["arch"]
    r = shuru("image", "list", "--json", env={"SHURU_HOME": str(home)})
    status = json.loads(r.stdout)["image"]
    assert status["ok"] and status["id"] == image.id and status["arch"] == host_arch()


def test_a_truncated_export_is_refused_by_name(exported, tmp_path):
    data = exported.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[:len(data) // 2])
    home = tmp_path / "elsewhere"
    r = shuru("image", "import", str(cut), env={"SHURU_HOME": str(home)})
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    assert str(cut).encode() in r.stderr and b"member rootfs.img" in r.stderr
    assert not (home / "images" / "current").exists()


def test_an_arch_without_an_image_says_what_to_run(image, tmp_path):
    foreign = "arm64" if host_arch() == "amd64" else "amd64"
    home = tmp_path / "empty"
    r = shuru("run", "--arch", foreign, "--", "true", env={"SHURU_HOME": str(home)})
    assert r.returncode != 0 and b"Traceback" not in r.stderr
    err = r.stderr.decode()
    assert f"--arch {foreign}" in err and f"shuru init --arch {foreign}" in err
    assert "shuru image import" in err
    r = shuru("run", "--arch", "sparc", "--", "true", env={"SHURU_HOME": str(home)})
    assert r.returncode != 0 and "--arch" in r.stderr.decode()
