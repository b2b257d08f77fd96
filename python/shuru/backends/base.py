"""The backend interface: what every VM driver (QEMU on Linux, the Swift helper on macOS)
offers the sandbox core, and the machine description it receives."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, as data, so callers never branch on the platform."""

    name: str
    snapshot_memory: bool  # can save and restore RAM + device state
    channel: str  # "virtio-serial" or "vsock"
    # starts clones from a saved template VM (`machine_identity`, `start_template`,
    # `restore`, and machines with `save_state`): see shuru.faststart
    fast_start: bool = False


@dataclass(frozen=True)
class MachineSpec:
    """One VM to start: the boot files, the base disk and the machine's size (MiB)."""

    kernel: Path
    initrd: Path | None
    rootfs: Path  # read-only base disk; the VM writes to its own overlay over it
    cpus: int
    memory: int
    disk_size: int
    accel: str = "auto"  # auto | kvm | tcg
    verbose_console: bool = False  # keep kernel messages (for --console)
    rootfs_format: str = "raw"  # "qcow2" when the base is a checkpoint's disk
    rootfs_size_mb: int = 0  # the base's virtual size, when it is not the file's size
    arch: str | None = None  # the guest's Debian architecture (amd64, arm64); None: the host's

    def check_files(self) -> None:
        """Fail before starting anything when a boot file is missing, naming it."""
        from ..errors import BootError

        for label, path in (("kernel", self.kernel), ("rootfs", self.rootfs),
                            ("initrd", self.initrd)):
            if path is not None and not Path(path).is_file():
                raise BootError(f"{label} {path}: no such file")


class Machine(Protocol):
    """A running VM. `agent` is the byte stream to the guest agent."""

    agent: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    exited: asyncio.Future

    def console_tail(self, lines: int = 40) -> str: ...

    async def stop(self) -> None: ...


class Backend(Protocol):
    capabilities: Capabilities

    async def start(self, spec: MachineSpec, *,
                    on_console: Callable[[bytes], None] | None = None) -> Machine: ...
