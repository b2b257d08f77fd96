"""The backend contract: every operation the sandbox core needs from a platform, declared
once. QEMU on Linux (`backends/qemu`) and the Swift helper (`backends/helper`: VZ on macOS,
the `process` test driver elsewhere) implement all of it; the core calls nothing else.

In the manner of Lima's driver interface, the contract has parts:

* `Backend`: what the platform can do (`probe` → `Capabilities`), its disks (`disks`, a
  `Disks`), and starting machines: `start` (boot), and fast start's `machine_identity`,
  `start_template`, `restore`.
* `Machine`: one running VM: its agent channel and console, facts the core reports
  (`accel`, `pid`, `layer`, `backing`, `restored_from`), `pause`/`resume`, `save_state`,
  `stop`.
* `Disks`: disk layers in the backend's own format (qcow2 overlays for QEMU, whole raw
  clones for the helper): a sandbox's writable layer over a base, a stopped machine's layer
  kept as a checkpoint, flattening. The format's name is recorded in checkpoint manifests.

A capability a backend lacks is refused with `UnsupportedError` (naming the capability and
the backend) by `Capabilities.require`, which the core calls before it changes anything: a
checkpoint on a backend that cannot keep disks never stops the VM first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from ..errors import UnsupportedError

# The capabilities the core checks, by name (the fields of `Capabilities`).
CHECKPOINT = "checkpoint"
FAST_START = "fast_start"
PAUSE = "pause"
_DOING = {CHECKPOINT: "keep a sandbox's disk as a checkpoint",
          FAST_START: "save or restore machine state (fast start)",
          PAUSE: "pause or resume a VM's CPUs"}


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do on this host, as data the core checks before acting."""

    backend: str  # for messages: "qemu", "helper (vz driver)", "helper (process driver)"
    checkpoint: bool  # `Disks.keep` works on its machines' layers
    fast_start: bool  # `start_template`, `Machine.save_state`, `restore`
    pause: bool  # `Machine.pause` / `Machine.resume`

    def require(self, capability: str, doing: str | None = None) -> None:
        """Raise UnsupportedError unless this backend has `capability` (CHECKPOINT,
        FAST_START or PAUSE); call it before changing anything."""
        has = {CHECKPOINT: self.checkpoint, FAST_START: self.fast_start,
               PAUSE: self.pause}[capability]
        if not has:
            raise UnsupportedError(
                f"the {self.backend} backend cannot {doing or _DOING[capability]} "
                f"(it lacks the {capability!r} capability)",
                capability=capability, backend=self.backend)


@dataclass(frozen=True)
class MachineSpec:
    """One VM to start: the boot files, the base disk and the machine's size (MiB)."""

    kernel: Path
    initrd: Path | None
    rootfs: Path  # read-only base disk; the VM writes to its own layer over it
    cpus: int
    memory: int
    disk_size: int
    accel: str = "auto"  # auto | kvm | tcg
    verbose_console: bool = False  # keep kernel messages (for --console)
    rootfs_format: str = "raw"  # the base's format: a checkpoint's disk is the backend's own
    rootfs_size_mb: int = 0  # the base's virtual size, when it is not the file's size
    arch: str | None = None  # the guest's Debian architecture (amd64, arm64); None: the host's

    def check_files(self) -> None:
        """Fail before starting anything when a boot file is missing, naming it."""
        from ..errors import BootError

        for label, path in (("kernel", self.kernel), ("rootfs", self.rootfs),
                            ("initrd", self.initrd)):
            if path is not None and not Path(path).is_file():
                raise BootError(f"{label} {path}: no such file")


