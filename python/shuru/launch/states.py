"""Saved machine states: where they live, what they are keyed by, when one is stale.

A saved state is what a sandbox restores instead of booting. It belongs to one disk layer
(the guest image or a checkpoint) and sits beside it, so it goes when the layer goes:

    images/<id>/states/<key>/          or   checkpoints/<name>/states/<key>/
        disk.qcow2      the template VM's overlay over the layer, frozen when it was saved
        ram             the template's guest RAM (clones map it privately: copy-on-write)
        state.bin       QEMU's device state (CPU, devices; RAM is not in it)
        manifest.json   format, key, identity, kernel command line, file sizes, created

(that is QEMU's set; the backend names its files, `Backend.state_files`: the helper keeps
disk.img, VZ's state.vzsave and the machine identity), and the manifest lists them.

`key` is a hash of the state's identity: the layer, everything that changes the machine
(cpus, memory, disk size, console verbosity) and the QEMU and accelerator that made it. A
start with other options finds no state under its key and saves its own. A state whose
manifest disagrees with the identity it is looked up with, or whose files are missing or
resized, is stale: the caller discards it and saves a new one. States are written in a
temporary directory and published with one rename, and never change afterwards (clones map
the RAM file, so writing to it would change running clones).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from ..errors import ShuruError, StaleStateError

FORMAT = 1
FILES = ("disk.qcow2", "ram", "state.bin")  # QEMU's; each backend names its own (`state_files`)
ABANDONED_AFTER = 3600.0  # seconds; an unpublished work dir this old belongs to nobody
KEEP_PER_LAYER = 8  # more variants of one layer than this: the least recently used go


@dataclass(frozen=True)
class Layer:
    """The disk layer a state stands on: the guest image or a checkpoint."""

    kind: str  # "image" or "checkpoint"
    name: str  # image id or checkpoint name
    path: Path  # the image's or checkpoint's directory
    digest: str  # what pins its content: the image id, or the checkpoint disk's sha256

    @property
    def states_dir(self) -> Path:
        return self.path / "states"

    def describe(self) -> str:
        return f"guest image {self.name}" if self.kind == "image" else f"checkpoint {self.name!r}"

    @classmethod
    def of_image(cls, image) -> "Layer":
        return cls("image", image.id, image.path, image.id)

    @classmethod
    def of_checkpoint(cls, cp) -> "Layer":
        return cls("checkpoint", cp.name, cp.path, cp.manifest["disk"]["sha256"])


@dataclass(frozen=True)
class SavedState:
    path: Path
    manifest: dict

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def ram(self) -> Path:
        return self.path / "ram"

    @property
    def state(self) -> Path:
        return self.path / "state.bin"

    @property
    def cmdline(self) -> str:
        return self.manifest["cmdline"]


# ---- identity (pure) ------------------------------------------------------------------------


def identity(layer: Layer, *, cpus: int, memory: int, disk_size: int, verbose_console: bool,
             machine: dict[str, Any]) -> dict[str, Any]:
    """Everything a saved state depends on; `machine` is the backend's part (QEMU version,
    accelerator, CPU model)."""
    return {"format": FORMAT, "layer": layer.kind, "layer_name": layer.name,
            "layer_digest": layer.digest, "cpus": cpus, "memory": memory,
            "disk_size": disk_size, "verbose_console": verbose_console, **machine}


def key(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def problem(manifest: object, ident: dict[str, Any], sizes: dict[str, int | None]) -> str | None:
    """Why a state with this manifest and these file sizes (None: missing) cannot be used
    for `ident`, or None when it can."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return "it has another format"
    recorded = manifest.get("identity")
    if not isinstance(recorded, dict):
        return "its manifest has no identity"
    changed = sorted(k for k in set(recorded) | set(ident) if recorded.get(k) != ident.get(k))
    if changed:
        return "it was made with other " + ", ".join(
            f"{k} ({recorded.get(k)!r}, now {ident.get(k)!r})" for k in changed)
    want = manifest.get("files")
    if not isinstance(want, dict) or not want or not isinstance(manifest.get("cmdline"), str):
        return "its manifest is incomplete"
    for name in want:
        if sizes.get(name) is None:
            return f"{name} is missing"
        if sizes[name] != want.get(name):
            return f"{name} has {sizes[name]} bytes, its manifest says {want.get(name)}"
    return None


# ---- the store ------------------------------------------------------------------------------


def _sizes(path: Path, files: tuple[str, ...] = FILES) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name in files:
        try:
            out[name] = (path / name).stat().st_size
        except OSError:
            out[name] = None
    return out


def find(layer: Layer, ident: dict[str, Any]) -> SavedState | None:
    """The layer's state for `ident`; None when there is none. Raises StaleStateError
    (naming why) when there is one that cannot be used."""
    path = layer.states_dir / key(ident)
    manifest_path = path / "manifest.json"
    if not path.is_dir():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise StaleStateError(f"the saved machine state at {path} is unreadable ({e})") from None
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    names = tuple(n for n in listed if isinstance(n, str) and "/" not in n) \
        if isinstance(listed, dict) else FILES
    why = problem(manifest, ident, _sizes(path, names))
    if why:
        raise StaleStateError(f"the saved machine state at {path} is stale: {why}")
    with contextlib.suppress(OSError):
        os.utime(path)  # the directory's mtime is its last use, for pruning
    return SavedState(path, manifest)


