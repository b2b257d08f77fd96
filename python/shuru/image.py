"""Locating and checking the installed guest image.

Layout under the data dir (`$SHURU_HOME`, default `~/.local/share/shuru`):

    images/<image_id>/{vmlinuz, initrd.img, rootfs.img, manifest.json}
    images/current -> <image_id>        (a symlink, replaced atomically)

`image_id` is derived from the files' hashes, so an image's directory never changes once
written. The manifest records versions and sha256 of each file; `verify` checks sizes
(fast, every start) or full hashes (`shuru doctor`, tests).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import ImageError

FORMAT = 1
FILES = ("vmlinuz", "initrd.img", "rootfs.img")


def shuru_home() -> Path:
    explicit = os.environ.get("SHURU_HOME")
    if explicit:
        return Path(explicit)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data) / "shuru"


def images_dir(home: Path | None = None) -> Path:
    return (home or shuru_home()) / "images"


@dataclass(frozen=True)
class Image:
    id: str
    path: Path
    manifest: dict = field(repr=False)

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.img"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def image_id(file_hashes: dict[str, str]) -> str:
    joined = "".join(f"{name}={file_hashes[name]}\n" for name in sorted(file_hashes))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def agent_files() -> dict[str, bytes]:
    """The guest agent as it will be installed: {relative path: contents}."""
    pkg = resources.files("shuru_guest")
    out = {}
    for item in sorted(pkg.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".py") or item.name == "shuru-init":
            out[item.name] = item.read_bytes()
    return out


def recipe_files() -> dict[str, bytes]:
    """The image recipe (package list, module list, initramfs /init)."""
    pkg = resources.files("shuru_rootfs")
    return {name: (pkg / name).read_bytes() for name in ("packages.txt", "modules.txt", "init")}


def agent_fingerprint() -> str:
    """Hash of everything baked into the image that lives in this source tree: when it
    changes, the image is stale and `shuru init` rebuilds it."""
    h = hashlib.sha256()
    for group in (agent_files(), recipe_files()):
        for name, data in group.items():
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def load(path: Path) -> Image:
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ImageError(f"guest image at {path} has no manifest.json",
                         hint="rebuild it with `shuru init --force`") from None
    except (OSError, ValueError) as e:
        raise ImageError(f"guest image manifest {manifest_path} is unreadable: {e}",
                         hint="rebuild it with `shuru init --force`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ImageError(f"guest image at {path} has format {manifest.get('format')!r}, "
                         f"this shuru reads format {FORMAT}",
                         hint="rebuild it with `shuru init --force`")
    return Image(manifest.get("image_id", path.name), path, manifest)


def current_image(home: Path | None = None) -> Image:
    link = images_dir(home) / "current"
    if not link.exists():
        raise ImageError(f"no guest image in {images_dir(home)}",
                         hint="build one with `shuru init` (needs mmdebstrap; takes a minute)")
    return load(link.resolve())


def verify(image: Image, *, full: bool = False) -> None:
    """Check that every file is present with the recorded size (and hash, when full)."""
    problems = []
    for name in FILES:
        path = image.path / name
        want = image.manifest.get("files", {}).get(name, {})
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        if path.stat().st_size != want.get("size"):
            problems.append(f"{path} has size {path.stat().st_size}, manifest says {want.get('size')}")
        elif full and sha256_file(path) != want.get("sha256"):
            problems.append(f"{path} does not match its sha256 in the manifest")
    if problems:
        raise ImageError("guest image is damaged: " + "; ".join(problems),
                         hint="rebuild it with `shuru init --force`")


def is_current(image: Image) -> bool:
    """True when the image was built from this version's agent and recipe."""
    return image.manifest.get("agent_sha256") == agent_fingerprint()
