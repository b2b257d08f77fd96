"""Integration fixtures: real VMs from the installed guest image.

The image lives in the tests' data dir (`$SHURU_HOME`, `.test-home/` by default: see
tests/conftest.py). `scripts/test` builds it there through `scripts/setup` (`shuru init`);
if it is missing or stale the session builds it rather than skipping, since a skipped
integration test is a hidden failure. It is kept across runs, so a second run reuses it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
SHURU = str(Path(sys.executable).with_name("shuru"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def image():
    from shuru.image.build import build_image
    from shuru.image.store import shuru_home

    assert shuru_home() == Path(os.environ["SHURU_HOME"])  # the tests' own (tests/conftest.py)
    return build_image()


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """A private runtime root, so a test can see exactly what its sandboxes leave behind."""
    path = Path(f"/tmp/shuru-test-{os.getpid()}-{tmp_path.name[-12:]}")
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)  # a runtime root must be private to its user, or shuru refuses it
    monkeypatch.setenv("SHURU_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def shuru(*args: str, input: bytes | None = None, env: dict | None = None, cwd=None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `shuru` console script, stdin from /dev/null unless input is given."""
    return subprocess.run(
        [SHURU, *args], input=input, capture_output=True, timeout=timeout,
        env={**os.environ, **(env or {})}, cwd=cwd,
        stdin=subprocess.DEVNULL if input is None else None,
    )
