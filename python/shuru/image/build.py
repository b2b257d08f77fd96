"""Building the guest image (`shuru init`): a Debian rootfs, the Debian cloud kernel and our
own small initramfs, following the recipe in `shuru_rootfs`.

Steps, each reported to `progress(step, fraction)`:

1. mmdebstrap a Debian trixie minbase with the recipe's packages (docs, man pages and locales
   left out). Inside it, a hook *downloads* (does not install) the versioned cloud kernel and
   busybox-static: installing the kernel would pull in initramfs-tools and a 17 MB initrd.
2. Unpack the kernel .deb on the host: vmlinuz becomes the image's kernel, its modules go
   into the rootfs, and depmod writes the modules.dep the package does not ship.
3. Install the guest agent (byte-compiled by the guest's own Python: the root disk is thrown
   away after every run, so anything compiled at run time would be compiled on every run).
4. Build the initramfs: static busybox, the recipe's /init, and exactly the recipe's modules
   plus their dependencies, decompressed, with the order to load them in.
5. Make the ext4 root filesystem from the tree with `mke2fs -d` (no mounts, no loop devices).
6. Hash the files, write the manifest, move the result into place, repoint `current`.

For another architecture (`shuru init --arch arm64` on an x86 host: the image
Virtualization.framework boots on Apple silicon), mmdebstrap installs the foreign packages
and runs their maintainer scripts through qemu-user-static via binfmt_misc, the kernel is
that architecture's cloud kernel, and an arm64 kernel is stored uncompressed (VZ boots only a
raw `Image`). The image becomes `current-<arch>` (see `shuru.image`).

All work happens in `images/.build-*`; only the final rename makes the image visible, so a
failed or interrupted build leaves the previous image and `current` untouched. An flock on
`images/.lock` serialises builds.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import gzip
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Protocol

from . import cpio
from ..launch import states
from ..errors import HostError, ImageError, ShuruError
from .store import (
    AGENT_INIT,
    FILES,
    FORMAT,
    Image,
    agent_files,
    current_image,
    current_images,
    current_link_name,
    fingerprint,
    host_arch,
    image_id,
    images_dir,
    is_current,
    make_images_dir,
    load,
    recipe_files,
    sha256_file,
    shuru_home,
    verify,
)

SUITE = "trixie"
ARCH = "amd64"  # the default; `build_image(arch=...)` builds for another
# qemu-user's name for each foreign architecture (its binfmt_misc entry is qemu-<name>)
QEMU_USER = {"arm64": "aarch64", "amd64": "x86_64"}
# Every applet /init calls; the rest of busybox stays reachable as `busybox <applet>`.
BUSYBOX_APPLETS = ("sh", "mount", "insmod", "sleep", "switch_root", "poweroff")
AGENT_DIR = "usr/lib/shuru/shuru_guest"
# mmdebstrap's progress lines, and how far through the bootstrap step each one starts.
MMDEBSTRAP_PHASES = (
    ("I: downloading packages", 0.1), ("I: extracting archives", 0.35),
    ("I: installing essential packages", 0.5), ("I: installing remaining packages", 0.7),
    ("I: running --customize-hook", 0.9), ("I: cleaning package lists", 0.95),
)
MIB = 1024 * 1024
# Suite names that identify a Debian archive in the host's apt sources.
DEBIAN_SUITES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
                 "oldstable", "stable", "testing", "unstable"}


class Progress(Protocol):
    """How builders report long steps. `fraction` is None while a step's length is unknown
    and 1.0 when the step is done. `shuru.cli.progress.RichProgress` renders it."""

    def __call__(self, step: str, fraction: float | None = None) -> None: ...


def _no_progress(step: str, fraction: float | None = None) -> None:
    pass


# ---- pure helpers -----------------------------------------------------------------------


def recipe_lines(text: str) -> list[str]:
    """The entries of a recipe list: one per line, `#` starts a comment."""
    return [entry for line in text.splitlines() if (entry := line.split("#", 1)[0].strip())]


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Stanzas of a deb822 file as {lower-case field: value}; continuation lines joined."""
    fields: dict[str, str] = {}
    key = None
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line[0] in " \t" and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def apt_sources(files: Mapping[str, str]) -> list[tuple[str, list[str], list[str]]]:
    """Enabled binary (`deb`) sources from apt configuration texts ({file name: text}):
    `*.sources` in deb822 form, anything else in one-line `sources.list` form.
    Returns (uri, suites, components) in file order."""
    out = []
    for name, text in files.items():
        if name.endswith(".sources"):
            for f in _deb822_stanzas(text):
                if "deb" in f.get("types", "").split() and f.get("enabled", "yes") != "no":
                    for uri in f.get("uris", "").split():
                        out.append((uri, f.get("suites", "").split(),
                                    f.get("components", "").split()))
        else:
            for line in text.splitlines():
                # drop comments and `[ options ]`, keep: deb URI SUITE COMPONENT...
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    out.append((words[1], [words[2]], words[3:]))
    return out


