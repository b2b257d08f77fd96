"""Per-sandbox state on the host: run directories (sockets, console, log; disk overlays on a
disk of their own), the check that their roots are private to the user, and the rule that the
processes a sandbox starts (QEMU, the helper) never outlive their owner.

Each sandbox gets a short-named directory (Unix socket paths are limited to 108 bytes) under
`$SHURU_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/shuru`, else `/tmp/shuru-<uid>`. That root holds
the QMP socket (whoever can reach it commands QEMU, and so runs programs as the user), so it
must be a real directory (not a symlink), owned by the user, with mode 0700; one that is not
(another local user may have made `/tmp/shuru-<uid>` first) is refused with a fix, before any
VM starts. Disk overlays grow with what the guest writes, and the runtime root is usually a
tmpfs (RAM), so they live in a second directory under `$SHURU_DISK_DIR`, else
`<data dir>/run`, held to the same rules.

The owner holds an flock on `lock` inside each directory for as long as it lives; the kernel
drops the lock when the owner dies, even by SIGKILL, so the next sandbox to start removes
directories nobody holds.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import HostError


def runtime_root() -> Path:
    explicit = os.environ.get("SHURU_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "shuru"
    return Path(tempfile.gettempdir()) / f"shuru-{os.getuid()}"


def disk_root(data_dir: Path) -> Path:
    """Where sandboxes' disk overlays go: on disk, never on a tmpfs unless asked for."""
    explicit = os.environ.get("SHURU_DISK_DIR")
    return Path(explicit) if explicit else data_dir / "run"


def root_problem(path: Path, st: os.stat_result, uid: int) -> tuple[str, str] | None:
    """Why the directory `path`, with this lstat() result, may not hold a user's sandboxes,
    and how to fix that; None when it may. Pure, so every case is testable without a
    second user."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link", f"remove the link (`rm {path}`; shuru makes the directory)"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory", f"remove it (`rm {path}`; shuru makes the directory)"
    if st.st_uid != uid:
        return (f"it belongs to uid {st.st_uid}, not to you (uid {uid}), so its owner could "
                "take over your sandboxes",
                f"have it removed (`rm -rf {path}` as root; shuru makes the directory)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (f"its mode is {mode:04o}, so other users can reach into it",
                f"remove it (`rm -rf {path}`; shuru makes it again with mode 0700), or "
                f"`chmod 700 {path}` if you made it yourself")
    return None


def private_dir(path: Path, *, setting: str = "SHURU_RUNTIME_DIR",
                uid: int | None = None) -> Path:
    """Make `path` (mode 0700) unless it exists, then insist that it is private to the user
    (see `root_problem`); raise HostError naming the path and the fix otherwise. `setting`
    is the environment variable that chooses another directory."""
    uid = os.getuid() if uid is None else uid
    elsewhere = f"or set {setting} to a directory of your own with mode 0700"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)  # never follows a symlink already there: EEXIST
        except FileExistsError:
            pass
        st = os.lstat(path)
    except OSError as e:
        raise HostError(f"cannot create the directory {path}: {e.strerror}",
                        hint=f"make its parent writable, {elsewhere}") from None
    problem = root_problem(path, st, uid)
    if problem:
        why, fix = problem
        raise HostError(f"refusing to keep sandboxes in {path}: {why}",
                        hint=f"{fix}, {elsewhere}")
    return path


def _locked_dir(root: Path) -> tuple[Path, int]:
    """A new directory under `root` (mkdtemp: mode 0700, a fresh name, never an existing
    entry) with its lock held."""
    sweep(root)
    path = Path(tempfile.mkdtemp(prefix="sb-", dir=root))
    try:
        fd = os.open(path / "lock",
                     os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
        raise
    return path, fd


class RunDir:
    """A locked runtime directory (`path`: sockets, logs) and, where a disk root was given, a
    locked directory on disk for large files (`disk_dir`; else the same as `path`).
    `close()` removes both."""

    def __init__(self, path: Path, lock_fd: int, disk_dir: Path | None = None,
                 disk_lock_fd: int = -1):
        self.path = path
        self.disk_dir = disk_dir or path
        self._lock_fds = [fd for fd in (lock_fd, disk_lock_fd) if fd >= 0]

    @classmethod
    def create(cls, root: Path | None = None, *, disk_root: Path | None = None) -> "RunDir":
        root = root or runtime_root()
        made: list[tuple[Path, int]] = []
        try:
            for where, setting in ((root, "SHURU_RUNTIME_DIR"), (disk_root, "SHURU_DISK_DIR")):
                if where is None:
                    continue
                private_dir(where, setting=setting)
                try:
                    made.append(_locked_dir(where))
                except OSError as e:
                    raise HostError(f"cannot create a sandbox directory under {where}: "
                                    f"{e.strerror}",
                                    hint=f"make it writable, or set {setting} to another "
                                    "directory") from None
        except BaseException:
            for path, fd in made:
                shutil.rmtree(path, ignore_errors=True)
                os.close(fd)
            raise
        (path, fd), disk = made[0], made[1:]
        return cls(path, fd, *(disk[0] if disk else (None, -1)))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        for path in {self.path, self.disk_dir}:
            shutil.rmtree(path, ignore_errors=True)
        while self._lock_fds:
            os.close(self._lock_fds.pop())


def sweep(root: Path) -> list[Path]:
    """Remove run directories whose owner is gone (their lock is free). Returns them."""
    removed = []
    for entry in root.glob("sb-*"):
        try:
            fd = os.open(entry / "lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            # Created but not yet locked by a starting sandbox, or half-removed: only take it
            # if it is old enough that no starter can still be between mkdtemp and flock.
            try:
                if time.time() - entry.stat().st_mtime > 60:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
            except OSError:
                pass
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        os.close(fd)
        removed.append(entry)
    return removed


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A preexec hook that makes the child get SIGKILL when its owner dies, even by SIGKILL,
    where the kernel offers that (Linux prctl). Elsewhere the child needs a rule of its own
    (the helper exits when its control socket closes)."""
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the owner died before prctl took effect
            os._exit(1)

    return preexec
