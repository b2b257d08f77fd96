"""Per-sandbox runtime state on the host: run directories (sockets, console, disk overlay) and
the rule that the processes a sandbox starts (QEMU, the helper) never outlive their owner.

Each sandbox gets a short-named directory (Unix socket paths are limited to 108 bytes) under
`$SHURU_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/shuru`, else `/tmp/shuru-<uid>`. The owner holds
an flock on `lock` inside it for as long as it lives; the kernel drops the lock when the owner
dies, even by SIGKILL, so the next sandbox to start removes directories nobody holds.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import HostError


def runtime_root() -> Path:
    explicit = os.environ.get("SHURU_RUNTIME_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "shuru"
    return Path(tempfile.gettempdir()) / f"shuru-{os.getuid()}"


class RunDir:
    """A locked runtime directory; `close()` removes it."""

    def __init__(self, path: Path, lock_fd: int):
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, root: Path | None = None) -> "RunDir":
        root = root or runtime_root()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            sweep(root)
            path = Path(tempfile.mkdtemp(prefix="sb-", dir=root))
            lock_fd = os.open(path / "lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise HostError(f"cannot create a runtime directory under {root}: {e.strerror}",
                            hint="set SHURU_RUNTIME_DIR to a writable directory") from None
        return cls(path, lock_fd)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def sweep(root: Path) -> list[Path]:
    """Remove run directories whose owner is gone (their lock is free). Returns them."""
    removed = []
    for entry in root.glob("sb-*"):
        try:
            fd = os.open(entry / "lock", os.O_RDWR | os.O_CLOEXEC)
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