class Disks(Protocol):
    """A backend's disk layers, in its own format."""

    format: str  # recorded in checkpoint manifests ("qcow2", "raw")
    chained: bool  # a layer reads through to its base's file (so a base outlives its layers)

    def check_base(self, base: Path, base_format: str) -> None:
        """Raise UnsupportedError (naming the file and both formats) unless a layer can
        stand on `base`, a disk in `base_format`. Pure; called before anything starts."""
        ...

    async def create_layer(self, base: Path, base_format: str, dest: Path, *, size_mb: int,
                           base_size_mb: int = 0) -> None:
        """Make `dest`, a sandbox's writable layer of `size_mb` over `base` (the image's
        rootfs or a checkpoint's disk). BootError when `size_mb` is smaller than the base."""
        ...

    def keep(self, layer: Path, dest: Path, *, rebase_onto: tuple[Path, str] | None) -> None:
        """Move a stopped machine's `layer` to `dest` as a checkpoint's disk. `rebase_onto`
        (path, format): the layer the checkpoint must stand on, when the machine's layer
        stood on something transient (a restored clone's saved-state disk)."""
        ...

    def flatten(self, disk: Path, image_rootfs: Path) -> None:
        """Make `disk` stand on the image's rootfs alone (copying in what the layers between
        held), so a deep chain reads fast again."""
        ...


class Machine(Protocol):
    """A running VM."""

    agent: tuple[asyncio.StreamReader, asyncio.StreamWriter]  # the byte stream to the agent
    exited: asyncio.Future  # resolves when the VM has ended, however
    capabilities: Capabilities  # what this machine's backend can do (as it told this one)
    cmdline: str  # the kernel command line it booted with (a restore needs the same)
    layer: Path  # its own writable disk layer (goes with `stop`, unless kept)
    backing: tuple[Path, str]  # (path, format) the layer was made over
    restored_from: Path | None  # the saved state it was restored from; None when booted

    @property
    def accel(self) -> str:
        """What runs the VM: "kvm" or "tcg" on QEMU, "vz" or "process" on the helper."""
        ...

    @property
    def pid(self) -> int | None:
        """The host process whose CPU time and memory are the VM's cost (QEMU; the helper,
        which under VZ leaves the guest's RAM to the framework's own service process)."""
        ...

    def console_tail(self, lines: int = 40) -> str:
        """The console's last lines, neutralised (guest text bound for a terminal)."""
        ...

    async def console_drained(self, timeout: float = 2.0) -> None:
        """Wait (briefly) until the console holds everything the VM wrote before it ended."""
        ...

    async def pause(self) -> None:
        """Stop the VM's CPUs, keeping its memory (needs PAUSE)."""
        ...

    async def resume(self) -> None:
        """Run a paused VM's CPUs again (needs PAUSE)."""
        ...

    async def save_state(self, workdir: Path) -> None:
        """Save a template VM (from `Backend.start_template`) into `workdir` as the files
        `Backend.state_files` names, then end it: it must never run again (needs
        FAST_START)."""
        ...

    async def stop(self) -> None:
        """End the VM and remove its run directory (its layer goes with it, unless kept)."""
        ...


OnConsole = Callable[[bytes], None]


class Backend(Protocol):
    """A platform's way of running VMs."""

    name: str
    disks: Disks
    state_files: tuple[str, ...]  # the files `Machine.save_state` leaves in a state dir

    async def probe(self) -> Capabilities:
        """What this backend can do on this host (asked of the platform once, then cached)."""
        ...

    async def start(self, spec: MachineSpec, *, on_console: OnConsole | None = None) -> Machine:
        """Boot a VM on a fresh layer over the spec's root disk."""
        ...

    def machine_identity(self, spec: MachineSpec) -> dict:
        """What a saved state depends on besides the disk layer and the spec's sizes (the
        emulator's version, the accelerator...): a state made under another is stale."""
        ...

    async def start_template(self, spec: MachineSpec, workdir: Path, *,
                             on_console: OnConsole | None = None) -> Machine:
        """Boot a VM whose layer (and RAM, where the backend keeps it in a file) lives in
        `workdir`, to be saved with `Machine.save_state` (needs FAST_START)."""
        ...

    async def restore(self, spec: MachineSpec, state_dir: Path, *, cmdline: str,
                      on_console: OnConsole | None = None) -> Machine:
        """Start a clone of the state saved in `state_dir`, on its own layer over the
        template's; its agent waits for `resume` (needs FAST_START)."""
        ...
