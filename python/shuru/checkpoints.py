"""Checkpoints: a sandbox's disk kept under a name, to start any number of sandboxes from.

Layout under the data dir:

    checkpoints/<name>/disk.qcow2      QEMU: the sandbox's overlay, frozen (its backing file
                                        is the image's rootfs.img or the parent's disk)
    checkpoints/<name>/disk.img        the helper (VZ): the sandbox's whole raw disk
    checkpoints/<name>/manifest.json   format, parent, base image id and sha256, sizes, hash,
                                        the disk's format (absent in old ones: qcow2)
    checkpoints/<name>/verified.json   the disk's stat when its hash last matched (a cache)

The disk is in the format of the backend that made it, and only that backend's `Disks`
touch it (`backends/base.py`): a checkpoint of one format is refused by a backend of another
before anything starts.

A checkpoint is immutable once written: sandboxes started from it get their own overlay on
top. Saving goes through a temporary directory and one rename, so a crash leaves no half
checkpoint under the name. The disk is hashed when it is saved and again whenever its stat
(size, mtime, ctime, inode) differs from the one recorded then, not on every start (hashing
a big disk costs seconds on a path meant to take half of one); a damaged or truncated
checkpoint is refused with the path in the message while the others keep working. Loading
hashes, so async callers load in a thread.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .backends.base import Disks
from .errors import CheckpointError as CheckpointError  # re-exported: callers use it from here
from .image.store import Image, images_dir, load as load_image, sha256_file, shuru_home

FORMAT = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_CHAIN = 8  # deeper chains are flattened when saved, so reads stay fast
VERIFIED = "verified.json"
# A checkpoint's disk file by its format; a manifest without a format is from before the
# helper backend kept checkpoints: QEMU's qcow2.
DISK_FILES = {"qcow2": "disk.qcow2", "raw": "disk.img"}
LEGACY_FORMAT = "qcow2"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    manifest: dict

    @property
    def disk_format(self) -> str:
        return str(self.manifest.get("disk", {}).get("format", LEGACY_FORMAT))

    @property
    def disk(self) -> Path:
        return self.path / DISK_FILES[self.disk_format]

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def virtual_size_mb(self) -> int:
        return int(self.manifest["virtual_size_mb"])


def checkpoints_dir(home: Path | None = None) -> Path:
    return (home or shuru_home()) / "checkpoints"


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise CheckpointError(
            f"checkpoint {field} {name!r} is not valid: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit (at most 128 characters)")
    return name


def load(name: str, home: Path | None = None, *, verify: bool = True) -> Checkpoint:
    check_name(name)
    path = checkpoints_dir(home) / name
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        known = ", ".join(c.name for c in list_all(home)) or "none"
        raise CheckpointError(f"no checkpoint named {name!r} (known: {known})",
                              hint="create one with `shuru checkpoint create NAME`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {name!r}: {manifest_path} is unreadable: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {name!r} at {path} has an unsupported format "
                              f"{manifest.get('format') if isinstance(manifest, dict) else '?'}")
    disk = manifest.get("disk")
    if not isinstance(disk, dict) or disk.get("format", LEGACY_FORMAT) not in DISK_FILES:
        raise CheckpointError(f"checkpoint {name!r} at {path} has a disk in an unknown format "
                              f"{disk.get('format') if isinstance(disk, dict) else '?'!r}")
    cp = Checkpoint(name, path, manifest)
    if verify:
        _verify_disk(cp)
    return cp


def _verify_disk(cp: Checkpoint) -> None:
    want = cp.manifest.get("disk", {})
    try:
        st = cp.disk.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {cp.name!r} is damaged: {cp.disk} is missing") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {cp.name!r}: cannot read {cp.disk}: {e.strerror}"
                              ) from None
    if st.st_size != want.get("size"):
        raise CheckpointError(f"checkpoint {cp.name!r} is damaged: {cp.disk} has {st.st_size} "
                              f"bytes, its manifest says {want.get('size')}",
                              hint=f"delete it with `shuru checkpoint delete {cp.name}`")
    if _read_record(cp) == verified_record(st, want.get("sha256")):
        return  # hashed since the file last changed
    try:
        digest = sha256_file(cp.disk)
    except OSError as e:
        raise CheckpointError(f"checkpoint {cp.name!r}: cannot read {cp.disk}: {e.strerror}"
                              ) from None
    if digest != want.get("sha256"):
        raise CheckpointError(f"checkpoint {cp.name!r} is damaged: {cp.disk} does not match "
                              "the sha256 in its manifest",
                              hint=f"delete it with `shuru checkpoint delete {cp.name}`")
    _write_record(cp.path, verified_record(st, digest))  # the stat from before hashing


def verified_record(st: os.stat_result, sha256: str | None) -> dict:
    """What the disk looked like when its content hashed to `sha256`. Any write changes
    mtime and ctime (ctime cannot be set back), a replaced file has another inode."""
    return {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _read_record(cp: Checkpoint) -> dict | None:
    try:
        record = json.loads((cp.path / VERIFIED).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(path: Path, record: dict) -> None:
    """Best effort (a read-only data dir just means hashing on every start); written with one
    rename, so concurrent starts never read half a record."""
    tmp = path / f".{VERIFIED}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, path / VERIFIED)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def chain(cp: Checkpoint, home: Path | None = None) -> list[Checkpoint]:
    """The checkpoint and its ancestors, nearest first (each verified)."""
    out = [cp]
    while out[-1].parent:
        if len(out) > 64:
            raise CheckpointError(f"checkpoint {cp.name!r} has a parent loop")
        out.append(load(out[-1].parent, home))
    return out


def base_image(cp: Checkpoint, home: Path | None = None) -> Image:
    """The guest image the checkpoint's disk stands on (kept even after `shuru init --force`)."""
    path = images_dir(home) / cp.manifest["image_id"]
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {cp.name!r} stands on guest image "
                              f"{cp.manifest['image_id']}, which is gone from {path.parent}")
    return load_image(path)


