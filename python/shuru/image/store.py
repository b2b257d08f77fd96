"""Locating and checking the installed guest image.

Layout under the data dir (`$SHURU_HOME`, default `~/.local/share/shuru`):

    images/<image_id>/{vmlinuz, initrd.img, rootfs.img, manifest.json}
    images/current -> <image_id>        (a relative symlink, replaced atomically)
    images/current-<arch> -> <image_id> (images for another architecture, e.g. arm64 on x86)

`current` is the image for the host's own architecture, as it always was, so existing data
dirs keep working; an image for a foreign architecture (built with `shuru init --arch arm64`
to carry to a Mac, or booted here under emulation) has its own `current-<arch>`. Each
manifest records its Debian architecture (`arch`).

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

from ..errors import HostError, ImageError

FORMAT = 1
FILES = ("vmlinuz", "initrd.img", "rootfs.img")
RECIPE_FILES = ("packages.txt", "modules.txt", "init")
AGENT_INIT = "shuru-init"  # the agent's PID 1 entry point, installed as /usr/sbin/shuru-init
REBUILD = "rebuild it with `shuru init --force`"
# Debian's names for the architectures shuru builds images for, and the other spellings
# users (and `uname -m`) give them.
ARCHES = ("amd64", "arm64")
ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64"}


def shuru_home() -> Path:
    """The data dir: `$SHURU_HOME`, else `$XDG_DATA_HOME/shuru`, else ~/.local/share/shuru."""
    explicit = os.environ.get("SHURU_HOME")
    if explicit:
        return Path(explicit)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data) / "shuru"


def images_dir(home: Path | None = None) -> Path:
    return (home or shuru_home()) / "images"


def make_images_dir(home: Path | None = None) -> Path:
    """The images directory, created if needed (before a build or an import writes there)."""
    images = images_dir(home)
    try:
        images.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HostError(f"cannot create {images}: {e.strerror}",
                        hint="set SHURU_HOME to a writable directory") from None
    return images


# ---- architectures (pure) -------------------------------------------------------------------


def normalize_arch(name: str, *, flag: str = "--arch") -> str:
    """Debian's name for an architecture (`aarch64` -> `arm64`); ImageError naming `flag`
    for one shuru has no image recipe for."""
    arch = ARCH_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if arch not in ARCHES:
        raise ImageError(f"{flag} {name!r}: unknown architecture; shuru builds images for "
                         + ", ".join(ARCHES))
    return arch


def host_arch(machine: str | None = None) -> str:
    """The host's architecture in Debian's naming (from `uname -m`)."""
    machine = machine or os.uname().machine
    return ARCH_ALIASES.get(machine, machine)


def current_link_name(arch: str | None = None, host: str | None = None) -> str:
    """The `images/` entry that names the current image for `arch`: `current` for the
    host's own architecture (the layout before images had an arch), `current-<arch>` else."""
    host = host or host_arch()
    return "current" if (arch or host) == host else f"current-{arch}"


def image_arch(image: "Image") -> str:
    """An image's architecture; manifests have always recorded it (amd64 before arm64)."""
    return str(image.manifest.get("arch") or "amd64")


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


def recipe_fingerprint(arch: str = "amd64") -> str:
    """The recipe's fingerprint for an image of `arch`; amd64's is the one it always was,
    so existing images stay current."""
    files = recipe_files()
    if arch != "amd64":
        files["arch"] = arch.encode()
    return fingerprint(files)


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


def current_image(home: Path | None = None, arch: str | None = None) -> Image:
    """The current image for `arch` (default: the host's). Raises ImageError when there is
    none."""
    link = images_dir(home) / current_link_name(arch)
    if not link.is_symlink() and not link.exists():
        if arch and arch != host_arch():
            raise ImageError(f"no {arch} guest image installed ({link} does not exist), "
                             f"which --arch {arch} (config field `arch`) needs",
                             hint=f"run `shuru init --arch {arch}` to build one (needs root, "
                                  f"mmdebstrap and qemu-user-static), or bring one built "
                                  f"elsewhere with `shuru image import FILE`")
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
    if image.manifest.get("recipe_sha256") != recipe_fingerprint(image_arch(image)):
        return "the image recipe (packages, modules, initramfs) changed since it was built"
    return None


def is_current(image: Image) -> bool:
    return stale_reason(image) is None


def disk_usage(path: Path) -> int:
    """Bytes a directory really occupies (its image files are sparse)."""
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())


def current_images(home: Path | None = None) -> dict[str, Path]:
    """{link name: the image directory it points to} for every `current*` link that resolves."""
    out = {}
    images = images_dir(home)
    for link in sorted(images.glob("current*")):
        if link.is_symlink() and link.exists():
            out[link.name] = link.resolve()
    return out


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
        "arch": image_arch(image),
        "debian_suite": m.get("debian_suite"),
        "kernel_version": m.get("kernel_version"),
        "rootfs_size_mb": m.get("rootfs_size_mb"),
        "disk_usage_bytes": disk_usage(image.path),
        "stale": reason is not None,
        "stale_reason": reason,
    }