def pick_mirror(sources: list[tuple[str, list[str], list[str]]]) -> str | None:
    """The main Debian archive among apt sources: one with the `main` component and a plain
    Debian suite (not -security/-updates/-backports, which live elsewhere or lack packages),
    preferring a URI that ends in /debian. Third-party and non-Debian archives never match."""
    candidates = [uri.rstrip("/") for uri, suites, components in sources
                  if "main" in components and DEBIAN_SUITES & set(suites)]
    preferred = [uri for uri in candidates if uri.endswith("/debian")]
    return (preferred or candidates or [None])[0]


def resolve_modules(modules_dep_text: str, wanted: list[str], builtin_text: str = "") -> list[str]:
    """Module paths (as modules.dep writes them) to load for `wanted`, dependencies first,
    each once. Names match with `-` and `_` alike. A wanted module that is not in modules.dep
    but in modules.builtin (`builtin_text`) is skipped; one in neither is an error."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in modules_dep_text.splitlines():
        path, sep, rest = line.partition(":")
        if sep:
            deps[module_name(path)] = (path.strip(), rest.split())
    builtin = builtin_modules(builtin_text)
    order: list[str] = []
    missing = [name for name in wanted
               if module_name(name) not in deps and module_name(name) not in builtin]
    if missing:
        raise ImageError("kernel modules neither in modules.dep nor built in: "
                         + ", ".join(missing))

    def visit(name: str, visiting: frozenset[str]) -> None:
        if name not in deps or name in visiting:
            return  # built in; or a cycle, which modules.dep (a full closure) cannot extend
        path, needs = deps[name]
        for dep in needs:
            visit(module_name(dep), visiting | {name})
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(module_name(name), frozenset())
    return order


def module_name(path: str) -> str:
    """`kernel/drivers/char/hw_random/virtio-rng.ko.xz` -> `virtio_rng`."""
    base = path.strip().rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base).replace("-", "_")


def builtin_modules(builtin_text: str) -> set[str]:
    return {module_name(line) for line in builtin_text.split()}


def decompress_module(name: str, data: bytes) -> bytes:
    """Plain .ko bytes: busybox insmod cannot load compressed modules."""
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        raise ImageError(f"{name}: zstd-compressed kernel modules are not supported")
    return data


def initramfs(busybox: bytes, init: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """The initramfs archive (uncompressed newc: measured fastest to boot): busybox with the
    applets /init uses, /init, the modules as /lib/modules/<name>.ko and /lib/modules.order
    listing them in load order. /dev/console must be in the archive itself, or PID 1 starts
    without stdin/stdout/stderr."""
    entries = [cpio.Entry.dir(d) for d in ("bin", "dev", "proc", "sys", "newroot", "lib",
                                           "lib/modules")]
    entries.append(cpio.Entry.chardev("dev/console", 5, 1))
    entries.append(cpio.Entry.file("bin/busybox", busybox, 0o755))
    entries += [cpio.Entry.symlink(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    entries.append(cpio.Entry.file("init", init, 0o755))
    order = []
    for name, data in modules:
        path = f"lib/modules/{name}"
        entries.append(cpio.Entry.file(path, data))
        order.append(f"/{path}\n")
    entries.append(cpio.Entry.file("lib/modules.order", "".join(order).encode()))
    return cpio.archive(entries)


def rootfs_size_mb(used_bytes: int) -> int:
    """ext4 size for a tree: a quarter more than it uses plus 256 MiB, in 64 MiB steps. Small
    on purpose: the guest grows the filesystem to the sandbox's disk size at boot."""
    want = used_bytes * 5 // 4 + 256 * MIB
    return -(-want // (64 * MIB)) * 64


def mounts_under(mountinfo_text: str, path: str) -> list[str]:
    """Mount points at or below `path` in /proc/self/mountinfo text, deepest first."""
    root = path.rstrip("/")
    found = []
    for line in mountinfo_text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            # mountinfo escapes space, tab, newline and backslash as octal
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def kernel_meta(arch: str) -> str:
    """The Debian meta package that points at the current cloud kernel for `arch`."""
    return f"linux-image-cloud-{arch}"


def mmdebstrap_argv(tree: Path, mirror: str, packages: list[str], hook: Path,
                    debs: Path, arch: str = ARCH) -> list[str]:
    return [
        "mmdebstrap", "--variant=minbase", f"--architectures={arch}",
        f"--include={','.join(packages)}",
        # Documentation and translations are a quarter of minbase; keep the licences.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        f'--customize-hook={shlex.quote(str(hook))} "$1"',
        f"--customize-hook=sync-out /tmp/shuru-debs {shlex.quote(str(debs))}",
        SUITE, str(tree), mirror,
    ]


# The customize hook: $1 is the new root. The download runs inside it, with the guest suite's
# package lists, so the kernel is the one the suite's meta package points to today.
def download_hook(arch: str = ARCH) -> str:
    meta = kernel_meta(arch)
    return f"""#!/bin/sh
set -eu
chroot "$1" sh -eu -c '
kernel=$(apt-cache depends {meta} | sed -n "s/^ *Depends: \\(linux-image-[^ ]*\\).*/\\1/p" | head -n 1)
[ -n "$kernel" ] || {{ echo "E: cannot resolve {meta} to a kernel package" >&2; exit 1; }}
mkdir -p /tmp/shuru-debs
cd /tmp/shuru-debs
apt-get download -q "$kernel" busybox-static
'
"""


DOWNLOAD_HOOK = download_hook()


def foreign_arch_problem(arch: str, host: str, binfmt_entry: str | None,
                         have_arch_test: bool) -> str | None:
    """Why this host cannot run `arch`'s programs for a build (None if it can, or `arch` is
    its own). `binfmt_entry` is the text of /proc/sys/fs/binfmt_misc/qemu-<name>, None when
    it does not exist. mmdebstrap runs the packages' maintainer scripts through it."""
    if arch == host:
        return None
    name = QEMU_USER.get(arch, arch)
    setup = (f"apt-get install qemu-user-static binfmt-support arch-test && "
             f"update-binfmts --enable qemu-{name} (or: scripts/setup {arch})")
    if binfmt_entry is None:
        return (f"building an {arch} image on this {host} host needs qemu-user-static "
                f"registered with binfmt_misc (no /proc/sys/fs/binfmt_misc/qemu-{name}); "
                f"run: {setup}")
    if not binfmt_entry.startswith("enabled"):
        return (f"the binfmt_misc entry qemu-{name} is disabled; run: "
                f"update-binfmts --enable qemu-{name}")
    if not have_arch_test:
        return (f"mmdebstrap needs arch-test to build for a foreign architecture; run: "
                f"apt-get install arch-test")
    return None


def decompress_kernel(data: bytes) -> bytes:
    """A gzip-compressed kernel (Debian's arm64 vmlinuz) as the raw `Image`: VZ's Linux boot
    loader takes only an uncompressed arm64 kernel (QEMU takes both)."""
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


# ---- host configuration -----------------------------------------------------------------


def host_mirror(environ: Mapping[str, str] = os.environ, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive to build from: `$SHURU_MIRROR`, else the host's apt sources."""
    if environ.get("SHURU_MIRROR"):
        return environ["SHURU_MIRROR"]
    paths = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    files = {}
    for path in paths:
        if path.suffix in (".list", ".sources"):
            with contextlib.suppress(OSError):
                files[str(path)] = path.read_text()
    mirror = pick_mirror(apt_sources(files))
    if not mirror:
        raise ImageError(f"cannot find a Debian archive in the apt sources under {apt_dir}",
                         hint="set SHURU_MIRROR to the URL of a Debian mirror")
    return mirror


def check_foreign(arch: str) -> None:
    """Fail before building when the host cannot run `arch`'s programs."""
    entry = Path("/proc/sys/fs/binfmt_misc") / f"qemu-{QEMU_USER.get(arch, arch)}"
    try:
        text = entry.read_text()
    except OSError:
        text = None
    problem = foreign_arch_problem(arch, host_arch(), text, bool(shutil.which("arch-test")))
    if problem:
        raise HostError(problem)


# ---- building without root (pure decision, then the user namespace) -------------------------


def subid_range(text: str, user: str, uid: int) -> tuple[int, int] | None:
    """The first (start, count) range /etc/subuid (or subgid) text gives `user` (by name or
    uid), as newuidmap reads it; None if it gives none."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)):
            with contextlib.suppress(ValueError):
                start, count = int(fields[1]), int(fields[2])
                if count > 0:
                    return start, count
    return None


# A root filesystem needs ids up to 65534 (nobody) mapped besides root.
SUBIDS_NEEDED = 65535


def rootless_problem(*, user: str, uid: int, userns_clone: str | None,
                     max_user_namespaces: str | None, apparmor_restrict: str | None,
                     have_newuidmap: bool, have_unshare: bool, subuid_text: str,
                     subgid_text: str) -> str | None:
    """Why `shuru init` cannot build as this non-root user in a user namespace (None if it
    can), naming exactly what to run. The build then runs as root of a user namespace that
    maps this user to root and its subordinate ids to 1..65535, where mmdebstrap, chroot and
    mke2fs see the ids the image must hold."""
    if userns_clone is not None and userns_clone.strip() == "0":
        return ("unprivileged user namespaces are disabled; run: "
                "sudo sysctl -w kernel.unprivileged_userns_clone=1")
    if max_user_namespaces is not None and max_user_namespaces.strip() == "0":
        return "user namespaces are disabled; run: sudo sysctl -w user.max_user_namespaces=15000"
    if apparmor_restrict is not None and apparmor_restrict.strip() == "1":
        return ("AppArmor restricts unprivileged user namespaces; run: "
                "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
    if not have_newuidmap:
        return "newuidmap and newgidmap are missing; run: sudo apt-get install uidmap"
    if not have_unshare:
        return "unshare is missing; run: sudo apt-get install util-linux"
    for kind, text in (("subuid", subuid_text), ("subgid", subgid_text)):
        found = subid_range(text, user, uid)
        if found is None or found[1] < SUBIDS_NEEDED:
            return (f"/etc/{kind} gives {user} no range of {SUBIDS_NEEDED}+ ids; run: sudo "
                    f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}")
    return None


def unshare_argv(uids: tuple[int, int], gids: tuple[int, int], inner: list[str]) -> list[str]:
    """Run `inner` as root of a new user namespace (this user as root, its subordinate ids as
    1..count), with its own mount and pid namespaces so nothing mounted outlives it."""
    return ["unshare", "--map-root-user",
            f"--map-users={uids[0]},1,{min(uids[1], SUBIDS_NEEDED)}",
            f"--map-groups={gids[0]},1,{min(gids[1], SUBIDS_NEEDED)}",
            "--mount", "--pid", "--fork", "--kill-child", "--", *inner]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _host_userns_facts() -> dict:
    import pwd

    uid = os.getuid()
    return dict(user=pwd.getpwuid(uid).pw_name, uid=uid,
                userns_clone=_read("/proc/sys/kernel/unprivileged_userns_clone"),
                max_user_namespaces=_read("/proc/sys/user/max_user_namespaces"),
                apparmor_restrict=_read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
                have_newuidmap=bool(shutil.which("newuidmap") and shutil.which("newgidmap")),
                have_unshare=bool(shutil.which("unshare")),
                subuid_text=_read("/etc/subuid") or "", subgid_text=_read("/etc/subgid") or "")


def _build_rootless(home: Path | None, *, force: bool, mirror: str | None,
                    arch: str) -> Image:
    """Run `shuru init` again as root of a user namespace; it prints its own progress."""
    facts = _host_userns_facts()
    problem = rootless_problem(**facts)
    if problem:
        raise HostError(f"building the guest image needs root, or user namespaces for "
                        f"{facts['user']}: {problem}",
                        hint="or run `sudo shuru init` (with SHURU_HOME set to share the image)")
    uids = subid_range(facts["subuid_text"], facts["user"], facts["uid"])
    gids = subid_range(facts["subgid_text"], facts["user"], facts["uid"])
    assert uids and gids  # rootless_problem found none missing
    inner = [sys.executable, "-m", "shuru.cli", "init", "--arch", arch,
             *(["--force"] if force else [])]
    env = {**os.environ, "SHURU_HOME": str(home or shuru_home())}
    if mirror:
        env["SHURU_MIRROR"] = mirror
    try:
        proc = subprocess.run(unshare_argv(uids, gids, inner), env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError as e:
        raise HostError(f"cannot run unshare: {e.strerror}") from None
    if proc.returncode != 0:
        raise ImageError(f"building the guest image in a user namespace failed (exit status "
                         f"{proc.returncode}; its error is above)")
    return current_image(home, arch)


def check_tools() -> None:
    needed = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", "dpkg-deb": "dpkg",
              "dpkg-query": "dpkg", "depmod": "kmod", "chroot": "coreutils"}
    missing = {tool: pkg for tool, pkg in needed.items() if not shutil.which(tool)}
    if missing:
        raise HostError(f"building the guest image needs {', '.join(missing)}",
                        hint=f"install with: apt-get install {' '.join(sorted(set(missing.values())))}")
    if os.geteuid() != 0:
        raise HostError("building the guest image needs root (mmdebstrap creates device nodes "
                        "and chroots into the new tree)",
                        hint="run `shuru init` as root; point SHURU_HOME at a directory other "
                             "users can read to share the image")


# ---- running things ---------------------------------------------------------------------


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run(argv: list[str], what: str, log: Path) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise HostError(f"{what}: cannot run {argv[0]}: {e.strerror}") from None
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        raise ImageError(f"{what} failed ({argv[0]} exited with status {proc.returncode}):\n"
                         f"{_tail(proc.stderr or proc.stdout)}")
    return proc.stdout


def _mmdebstrap(argv: list[str], log: Path, progress: Progress) -> None:
    step = f"Bootstrapping Debian {SUITE}"
    progress(step, 0.0)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace",
                                    preexec_fn=_term_with_parent)
        except OSError as e:
            raise HostError(f"cannot run mmdebstrap: {e.strerror}") from None
        try:
            for line in proc.stdout:
                f.write(line)
                for marker, fraction in MMDEBSTRAP_PHASES:
                    if line.startswith(marker):
                        progress(step, fraction)
            proc.wait()
        except BaseException:
            _stop(proc)
            raise
    if proc.returncode != 0:
        raise ImageError(f"mmdebstrap failed (exit status {proc.returncode}); the end of its "
                         f"log:\n{_tail(log.read_text(errors='replace'))}")
    progress(step, 1.0)


def _term_with_parent() -> None:
    """In the child: get SIGTERM (and clean up) if shuru dies, rather than build on alone."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(proc: subprocess.Popen) -> None:
    """End mmdebstrap gently: it has the host's /proc and /sys mounted into the tree and
    unmounts them when it gets SIGTERM. SIGKILL only if it does not finish."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def remove_tree(path: Path) -> None:
    """rmtree that never descends into a mount: a build killed mid-way can leave the host's
    /proc, /sys or /dev/pts mounted inside its tree. Unmount those first (lazily: nothing
    may hold them open), and refuse to delete if any remain."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        mountinfo = ""
    for point in mounts_under(mountinfo, str(path.resolve())):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    with contextlib.suppress(OSError):
        mountinfo = Path("/proc/self/mountinfo").read_text()
    left = mounts_under(mountinfo, str(path.resolve()))
    if left:
        raise ImageError(f"cannot remove {path}: {left[0]} is still mounted",
                         hint=f"unmount it (umount -R {left[0]}), then remove {path}")
    shutil.rmtree(path, ignore_errors=True)


# ---- build steps ------------------------------------------------------------------------


def _one(directory: Path, pattern: str, what: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise ImageError(f"expected one {what} ({directory}/{pattern}), found {len(found)}")
    return found[0]


def _deb_fields(deb: Path) -> tuple[str, str]:
    """(package, version) from a .deb's file name, `name_version_arch.deb`."""
    name, version, _ = deb.name.split("_", 2)
    return name, version.replace("%3a", ":")


def _install_kernel(work: Path, tree: Path, debs: Path, out: Path,
                    log: Path) -> tuple[str, Path]:
    """Unpack the kernel package, keep vmlinuz, put its modules into the tree, run depmod.
    Returns the kernel version and the .deb."""
    deb = _one(debs, "linux-image-*.deb", "kernel package")
    unpacked = work / "kernel"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)], "unpacking the kernel", log)
    modroot = next((p for p in (unpacked / "usr/lib/modules", unpacked / "lib/modules")
                    if p.is_dir()), None)
    if modroot is None:
        raise ImageError(f"{deb.name} has no lib/modules directory")
    version = _one(modroot, "*", "kernel module directory").name
    vmlinuz = _one(unpacked / "boot", f"vmlinuz-{version}", "vmlinuz")
    (out / "vmlinuz").write_bytes(decompress_kernel(vmlinuz.read_bytes()))
    target = tree / "usr/lib/modules"  # trixie is /usr-merged: /lib -> usr/lib
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(modroot / version, target / version, symlinks=True)
    _run(["depmod", "-b", str(tree), version], "depmod", log)
    return version, deb


