"""Checkpoints: a sandbox's disk kept under a name, to start any number of sandboxes from.

Layout under the data dir:

    checkpoints/<name>/disk.qcow2      the sandbox's overlay, frozen (its backing file is the
                                        image's rootfs.img or the parent checkpoint's disk)
    checkpoints/<name>/manifest.json   format, parent, base image id and sha256, sizes, hash
    checkpoints/<name>/verified.json   the disk's stat when its hash last matched (a cache)

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
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError as CheckpointError  # re-exported: callers use it from here
from .image.store import Image, images_dir, load as load_image, sha256_file, shuru_home

FORMAT = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_CHAIN = 8  # deeper chains are flattened when saved, so reads stay fast
VERIFIED = "verified.json"


@dataclass(frozen=True)
class Checkpoint:
    name: str
    path: Path
    manifest: dict

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

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


def _qemu_img(*args: str) -> str:
    proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"qemu-img {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def save(overlay: Path, name: str, *, image: Image, parent: Checkpoint | None,
         virtual_size_mb: int, overwrite: bool = False, home: Path | None = None,
         rebase_onto: tuple[Path, str] | None = None) -> Checkpoint:
    """Keep `overlay` (a stopped sandbox's disk) as checkpoint `name`. The overlay file is
    moved, not copied; with a chain deeper than MAX_CHAIN it is flattened onto the image.
    `rebase_onto` (path, format): the layer the checkpoint must stand on, when the overlay
    stands on something transient between (a restored clone's saved-state disk)."""
    check_name(name)
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
        disk = work / "disk.qcow2"
        depth = len(chain(parent, home)) if parent else 0
        shutil.move(str(overlay), disk)
        if rebase_onto is not None:
            _qemu_img("rebase", "-f", "qcow2", "-b", str(rebase_onto[0]), "-F", rebase_onto[1],
                      str(disk))
        parent_name = parent.name if parent else None
        if depth >= MAX_CHAIN:
            # A safe rebase copies into the disk whatever the old chain held that the image
            # does not, so the checkpoint then stands on the image alone.
            _qemu_img("rebase", "-f", "qcow2", "-b", str(image.rootfs), "-F", "raw", str(disk))
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
            "disk": {"size": st.st_size, "sha256": digest},
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