def discard(path: Path) -> None:
    """Remove a state directory. Running clones keep what they mapped and opened."""
    trash = path.with_name(f".del-{path.name}-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def drop_other_images(images_root: Path, keep: str, also_keep: "set[str] | frozenset[str]" = frozenset()) -> None:
    """Discard the states of every image but `keep` (the new current one) and `also_keep`
    (the current images of other architectures): only current images are started from
    directly, and each state holds ~100+ MiB. Checkpoints on older images keep theirs (they
    live in the checkpoint's directory)."""
    for entry in images_root.iterdir():
        states = entry / "states"
        if entry.name != keep and entry.name not in also_keep and not entry.is_symlink() \
                and states.is_dir():
            discard(states)


def new_workdir(layer: Layer) -> Path:
    """A private directory for a template VM's disk and RAM, published by `publish`. Work
    left by a start that was killed mid-save (a save takes a minute at most) is removed."""
    layer.states_dir.mkdir(parents=True, exist_ok=True)
    for entry in layer.states_dir.glob(".[nd]e[wl]-*"):
        with contextlib.suppress(OSError):
            if time.time() - entry.stat().st_mtime > ABANDONED_AFTER:
                shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".new-", dir=layer.states_dir))


def publish(work: Path, layer: Layer, ident: dict[str, Any], *, cmdline: str,
            guest: dict[str, Any], files: tuple[str, ...] = FILES) -> SavedState:
    """Write the manifest and move `work` into place as the state for `ident`, replacing
    one that was there; then drop states of this layer that can never load again (made by
    another QEMU) and the oldest beyond KEEP_PER_LAYER. `files`: what the backend's
    `save_state` leaves (its `state_files`), the disk first."""
    sizes = _sizes(work, files)
    missing = [n for n in files if sizes[n] is None]
    if missing:
        raise StaleStateError(f"saving the machine state left no {', '.join(missing)} in {work}")
    os.chmod(work / files[0], 0o444)  # the disk clones stand on
    manifest = {
        "format": FORMAT,
        "key": key(ident),
        "identity": ident,
        "cmdline": cmdline,
        "guest": guest,
        "files": sizes,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    final = layer.states_dir / manifest["key"]
    if final.exists():
        discard(final)
    os.rename(work, final)
    _prune(layer, ident)
    return SavedState(final, manifest)


def _prune(layer: Layer, ident: dict[str, Any]) -> None:
    states = list_layer(layer)
    for st in states:
        if st.manifest.get("identity", {}).get("qemu") != ident.get("qemu"):
            discard(st.path)
    states = list_layer(layer)
    states.sort(key=lambda st: st.path.stat().st_mtime, reverse=True)
    for st in states[KEEP_PER_LAYER:]:
        discard(st.path)


def list_layer(layer: Layer) -> list[SavedState]:
    """The layer's published states (manifest readable), stale or not."""
    out = []
    if layer.states_dir.is_dir():
        for entry in sorted(layer.states_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            try:
                out.append(SavedState(entry, json.loads((entry / "manifest.json").read_text())))
            except (OSError, ValueError):
                continue
    return out


def disk_usage(state: SavedState) -> int:
    """Bytes the state really occupies (its RAM file and disk are sparse)."""
    files = state.manifest.get("files")
    names = [n for n in files if isinstance(n, str)] if isinstance(files, dict) else FILES
    return sum((state.path / n).stat().st_blocks * 512 for n in names
               if "/" not in n and (state.path / n).exists())


@contextlib.asynccontextmanager
async def building(layer: Layer, ident: dict[str, Any]) -> AsyncIterator[None]:
    """Hold the lock for saving the state of `ident`, so concurrent first starts save it
    once: the others wait, then find it. The lock is an flock, so a crashed holder frees
    it; it is polled rather than waited on in a thread, so a cancelled start leaves nothing
    blocked behind it."""
    layer.states_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(layer.states_dir / f".{key(ident)}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC,
                 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)
        yield
    finally:
        os.close(fd)


def inventory(home: Path | None = None, *, qemu: str | None = None) -> list[dict[str, Any]]:
    """Every saved state under the data dir, as rows for `shuru image list`: its layer, the
    options it was made with, its size, and whether this QEMU (`qemu`: its version line)
    can load it."""
    from .. import checkpoints
    from ..image.store import images_dir, load as load_image

    layers: list[Layer] = []
    root = images_dir(home)
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and (entry / "manifest.json").is_file():
                with contextlib.suppress(ShuruError):
                    layers.append(Layer.of_image(load_image(entry)))
    layers += [Layer.of_checkpoint(cp) for cp in checkpoints.list_all(home)]
    rows = []
    for layer in layers:
        for st in list_layer(layer):
            ident = st.manifest.get("identity", {})
            usable = qemu is None or ident.get("qemu") == qemu
            rows.append({
                "layer": layer.kind, "name": layer.name, "key": st.path.name,
                "cpus": ident.get("cpus"), "memory": ident.get("memory"),
                "disk_size": ident.get("disk_size"), "accel": ident.get("accel"),
                "qemu": ident.get("qemu"), "size": disk_usage(st),
                "created": st.manifest.get("created"),
                "status": "ok" if usable else "stale (made by another QEMU)",
                "path": str(st.path),
            })
    return rows