def _install_agent(tree: Path, agent: dict[str, bytes], log: Path) -> None:
    agent_dir = tree / AGENT_DIR
    for name, data in agent.items():
        dest = tree / "usr/sbin/shuru-init" if name == AGENT_INIT else agent_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(0o755 if name == AGENT_INIT else 0o644)
    # unchecked-hash: the base image never changes under the .pyc, and its validity then
    # does not hang on mtimes surviving the copy into ext4.
    _run(["chroot", str(tree), "/usr/bin/python3", "-m", "compileall", "-q",
          "--invalidation-mode", "unchecked-hash", f"/{AGENT_DIR}"],
         "byte-compiling the guest agent", log)


def _configure(tree: Path) -> None:
    (tree / "etc/hostname").write_text("shuru\n")
    (tree / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tshuru\n"
                                    "::1\tlocalhost ip6-localhost ip6-loopback\n")
    # Offline by default; with networking on, the agent answers DNS itself.
    (tree / "etc/resolv.conf").write_text("")


def _build_initramfs(work: Path, tree: Path, debs: Path, kver: str, recipe: dict[str, bytes],
                     out: Path, log: Path) -> dict:
    """Write out/initrd.img; return what the manifest records about it."""
    deb = _one(debs, "busybox-static_*.deb", "busybox-static package")
    unpacked = work / "busybox"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)], "unpacking busybox", log)
    busybox = next((p for p in (unpacked / "bin/busybox", unpacked / "usr/bin/busybox")
                    if p.is_file()), None)
    if busybox is None:
        raise ImageError(f"{deb.name} has no bin/busybox")
    moddir = tree / "usr/lib/modules" / kver
    builtin_text = (moddir / "modules.builtin").read_text()
    wanted = recipe_lines(recipe["modules.txt"].decode())
    paths = resolve_modules((moddir / "modules.dep").read_text(), wanted, builtin_text)
    modules = [(module_name(p) + ".ko", decompress_module(p, (moddir / p).read_bytes()))
               for p in paths]
    (out / "initrd.img").write_bytes(initramfs(busybox.read_bytes(), recipe["init"], modules))
    builtin = builtin_modules(builtin_text)
    return {
        "busybox_version": _deb_fields(deb)[1],
        "initramfs_modules": [name for name, _ in modules],
        "builtin_modules": [w for w in wanted if module_name(w) in builtin],
    }


