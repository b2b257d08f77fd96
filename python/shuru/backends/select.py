"""The one place that reads the platform and picks the backend (and the helper's driver).

`SHURU_BACKEND=helper|qemu` overrides the default: QEMU on Linux, the Swift helper
(Virtualization.framework) on macOS. The helper on Linux runs its `process` test driver, which
starts the guest agent as a host process instead of a VM.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import HostError

BACKENDS = ("helper", "qemu")


def default_backend(data_dir: Path, environ=os.environ):
    linux, macos = sys.platform.startswith("linux"), sys.platform == "darwin"
    choice = environ.get("SHURU_BACKEND") or ("helper" if macos else "qemu" if linux else None)
    if choice is None:
        raise HostError(f"shuru does not run on {sys.platform} yet",
                        hint="Linux (QEMU) and macOS (Virtualization.framework) are supported")
    if choice == "qemu":
        if not linux:
            raise HostError(f"the qemu backend runs on Linux only, not {sys.platform}",
                            hint="unset SHURU_BACKEND to use the default backend")
        from .qemu.machine import QemuBackend

        return QemuBackend(data_dir)
    if choice == "helper":
        from .helper.machine import HelperBackend

        return HelperBackend(data_dir, driver="vz" if macos else "process")
    raise HostError(f"SHURU_BACKEND={choice!r} is not a backend; use one of {', '.join(BACKENDS)}")
