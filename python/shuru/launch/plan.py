"""What a sandbox's start will boot: the plan, made from its resolved config before anything runs.

`plan` is pure: from a `SandboxConfig` and the sources it names, already loaded (the current
guest image, or a checkpoint and the image under it), it makes an immutable `Plan`: the
`MachineSpec` to start, the image the disk stands on, the parent checkpoint, and the disk
layer whose saved machine states a start may restore. `load` is its I/O shell: it checks the
config, loads what the config needs (`needs` says what) and plans.

Which disk and boot files, by config:

* `from_` (a checkpoint): its disk (qcow2) and the kernel and initrd of the image under it.
  `kernel`/`initrd` still replace the boot files; `rootfs` is refused, since the disk is the
  checkpoint's. The disk is at least the checkpoint's size (`disk_size` only grows it).
* `kernel` and `rootfs` both: those files alone, no image (such a sandbox cannot be
  checkpointed: its disk belongs to no image).
* otherwise: the current guest image, with any of `kernel`, `rootfs`, `initrd` replacing
  the image's file.

Saved states key by the disk layer, so only a start that boots a layer's own files has one:
any custom boot file (and `rootfs` under the image) gives `layer` None, and the start boots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import states
from ..backends.base import MachineSpec
from ..config import ConfigError, SandboxConfig

if TYPE_CHECKING:
    from ..checkpoints import Checkpoint
    from ..image.store import Image

# What a config needs loaded before it can be planned (see `needs`).
CHECKPOINT, IMAGE, NOTHING = "checkpoint", "image", "nothing"


@dataclass(frozen=True)
class Plan:
    """One start, decided: what to boot and what it stands on."""

    spec: MachineSpec
    image: Image | None  # the guest image the disk stands on; None with custom boot files
    parent: Checkpoint | None  # the checkpoint started from (`from_`), else None
    layer: states.Layer | None  # the disk layer saved states belong to; None: boot only

    @property
    def disk_size(self) -> int:
        """The sandbox's disk in MiB (a checkpoint's own size at least)."""
        return self.spec.disk_size


def check(config: SandboxConfig) -> None:
    """Refuse the combinations of boot fields that cannot mean anything, naming the fields."""
    if config.from_ and config.rootfs:
        raise ConfigError([
            f"rootfs: a sandbox started from a checkpoint (from {config.from_!r}) boots the "
            "checkpoint's disk, so rootfs would be ignored; drop rootfs, or drop from to "
            "boot rootfs"])


def needs(config: SandboxConfig) -> str:
    """What `plan` needs loaded for `config`: CHECKPOINT (the checkpoint `from_` and the image
    under it), IMAGE (the current guest image) or NOTHING (custom kernel and rootfs)."""
    if config.from_:
        return CHECKPOINT
    if config.kernel and config.rootfs:
        return NOTHING
    return IMAGE


def plan(config: SandboxConfig, *, image: Image | None = None,
         checkpoint: Checkpoint | None = None) -> Plan:
    """The plan for `config`, given what `needs(config)` names: `image` (the current image,
    or the checkpoint's base image) and `checkpoint`. Pure: reads no file."""
    check(config)
    c = config
    need = needs(c)
    given = CHECKPOINT if checkpoint is not None else IMAGE if image is not None else NOTHING
    if need != given or (need == CHECKPOINT and image is None):
        # A caller's mistake, not a user's: `load` always passes what `needs` names.
        raise ValueError(f"plan needs {need} for this config, was given {given}")
    custom_boot = bool(c.kernel or c.initrd)
    rootfs_format, base_mb, disk_size, layer = "raw", 0, c.disk_size, None
    if checkpoint is not None:
        rootfs, rootfs_format = Path(checkpoint.disk), checkpoint.disk_format
        base_mb = checkpoint.virtual_size_mb
        disk_size = max(disk_size, base_mb)
        if not custom_boot:
            layer = states.Layer.of_checkpoint(checkpoint)
    elif image is None:
        assert c.rootfs and c.kernel  # needs() said NOTHING
        rootfs = Path(c.rootfs)
    else:
        rootfs = Path(c.rootfs) if c.rootfs else image.rootfs
        if not (custom_boot or c.rootfs):
            layer = states.Layer.of_image(image)
    if c.kernel:
        kernel = Path(c.kernel)
    else:
        assert image is not None  # needs() asked for one whenever kernel is not given
        kernel = image.kernel
    initrd = Path(c.initrd) if c.initrd else image.initrd if image is not None else None
    arch = _guest_arch(c, image, checkpoint)
    spec = MachineSpec(kernel=kernel, initrd=initrd, rootfs=rootfs, cpus=c.cpus,
                       memory=c.memory, disk_size=disk_size, accel=c.accel,
                       verbose_console=c.console, rootfs_format=rootfs_format,
                       rootfs_size_mb=base_mb, arch=arch)
    return Plan(spec=spec, image=image, parent=checkpoint, layer=layer)


def _guest_arch(config: SandboxConfig, image: Image | None,
                checkpoint: Checkpoint | None) -> str | None:
    """The image decides the architecture (a checkpoint's base image too); `arch` must agree.
    None (the host's) with custom boot files and no `arch`."""
    from ..image.store import image_arch, normalize_arch

    want = normalize_arch(config.arch) if config.arch else None
    if image is None:
        return want
    have = image_arch(image)
    if want and want != have:
        raise ConfigError([f"arch {want!r} does not match the {have} image the sandbox starts "
                           f"from ({config.from_ or image.id}); leave arch unset: a checkpoint "
                           "runs on its own image"])
    return have


def load(config: SandboxConfig) -> Plan:
    """Check `config`, load what it needs and plan. Blocking: a checkpoint's disk is hashed
    when it changed since it was last verified, so async callers run this in a thread."""
    from .. import checkpoints
    from ..image.store import current_image

    check(config)  # before loading anything: a refused combination costs no hashing
    need = needs(config)
    if need == CHECKPOINT:
        assert config.from_ is not None
        # The checkpoint decides the image: its disk only makes sense with its kernel.
        cp = checkpoints.load(config.from_)
        checkpoints.chain(cp)  # every layer below must be intact too
        return plan(config, image=checkpoints.base_image(cp), checkpoint=cp)
    if need == IMAGE:
        from ..image.store import normalize_arch

        arch = normalize_arch(config.arch) if config.arch else None
        return plan(config, image=current_image(arch=arch))
    return plan(config)
