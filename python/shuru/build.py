"""Building the guest image (`shuru init`): Debian rootfs, cloud kernel, our initramfs.

Steps, each reported to `progress(step, fraction)`:
1. mmdebstrap a Debian trixie minbase with the recipe's packages; inside it, download (not
   install) the versioned cloud kernel and busybox-static packages.
2. Unpack the kernel .deb on the host; install its modules into the rootfs and run depmod.
3. Install the guest agent and byte-compile it with the guest's own Python (the root disk is
   thrown away after every run, so anything compiled at run time is compiled every run).
4. Build the initramfs: busybox, our /init, and exactly the recipe's modules plus their
   dependencies (decompressed, in load order).
5. Make the ext4 root filesystem from the tree with mke2fs -d (no mounting, no loop devices).
6. Hash everything, write the manifest, move the result into place, repoint `current`.

All work happens in `images/.build-*`; only the final rename makes it visible, so a failed
or interrupted build leaves the previous image untouched. A lock serialises builds.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from . import cpio
from .errors import HostError, ImageError
from .image import (FILES, FORMAT, Image, agent_files, agent_fingerprint, current_image,
                    image_id, images_dir, is_current, load, recipe_files, sha256_file,
                    shuru_home, verify)

SUITE = "trixie"
ARCH = "amd64"
KERNEL_META = f"linux-image-cloud-{ARCH}"
BUSYBOX_APPLETS = ("sh", "mount", "umount", "insmod", "switch_root", "cat", "poweroff",
                   "sleep", "echo")
# mmdebstrap's phases in order, with how far along the whole step each one starts.
MMDEBSTRAP_PHASES = [
    ("I: downloading packages", 0.1), ("I: extracting archives", 0.35),
    ("I: installing essential packages", 0.5), ("I: installing remaining packages", 0.7),
    ("I: running --customize-hook", 0.9),
]

Progress = Callable[..., None]


def _no_progress(step: str, fraction: float | None = None) -> None:
    pass


# ---- pure helpers -----------------------------------------------------------------------


def recipe_lines(text: str) -> list[str]:
    """Non-empty, non-comment lines of a recipe file."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def parse_mirror(sources: dict[str, str]) -> str | None:
    """The host's main Debian archive URI from its apt configuration ({filename: text}):
    deb822 `.sources` stanzas or one-line `sources.list` entries. Security and backports
    archives are skipped: the guest needs the main archive."""
    candidates: list[str] = []
    for name, text in sources.items():
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith((" ", "#")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                if any("-" not in s for s in suites):
                    candidates += fields.get("uris", "").split()
        else:
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb" and "-" not in line[2]:
                    candidates.append(line[1])
    for uri in candidates:
        if not uri.rstrip("/").endswith(("-security", "-backports")):
            return uri.rstrip("/")
    return None


def host_mirror() -> str:
    explicit = os.environ.get("SHURU_MIRROR")
    if explicit:
        return explicit
    sources = {}
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
        if path.endswith((".list", ".sources")):
            with contextlib.suppress(OSError):
                sources[path] = Path(path).read_text()
    mirror = parse_mirror(sources)
    if not mirror:
        raise ImageError("cannot tell which Debian mirror to build the guest image from",
                         hint="set SHURU_MIRROR to a Debian archive URL")
    return mirror


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def resolve_modules(modules_dep: str, builtin: str, wanted: list[str]) -> list[str]:
    """Module paths (as in modules.dep) to load for `wanted`, dependencies first, each once.
    Names match with `-` and `_` treated alike; built-in modules are skipped."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[_module_name(path)] = (path.strip(), rest.split())
    built_in = {_module_name(line) for line in builtin.split()}
    order: list[str] = []
    missing: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            return  # modules.dep lists the full closure; a cycle cannot add anything new
        if name not in deps:
            if name not in built_in:
                missing.append(name)
            return
        path, needs = deps[name]
        for dep in needs:
            visit(_module_name(dep), chain + (name,))
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    if missing:
        raise ImageError(f"kernel modules not found in modules.dep or modules.builtin: "
                         f"{', '.join(sorted(set(missing)))}")
    return order


def decompress_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise ImageError(f"{path.name}: zstd-compressed modules are not supported")
    return data


def initramfs(busybox: bytes, init: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """The initramfs archive: busybox with the applets /init uses, /init, the modules and
    the order to load them in. /dev/console must exist, or PID 1 starts without stdio."""
    entries = [cpio.Entry.dir(d) for d in ("bin", "dev", "proc", "sys", "newroot", "lib",
                                           "lib/modules")]
    entries.append(cpio.Entry.chardev("dev/console", 5, 1))
    entries.append(cpio.Entry.file("bin/busybox", busybox, 0o755))
    entries += [cpio.Entry.symlink(f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS]
    entries.append(cpio.Entry.file("init", init, 0o755))
    names = []
    for name, data in modules:
        entries.append(cpio.Entry.file(f"lib/modules/{name}", data))
        names.append(name)
    entries.append(cpio.Entry.file("lib/modules.order", ("\n".join(names) + "\n").encode()))
    return cpio.archive(entries)


def rootfs_size_mb(used_bytes: int) -> int:
    """Room for the tree plus headroom, in 64 MiB steps; the guest grows it at boot to the
    sandbox's disk size."""
    want = used_bytes * 1.25 + 256 * 1024 * 1024
    step = 64 * 1024 * 1024
    return int(-(-want // step) * 64)


# ---- the build --------------------------------------------------------------------------


def _run(argv: list[str], what: str, log: Path | None = None, **kw) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    except OSError as e:
        raise HostError(f"{what}: cannot run {argv[0]}: {e.strerror}") from None
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise ImageError(f"{what} failed ({argv[0]} exited with {proc.returncode}):\n"
                         f"{_tail(proc.stderr or proc.stdout)}")
    return proc.stdout


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def check_tools() -> None:
    needed = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", "dpkg-deb": "dpkg",
              "depmod": "kmod", "chroot": "coreutils"}
    missing = {tool: pkg for tool, pkg in needed.items() if not shutil.which(tool)}
    if missing:
        raise HostError(f"building the guest image needs {', '.join(missing)}",
                        hint=f"install with: apt-get install {' '.join(sorted(set(missing.values())))}")
    if os.geteuid() != 0:
        raise HostError("building the guest image needs root (mmdebstrap, chroot)",
                        hint="run `sudo shuru init`")


def _mmdebstrap(tree: Path, debs: Path, mirror: str, log: Path, progress: Progress) -> None:
    step = f"Bootstrapping Debian {SUITE}"
    packages = recipe_lines(recipe_files()["packages.txt"].decode())
    # Runs on the host with the tree as $1; the download itself runs inside the tree, so it
    # sees the guest suite's package lists, not the host's.
    hook = debs.parent / "download-hook.sh"
    hook.write_text(
        "#!/bin/sh\nset -e\n"
        "chroot \"$1\" sh -c 'cd /tmp && apt-get download -q "
        f"\"$(apt-cache depends {KERNEL_META} | sed -n \"s/^ *Depends: //p\" "
        "| grep ^linux-image | head -1)\" busybox-static'\n")
    hook.chmod(0o755)
    download = f'{hook} "$1"'
    argv = [
        "mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        f"--customize-hook={download}",
        f"--customize-hook=sync-out /tmp {debs}",
        SUITE, str(tree), mirror,
    ]
    progress(step, 0.0)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, stdin=subprocess.DEVNULL)
        try:
            for line in proc.stdout:
                f.write(line)
                for marker, fraction in MMDEBSTRAP_PHASES:
                    if line.startswith(marker):
                        progress(step, fraction)
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise ImageError(f"mmdebstrap failed (exit {proc.returncode}); the last lines of {log}:\n"
                         f"{_tail(log.read_text(errors='replace'))}")
    progress(step, 1.0)


def _one(pattern: str, what: str) -> Path:
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise ImageError(f"expected one {what} ({pattern}), found {len(found)}")
    return Path(found[0])


def _tree_bytes(tree: Path) -> int:
    total = 0
    for root, _, files in os.walk(tree):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _package_versions(tree: Path, names: list[str]) -> dict[str, str]:
    out = _run(["chroot", str(tree), "dpkg-query", "-W", "-f", "${Package}\t${Version}\n",
                *names], "reading package versions")
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def _build(work: Path, mirror: str, progress: Progress) -> Path:
    """Build into `work`; return the directory holding the finished image files."""
    tree, debs, kdir, out = work / "tree", work / "debs", work / "kernel", work / "out"
    for d in (debs, kdir, out):
        d.mkdir()
    log = work / "build.log"
    _mmdebstrap(tree, debs, mirror, log, progress)

    step = "Installing kernel, modules and agent"
    progress(step, 0.0)
    kernel_deb = _one(str(debs / "linux-image-*.deb"), "kernel package")
    busybox_deb = _one(str(debs / "busybox-static_*.deb"), "busybox-static package")
    _run(["dpkg-deb", "-x", str(kernel_deb), str(kdir)], "unpacking the kernel", log)
    modroot = next((p for p in (kdir / "usr/lib/modules", kdir / "lib/modules") if p.is_dir()), None)
    if modroot is None:
        raise ImageError(f"{kernel_deb.name} has no lib/modules")
    kver = _one(str(modroot / "*"), "kernel module directory").name
    shutil.copy2(_one(str(kdir / "boot" / f"vmlinuz-{kver}"), "vmlinuz"), out / "vmlinuz")
    target = tree / "usr/lib/modules"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(modroot / kver, target / kver, symlinks=True)
    _run(["depmod", "-b", str(tree), kver], "depmod", log)
    progress(step, 0.3)

    agent_dir = tree / "usr/lib/shuru/shuru_guest"
    agent_dir.mkdir(parents=True)
    for name, data in agent_files().items():
        if name == "shuru-init":
            dest = tree / "usr/sbin/shuru-init"
            dest.write_bytes(data)
            dest.chmod(0o755)
        else:
            (agent_dir / name).write_bytes(data)
    _run(["chroot", str(tree), "/usr/bin/python3", "-m", "compileall", "-q", "/usr/lib/shuru"],
         "byte-compiling the agent", log)
    (tree / "etc/hostname").write_text("shuru\n")
    (tree / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tshuru\n"
                                    "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (tree / "etc/resolv.conf").write_text("")
    progress(step, 1.0)

    step = "Building initramfs"
    progress(step, 0.0)
    bbdir = work / "busybox"
    _run(["dpkg-deb", "-x", str(busybox_deb), str(bbdir)], "unpacking busybox", log)
    busybox = next(p for p in (bbdir / "bin/busybox", bbdir / "usr/bin/busybox") if p.exists())
    moddir = tree / "usr/lib/modules" / kver
    wanted = recipe_lines(recipe_files()["modules.txt"].decode())
    paths = resolve_modules((moddir / "modules.dep").read_text(),
                            (moddir / "modules.builtin").read_text(), wanted)
    modules = [(_module_name(p) + ".ko", decompress_module(moddir / p)) for p in paths]
    (out / "initrd.img").write_bytes(
        initramfs(busybox.read_bytes(), recipe_files()["init"], modules))
    progress(step, 1.0)

    step = "Making the root filesystem"
    progress(step, 0.0)
    size_mb = rootfs_size_mb(_tree_bytes(tree))
    packages = recipe_lines(recipe_files()["packages.txt"].decode())
    versions = _package_versions(tree, packages)
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), "-L", "shuru-root", "-m", "0",
          str(out / "rootfs.img"), f"{size_mb}M"], "making the ext4 root filesystem", log)
    progress(step, 0.7)

    hashes = {name: sha256_file(out / name) for name in FILES}
    manifest = {
        "format": FORMAT,
        "image_id": image_id(hashes),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arch": ARCH,
        "debian_suite": SUITE,
        "kernel_version": kver,
        "kernel_package": kernel_deb.name.split("_")[0],
        "kernel_package_version": kernel_deb.name.split("_")[1],
        "busybox_version": busybox_deb.name.split("_")[1].replace("%3a", ":"),
        "packages": versions,
        "initramfs_modules": [name for name, _ in modules],
        "agent_sha256": agent_fingerprint(),
        "rootfs_size_mb": size_mb,
        "files": {name: {"sha256": hashes[name], "size": (out / name).stat().st_size}
                  for name in FILES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    progress(step, 1.0)
    return out


@contextlib.contextmanager
def _build_lock(images: Path, progress: Progress):
    fd = os.open(images / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("Waiting for another `shuru init` to finish", None)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _set_current(images: Path, target: Path) -> None:
    tmp = images / f".current-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, images / "current")


def build_image(home: Path | None = None, *, force: bool = False, mirror: str | None = None,
                progress: Progress | None = None) -> Image:
    """Build (or reuse) the guest image and make it current. Without `force`, a valid image
    built from this version's agent and recipe is returned at once."""
    progress = progress or _no_progress
    images = images_dir(home or shuru_home())
    images.mkdir(parents=True, exist_ok=True)
    with _build_lock(images, progress):
        if not force:
            with contextlib.suppress(ImageError):
                image = current_image(home)
                verify(image)
                if is_current(image):
                    return image
        check_tools()
        mirror = mirror or host_mirror()
        for stale in images.glob(".build-*"):  # we hold the lock: nobody else is building
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
        try:
            out = _build(work, mirror, progress)
            new_id = json.loads((out / "manifest.json").read_text())["image_id"]
            final = images / new_id
            if final.exists():
                shutil.rmtree(final)  # same content id: replace a possibly damaged copy
            os.rename(out, final)
            _set_current(images, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _remove_unused(images, keep=final)
        return load(final)


def _remove_unused(images: Path, keep: Path) -> None:
    """Old images nothing refers to any more. (A running sandbox keeps its open files.)"""
    for entry in images.iterdir():
        if entry.is_dir() and not entry.name.startswith(".") and entry != keep:
            shutil.rmtree(entry, ignore_errors=True)
