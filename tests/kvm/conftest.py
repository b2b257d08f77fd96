"""The KVM tier: real VMs on KVM with the agent on vsock. Needs a host where KVM runs
ordinary guests and /dev/vhost-vsock is usable; `scripts/test-kvm` makes one (nested, in a
shuru sandbox) and runs this directory there. A plain `pytest` run does not collect it
(pyproject's `--ignore`): on a TCG host every test here would fail, by design.

Figures (boot, restore, exec, channel) are recorded with `figure()` and printed at the end;
nothing asserts on time."""

from __future__ import annotations

import os

import pytest

# The tier runs the agent on vsock unless a test asks otherwise (vsock is opt-in elsewhere).
os.environ.setdefault("SHURU_QEMU_CHANNEL", "vsock")

from tests.integration.conftest import image, runtime_dir  # noqa: F401  (fixtures)

FIGURES: list[tuple[str, str]] = []


def figure(name: str, value: str) -> None:
    FIGURES.append((name, value))


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("KVM tier figures")
        for name, value in FIGURES:
            terminalreporter.write_line(f"{name:<48} {value}")
