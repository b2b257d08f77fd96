"""Locating and checking the installed guest image.

Layout under the data dir (`$SHURU_HOME`, default `~/.local/share/shuru`):

    images/<image_id>/{vmlinuz, initrd.img, rootfs.img, manifest.json}
    images/current -> <image_id>        (a relative symlink, replaced atomically)

`image_id` is derived from the files' hashes, so an image directory never changes once it is
written; sandboxes and checkpoints can refer to it by path. The manifest records versions and
the sha256 and size of each file: `verify` checks sizes (fast, on every start) or hashes
(`full=True`: `shuru doctor`, tests).

The agent and the recipe are baked into the image, so the manifest also records their
fingerprints; `is_current` tells whether this installation of shuru would build the same
thing, and `shuru init` rebuilds when it would not. `shuru.image.build` writes images; this module
only reads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from ..errors import ImageError

FORMAT = 1
FILES = ("vmlinuz", "initrd.img", "rootfs.img")
RECIPE_FILES = ("packages.txt", "modules.txt", "init")
AGENT_INIT = "shuru-init"  # the agent's PID 1 entry point, installed as /usr/sbin/shuru-init
REBUILD = "rebuild it with `shuru init --force`"


def shuru_home() -> Path:
    """The data dir: `$SHURU_HOME`, else `$XDG_DATA_HOME/shuru`, else ~/.local/share/shuru."""
    explicit = os.environ.get("SHURU_HOME")
    if explicit:
        return Path(explicit)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data) / "shuru"


def images_dir(home: Path | None = None) -> Path:
    return (home or shuru_home()) / "images"


@dataclass(frozen=True)
class Image:
    """An installed image: its directory and parsed manifest. File paths derive from `path`."""

    id: str
    path: Path
    manifest: dict = field(repr=False, compare=False)

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.img"


# ---- hashing (pure) -------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_id(file_hashes: dict[str, str]) -> str:
    """First 16 hex digits of a sha256 over the files' sha256s (name order, so stable)."""
    joined = "".join(f"{name}={file_hashes[name]}\n" for name in sorted(file_hashes))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def fingerprint(files: dict[str, bytes]) -> str:
    """A sha256 over named contents: any change of name or content changes it."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


# ---- what goes into an image ----------------------------------------------------------------


def _walk(node: Traversable, prefix: str = ""):
    for item in sorted(node.iterdir(), key=lambda t: t.name):
        if item.is_dir():
            if item.name != "__pycache__":
                yield from _walk(item, f"{prefix}{item.name}/")
        else:
            yield f"{prefix}{item.name}", item


def agent_files() -> dict[str, bytes]:
    """The guest agent as it will be installed, {path relative to the package: contents}:
    every `*.py` of the `shuru_guest` package, and its `shuru-init` entry point."""
    try:
        package = resources.files("shuru_guest")
    except ModuleNotFoundError:
        raise ImageError("the guest agent package `shuru_guest` is not installed",
                         hint="reinstall shuru (pip install shuru)") from None
    files = {name: item.read_bytes() for name, item in _walk(package)
             if name.endswith(".py") or name == AGENT_INIT}
    if AGENT_INIT not in files:
        raise ImageError(f"the guest agent package has no `{AGENT_INIT}` entry point",
                         hint="reinstall shuru (pip install shuru)")
    return files


def recipe_files() -> dict[str, bytes]:
    """The image recipe (package list, module list, initramfs /init) from `shuru_rootfs`."""
    package = resources.files("shuru_rootfs")
    return {name: (package / name).read_bytes() for name in RECIPE_FILES}


def agent_fingerprint() -> str:
    """Fingerprint of the agent files this installation would bake into an image."""
    return fingerprint(agent_files())


def recipe_fingerprint() -> str:
    return fingerprint(recipe_files())


# ---- reading and checking -------------------------------------------------------------------


def load(path: Path) -> Image:
    """The image in directory `path`, with its manifest parsed and its format checked."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ImageError(f"guest image at {path} has no manifest.json", hint=REBUILD) from None
    except (OSError, ValueError) as e:
        raise ImageError(f"guest image manifest {manifest_path} is unreadable: {e}",
                         hint=REBUILD) from None
    if not isinstance(manifest, dict):
        raise ImageError(f"guest image manifest {manifest_path} is not a JSON object",
                         hint=REBUILD)
    if manifest.get("format") != FORMAT:
        raise ImageError(f"guest image at {path} has format {manifest.get('format')!r}; "
                         f"this version of shuru reads format {FORMAT}", hint=REBUILD)
    return Image(str(manifest.get("image_id", path.name)), path, manifest)


def current_image(home: Path | None = None) -> Image:
    """The image `images/current` points to. Raises ImageError when there is none."""
    link = images_dir(home) / "current"
    if not link.is_symlink() and not link.exists():
        raise ImageError(f"no guest image installed ({link} does not exist)",
                         hint="run `shuru init` to build one (needs root and mmdebstrap; "
                              "takes a few minutes)")
    if not link.exists():
        raise ImageError(f"{link} points to {os.readlink(link)}, which does not exist",
                         hint="run `shuru init` to build the guest image again")
    return load(link.resolve())


def verify(image: Image, full: bool = False) -> None:
    """Check that every file is there with the recorded size; with `full`, re-hash them too
    (seconds for the root filesystem). Raises ImageError listing every problem found."""
    problems = []
    recorded = image.manifest.get("files", {})
    for name in FILES:
        path = image.path / name
        want = recorded.get(name, {})
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            problems.append(f"{path} is missing")
            continue
        if size != want.get("size"):
            problems.append(f"{path} has {size} bytes, the manifest says {want.get('size')}")
        elif full and sha256_file(path) != want.get("sha256"):
            problems.append(f"{path} does not match the sha256 in its manifest")
    if full and not problems:
        computed = image_id({name: recorded[name]["sha256"] for name in FILES})
        if computed != image.id:
            problems.append(f"the manifest's image_id {image.id} does not match its files "
                            f"({computed})")
    if problems:
        raise ImageError(f"guest image {image.id} is damaged: " + "; ".join(problems),
                         hint=REBUILD)


def stale_reason(image: Image) -> str | None:
    """Why this installation of shuru would build a different image, or None if it would not."""
    if image.manifest.get("agent_sha256") != agent_fingerprint():
        return "the guest agent changed since the image was built"
    if image.manifest.get("recipe_sha256") != recipe_fingerprint():
        return "the image recipe (packages, modules, initramfs) changed since it was built"
    return None


def is_current(image: Image) -> bool:
    return stale_reason(image) is None


def disk_usage(path: Path) -> int:
    """Bytes a directory really occupies (its image files are sparse)."""
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())


def image_status(home: Path | None = None) -> dict:
    """What `shuru doctor` shows about the image, as data: never raises for a missing or
    damaged image; `ok` says whether sandboxes can start from it and `stale` whether
    `shuru init` would rebuild it."""
    status: dict = {"home": str(home or shuru_home()), "ok": False}
    try:
        image = current_image(home)
        status.update(id=image.id, path=str(image.path))
        verify(image)
    except ImageError as e:
        return {**status, "error": e.message, "hint": e.hint}
    m = image.manifest
    try:
        reason = stale_reason(image)
    except ImageError as e:
        reason = e.message
    return {
        **status,
        "ok": True,
        "created": m.get("created"),
        "debian_suite": m.get("debian_suite"),
        "kernel_version": m.get("kernel_version"),
        "rootfs_size_mb": m.get("rootfs_size_mb"),
        "disk_usage_bytes": disk_usage(image.path),
        "stale": reason is not None,
        "stale_reason": reason,
    }