def list_all(home: Path | None = None) -> list[Checkpoint]:
    root = checkpoints_dir(home)
    out = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or not (entry / "manifest.json").is_file():
                continue
            try:
                out.append(load(entry.name, home, verify=False))
            except CheckpointError:
                continue
    return out


def children(name: str, home: Path | None = None) -> list[str]:
    return [c.name for c in list_all(home) if c.parent == name]


def save(layer: Path, name: str, *, image: Image, parent: Checkpoint | None,
         virtual_size_mb: int, disks: Disks, overwrite: bool = False,
         home: Path | None = None, rebase_onto: tuple[Path, str] | None = None) -> Checkpoint:
    """Keep `layer` (a stopped sandbox's disk, in the format of `disks`, its backend's) as
    checkpoint `name`. The file is moved, not copied; with a chain deeper than MAX_CHAIN it
    is flattened onto the image. `rebase_onto` (path, format): the layer the checkpoint must
    stand on, when the layer stands on something transient between (a restored clone's
    saved-state disk)."""
    check_name(name)
    if parent is not None and parent.disk_format != disks.format:
        raise CheckpointError(f"checkpoint {name!r} cannot stand on {parent.name!r}: that one "
                              f"is a {parent.disk_format} disk, this backend keeps "
                              f"{disks.format} disks")
    root = checkpoints_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists() and not overwrite:
        raise CheckpointError(f"a checkpoint named {name!r} already exists",
                              hint="pass overwrite=True (or --force) to replace it")
    if final.exists() and children(name, home):
        raise CheckpointError(f"checkpoint {name!r} cannot be replaced: "
                              f"{', '.join(children(name, home))} stand on it")
    work = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    try:
        disk = work / DISK_FILES[disks.format]
        depth = len(chain(parent, home)) if parent else 0
        disks.keep(layer, disk, rebase_onto=rebase_onto)
        parent_name = parent.name if parent else None
        if disks.chained and depth >= MAX_CHAIN:
            # Flattening copies into the disk whatever the old chain held that the image
            # does not, so the checkpoint then stands on the image alone.
            disks.flatten(disk, image.rootfs)
            parent_name = None
        os.chmod(disk, 0o444)  # before the stat below: a chmod changes ctime
        st = disk.stat()
        digest = sha256_file(disk)
        manifest = {
            "format": FORMAT,
            "name": name,
            "parent": parent_name,
            "image_id": image.id,
            "image_rootfs_sha256": image.manifest["files"]["rootfs.img"]["sha256"],
            "virtual_size_mb": virtual_size_mb,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "disk": {"size": st.st_size, "sha256": digest, "format": disks.format},
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _write_record(work, verified_record(st, digest))
        if final.exists():
            old = root / f".old-{name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load(name, home, verify=False)


def delete(name: str, home: Path | None = None) -> None:
    check_name(name)
    path = checkpoints_dir(home) / name
    if not path.exists():
        raise CheckpointError(f"no checkpoint named {name!r}")
    kids = children(name, home)
    if kids:
        raise CheckpointError(f"checkpoint {name!r} cannot be deleted: "
                              f"{', '.join(kids)} stand on it",
                              hint="delete those first")
    trash = path.with_name(f".del-{name}-{os.getpid()}")
    os.rename(path, trash)  # the name disappears at once, even if removal is slow
    shutil.rmtree(trash, ignore_errors=True)
