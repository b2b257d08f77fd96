"""The arm64 tier: build the arm64 image on this host (mmdebstrap under qemu-user: tens of
minutes on a small machine) and boot it under qemu-system-aarch64. Too slow for every run of
`scripts/test`, so this directory is collected only when `scripts/test-arm64` asks for it
(SHURU_TEST_ARM64=1); otherwise it contributes no tests at all (none skipped)."""

from __future__ import annotations

import os

import pytest

collect_ignore_glob = [] if os.environ.get("SHURU_TEST_ARM64") == "1" else ["test_*.py"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "arm64" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
