"""`shuru doctor`, `shuru init` as a command, and `shuru upgrade` against a local package
index (a folder of wheels). The image builder itself is tested in test_image_build.py."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest


from .conftest import ROOT, shuru

pytestmark = pytest.mark.usefixtures("image")


def test_doctor_reports_everything_ok_here():
    r = shuru("doctor")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    for name in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "acceleration", "guest image"):
        assert name in out
    assert "TCG" in out or "KVM works" in out


def test_doctor_names_the_fix_for_a_missing_image(tmp_path):
    r = shuru("doctor", env={"SHURU_HOME": str(tmp_path)})
    out = r.stdout.decode()
    assert r.returncode == 1
    assert "FAIL" in out and "shuru init" in out


def test_init_is_a_fast_no_op_when_current(image):
    start = time.monotonic()
    r = shuru("init")
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr.decode()
    assert image.id in r.stdout.decode()
    assert took < 2.0  # the whole command, interpreter start-up included


def _wheel(src: Path, dest: Path, version: str | None = None) -> Path:
    tree = dest / f"src-{version or 'current'}"
    anywhere = shutil.ignore_patterns("*.egg-info", "build", "__pycache__")

    def ignore(folder: str, names: list[str]) -> set[str]:
        # At the top only: the Swift helper, the tests and their data dir, the venv. (Names
        # below may repeat them: python/shuru/backends/helper is part of the package.)
        top = {".venv", ".git", "helper", "tests", ".test-home"} if Path(folder) == src else set()
        return set(anywhere(folder, names)) | (top & set(names))

    shutil.copytree(src, tree, ignore=ignore)
    if version:
        toml = tree / "pyproject.toml"
        toml.write_text(re.sub(r'^version = ".*"$', f'version = "{version}"',
                               toml.read_text(), count=1, flags=re.M))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dest / "wheels"), str(tree)], check=True)
    return dest / "wheels"


def test_upgrade_from_a_local_index(tmp_path):
    from shuru import __version__ as current
    newer = "99.0.0"
    wheels = _wheel(ROOT, tmp_path)
    _wheel(ROOT, tmp_path, newer)
    # A separate venv with a regular (non-editable) install of the current version. Its
    # dependencies come from this venv through a .pth, minus shuru itself.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = tmp_path / "deps"
    deps.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        if not re.match(r"(shuru|__editable__|_shuru|.*\.pth$)", entry.name, re.I):
            os.symlink(entry, deps / entry.name)
    vsite = next((venv / "lib").glob("python3*/site-packages"))
    (vsite / "deps.pth").write_text(f"{deps}\n")
    py = str(venv / "bin/python")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    old = next(wheels.glob(f"shuru-{current}-*.whl"))
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(old)], env=env, check=True)

    def run(*args):
        return subprocess.run([str(venv / "bin/shuru"), *args], env=env, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)

    r = run("version")
    assert r.stdout.strip() == current, r.stderr
    r = run("upgrade", "--check")
    assert r.returncode == 0, r.stderr
    assert f"shuru {newer} is available (installed: {current})" in r.stdout
    assert run("version").stdout.strip() == current  # --check changes nothing
    r = run("upgrade")
    assert r.returncode == 0, r.stdout + r.stderr
    assert run("version").stdout.strip() == newer
    assert "up to date" in run("upgrade").stdout


def test_upgrade_in_a_source_checkout_says_how_to_update():
    r = shuru("upgrade")
    assert r.returncode == 0
    assert "source checkout" in r.stdout.decode() and "git" in r.stdout.decode()
