"""The guest image built on this machine (in the tests' data dir, by the session's `image`
fixture): its manifest and files, what is inside it, and the build's no-op and failure paths.
Building a second full image here would take minutes, so only the failure path builds."""

from __future__ import annotations

import os
import struct
import subprocess
import time

import pytest

from shuru.image.build import build_image, recipe_lines
from shuru.errors import ShuruError
from shuru.image.store import (
    agent_files,
    agent_fingerprint,
    current_image,
    images_dir,
    recipe_files,
    recipe_fingerprint,
    verify,
)

pytestmark = pytest.mark.integration


def bzimage_version(path) -> str:
    """The version string a bzImage carries in its setup header (boot protocol 2.00+)."""
    with open(path, "rb") as f:
        head = f.read(0x10000)
    assert head[0x202:0x206] == b"HdrS", f"{path} is not a bzImage"
    (offset,) = struct.unpack_from("<H", head, 0x20E)
    return head[offset + 0x200:].split(b"\0", 1)[0].decode()


def debugfs(image, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image.rootfs)], capture_output=True,
                          text=True, check=True).stdout


def test_manifest_matches_the_files(image):
    verify(image, full=True)
    m = image.manifest
    assert m["format"] == 1 and m["arch"] == "amd64" and m["debian_suite"] == "trixie"
    assert image.id == m["image_id"] == image.path.name
    assert os.readlink(images_dir() / "current") == image.id
    for name, entry in m["files"].items():
        assert (image.path / name).stat().st_size == entry["size"]
    assert m["agent_sha256"] == agent_fingerprint()
    assert m["recipe_sha256"] == recipe_fingerprint()
    assert set(recipe_lines(recipe_files()["packages.txt"].decode())) <= set(m["packages"])


def test_kernel_version_is_recorded(image):
    version = image.manifest["kernel_version"]
    assert version.endswith("-cloud-amd64")
    assert image.manifest["kernel_package"] == f"linux-image-{version}"
    assert bzimage_version(image.kernel).split()[0] == version


def test_initramfs_loads_every_wanted_module_or_it_is_built_in(image):
    m = image.manifest
    wanted = recipe_lines(recipe_files()["modules.txt"].decode())
    have = [n.removesuffix(".ko") for n in m["initramfs_modules"]] + m["builtin_modules"]
    assert {w.replace("-", "_") for w in wanted} <= {h.replace("-", "_") for h in have}


def test_rootfs_is_sparse_and_holds_agent_and_modules(image):
    st = image.rootfs.stat()
    assert st.st_blocks * 512 < st.st_size
    assert "Mode:  0755" in debugfs(image, "stat /usr/sbin/shuru-init")
    assert debugfs(image, "cat /usr/lib/shuru/shuru_guest/__init__.py") == \
        agent_files()["__init__.py"].decode()
    kver = image.manifest["kernel_version"]
    assert "virtio_blk" in debugfs(image, f"cat /usr/lib/modules/{kver}/modules.dep")
    assert debugfs(image, "cat /etc/hostname") == "shuru\n"


def test_a_second_build_is_a_no_op(image):
    t0 = time.monotonic()
    again = build_image()
    assert time.monotonic() - t0 < 2
    assert again.id == image.id


@pytest.mark.skipif(os.geteuid() != 0, reason="building an image needs root")
def test_a_failed_build_leaves_current_untouched(image, tmp_path):
    images = tmp_path / "home" / "images"
    images.mkdir(parents=True)
    os.symlink(image.path, images / image.id)  # the real image, shared by symlink
    os.symlink(image.id, images / "current")
    (images / ".build-leftover" / "tree").mkdir(parents=True)
    with pytest.raises(ShuruError) as e:
        build_image(tmp_path / "home", force=True, mirror="http://127.0.0.1:9/debian")
    assert "mmdebstrap failed" in str(e.value)
    assert os.readlink(images / "current") == image.id
    assert current_image(tmp_path / "home").id == image.id
    assert not list(images.glob(".build-*"))