def _tree_bytes(tree: Path) -> int:
    total = 0
    for root, _, files in os.walk(tree):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def _package_versions(tree: Path, names: list[str], log: Path) -> dict[str, str]:
    out = _run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                "-f", "${Package}\t${Version}\n", *names], "reading package versions", log)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def _make_rootfs(tree: Path, out: Path, log: Path) -> int:
    size_mb = rootfs_size_mb(_tree_bytes(tree))
    # -T default: never mke2fs's "small" profile (1 KiB blocks) for a small first size, since
    # the guest grows this filesystem to many GiB. -m 0: no blocks reserved for root in a
    # single-user sandbox. The output file stays sparse.
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-m", "0", "-L", "shuru-root",
          "-E", "root_owner=0:0", "-d", str(tree), str(out / "rootfs.img"), f"{size_mb}M"],
         "making the ext4 root filesystem", log)
    return size_mb


def _build(work: Path, mirror: str, progress: Progress, arch: str = ARCH) -> Path:
    """Build in `work`; return the directory holding the finished image's files."""
    tree, debs, out = work / "tree", work / "debs", work / "out"
    debs.mkdir()
    out.mkdir()
    log = work / "build.log"
    hook = work / "download-hook.sh"
    hook.write_text(download_hook(arch))
    hook.chmod(0o755)
    # Read once: what the manifest fingerprints is exactly what went in.
    recipe, agent = recipe_files(), agent_files()
    packages = recipe_lines(recipe["packages.txt"].decode())
    _mmdebstrap(mmdebstrap_argv(tree, mirror, packages, hook, debs, arch), log, progress)

    step = "Installing the kernel and the agent"
    progress(step, 0.0)
    kver, kernel_deb = _install_kernel(work, tree, debs, out, log)
    progress(step, 0.5)
    _install_agent(tree, agent, log)
    _configure(tree)
    progress(step, 1.0)

    step = "Building the initramfs"
    progress(step, 0.0)
    initramfs_info = _build_initramfs(work, tree, debs, kver, recipe, out, log)
    progress(step, 1.0)

    step = "Making the root filesystem"
    progress(step, 0.0)
    versions = _package_versions(tree, packages, log)
    size_mb = _make_rootfs(tree, out, log)
    progress(step, 0.7)
    hashes = {name: sha256_file(out / name) for name in FILES}
    kernel_package, kernel_package_version = _deb_fields(kernel_deb)
    manifest = {
        "format": FORMAT,
        "image_id": image_id(hashes),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "arch": arch,
        "debian_suite": SUITE,
        "kernel_version": kver,
        "kernel_package": kernel_package,
        "kernel_package_version": kernel_package_version,
        "packages": versions,
        **initramfs_info,
        "agent_sha256": fingerprint(agent),
        "recipe_sha256": (fingerprint(recipe) if arch == "amd64"
                          else fingerprint({**recipe, "arch": arch.encode()})),
        "rootfs_size_mb": size_mb,
        "files": {name: {"sha256": hashes[name], "size": (out / name).stat().st_size}
                  for name in FILES},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    progress(step, 1.0)
    return out


# ---- putting it in place ----------------------------------------------------------------


@contextlib.contextmanager
def _build_lock(images: Path, progress: Progress):
    try:
        fd = os.open(images / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise HostError(f"cannot open the build lock {images / '.lock'}: {e.strerror}",
                        hint="run `shuru init` as the user who owns SHURU_HOME") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            step = "Waiting for another `shuru init` to finish"
            progress(step, None)
            fcntl.flock(fd, fcntl.LOCK_EX)
            progress(step, 1.0)
        yield
    finally:
        os.close(fd)


def _set_current(images: Path, image_dir: Path, arch: str | None = None) -> None:
    """Point `current` (or `current-<arch>`) at `image_dir` atomically: readers see the old
    or the new image."""
    tmp = images / f".current-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(image_dir.name, tmp)
    os.replace(tmp, images / current_link_name(arch))


def _reusable(home: Path | None, arch: str | None = None) -> Image | None:
    """The current image if it is intact and built from this agent and recipe."""
    try:
        image = current_image(home, arch)
        verify(image)
        return image if is_current(image) else None
    except ImageError:
        return None


FAILED_LOG = "last-failed-build.log"


def _failure(error: BaseException, work: Path, images: Path) -> ShuruError:
    """The error to report for a failed build, pointing at a kept copy of its log (the
    build dir itself is removed)."""
    if not isinstance(error, ShuruError):
        error = ImageError(f"building the guest image failed: {error}")
    log = work / "build.log"
    with contextlib.suppress(OSError):
        shutil.copyfile(log, images / FAILED_LOG)
        error.message += f"\n(full build log: {images / FAILED_LOG})"
    return error


def install(out: Path, images: Path) -> Path:
    """Move a finished image (built, or imported by `shuru.image_transfer`) into place under
    its id and make it current for its architecture."""
    manifest = json.loads((out / "manifest.json").read_text())
    final = images / manifest["image_id"]
    if final.exists():  # the same content: keep the copy that may be in use
        remove_tree(out)
    else:
        os.rename(out, final)
    _set_current(images, final, manifest.get("arch") or ARCH)
    # Every current image (one per architecture) keeps its saved states.
    states.drop_other_images(images, keep=final.name,
                                also_keep={p.name for p in current_images(images.parent).values()})
    with contextlib.suppress(FileNotFoundError):
        (images / FAILED_LOG).unlink()
    return final


def build_image(home: Path | None = None, *, force: bool = False, mirror: str | None = None,
                progress: Progress | None = None, arch: str | None = None) -> Image:
    """Build the guest image for `arch` (default: the host's) and make it current; return
    it. Without `force`, an intact current image built from this installation's agent and
    recipe is returned at once."""
    progress = progress or _no_progress
    arch = arch or host_arch()
    if not force and (image := _reusable(home, arch)):
        return image
    images = make_images_dir(home)
    if os.geteuid() != 0:
        return _build_rootless(home, force=force, mirror=mirror, arch=arch)
    with _build_lock(images, progress):
        # Whoever held the lock before us may just have built what we want.
        if not force and (image := _reusable(home, arch)):
            return image
        check_tools()
        check_foreign(arch)
        mirror = mirror or host_mirror()
        for stale in images.glob(".build-*"):  # we hold the lock: nobody is building
            remove_tree(stale)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
        try:
            final = install(_build(work, mirror, progress, arch), images)
        except (ShuruError, OSError) as e:
            error = _failure(e, work, images)
            if error is e:
                raise
            raise error from e
        finally:
            # A tree that cannot be removed yet (a mount left behind) is retried, with a
            # clear error, by the next build; it must not hide this build's outcome.
            with contextlib.suppress(ImageError):
                remove_tree(work)
        return load(final)
