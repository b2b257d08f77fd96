"""The KVM tier: real VMs on KVM with the agent on vsock. Needs a host where KVM runs
ordinary guests and /dev/vhost-vsock is usable; `scripts/test-kvm` makes one (nested, in a
shuru sandbox) and runs this directory there. This directory is collected only when
SHURU_TEST_KVM=1 asks for it (as tests/arm64 does with its variable); otherwise it
contributes no tests at all (none skipped): on a TCG host every test here would fail.

Figures (boot, restore, exec, channel) are recorded with `figure()` and printed at the end;
nothing asserts on time."""

from __future__ import annotations

import os

import pytest

ENABLED = os.environ.get("SHURU_TEST_KVM") == "1"
collect_ignore_glob = [] if ENABLED else ["test_*.py"]

# The tier runs the agent on vsock unless a test asks otherwise (vsock is opt-in elsewhere).
# Only when the tier runs: this file is imported by every session, and the variable would
# reach every other test's sandboxes.
if ENABLED:
    os.environ.setdefault("SHURU_QEMU_CHANNEL", "vsock")

from tests.integration.conftest import image, runtime_dir  # noqa: F401  (fixtures)

FIGURES: list[tuple[str, str]] = []


def figure(name: str, value: str) -> None:
    FIGURES.append((name, value))


def pytest_collection_modifyitems(items):
    for item in items:  # the hook sees the whole session's items: mark only this tier's
        if "/tests/kvm/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter):
    if ENABLED and FIGURES:
        terminalreporter.section("KVM tier figures")
        for name, value in FIGURES:
            terminalreporter.write_line(f"{name:<48} {value}")
