"""The one place that reads the platform and picks the backend."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import HostError


def default_backend(data_dir: Path):
    if sys.platform.startswith("linux"):
        from .qemu import QemuBackend

        return QemuBackend(data_dir)
    raise HostError(f"shuru does not run on {sys.platform} yet",
                    hint="Linux (QEMU) is supported; macOS needs the Swift helper backend")
