"""The registry of detached sandboxes: one slot per name in the user's runtime directory.

A detached sandbox is owned by a supervisor process (`shuru.named.supervisor`), not by the program
that started it. Its slot is four files in `<runtime root>/named/` (the runtime root is
private to the user: 0700, no symlink, see `runtime.private_dir`):

* `NAME.lock`: the supervisor holds an flock on it for as long as it lives; the kernel drops
  the lock when the supervisor dies, even by SIGKILL. A free lock next to a record is what a
  crashed supervisor left behind (`ps` shows it as `dead`, `prune` removes it).
* `NAME.json`: the record `ps` lists (name, id, state, started, from, cpus, memory, ports,
  owner pid, supervisor pid, lifetimes), rewritten atomically when the state changes.
* `NAME.sock`: the supervisor's socket (clients attach there; see `shuru.named.remote`).
* `NAME.log`: the supervisor's stderr (start-up warnings, why it stopped).

The supervisor takes the lock before it writes anything and removes the record and socket
before it lets go, so a record whose lock is free is never a live sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..backends import rundir as runtime
from ..errors import ConfigError, ShuruError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SUFFIXES = (".json", ".sock", ".log", ".lock")


def check_name(name: object) -> str:
    """A sandbox name: letters, digits, '-', '_' and '.', starting with a letter or digit, at
    most 63 characters (it names a Unix socket, whose path is limited to 108 bytes)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError([f"name {name!r} is not valid: use letters, digits, '-', '_' and "
                           "'.', starting with a letter or digit (at most 63 characters)"])
    return name


def new_name() -> str:
    """A name for a detached sandbox started without one."""
    return f"sandbox-{secrets.token_hex(3)}"


def named_dir(root: Path | None = None) -> Path:
    """`<runtime root>/named`, made private (0700) if it is not there yet; an unsafe root or
    directory is a HostError naming it."""
    root = runtime.private_dir(root or runtime.runtime_root())
    return runtime.private_dir(root / "named")


@dataclass(frozen=True)
class Slot:
    """The files of one name (see the module docstring)."""

    dir: Path
    name: str

    def path(self, suffix: str) -> Path:
        return self.dir / f"{self.name}{suffix}"

    @property
    def sock(self) -> Path:
        return self.path(".sock")

    @property
    def record_path(self) -> Path:
        return self.path(".json")

    @property
    def log(self) -> Path:
        return self.path(".log")

    def read(self) -> dict | None:
        try:
            data = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, record: dict) -> None:
        """Replace the record atomically (a reader sees the old one or the new one)."""
        tmp = self.path(f".json.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.record_path)

    def remove(self, suffixes: tuple[str, ...] = SUFFIXES) -> None:
        for suffix in suffixes:
            with contextlib.suppress(FileNotFoundError):
                self.path(suffix).unlink()

    def alive(self) -> bool:
        """Whether a supervisor holds this name's lock now."""
        try:
            fd = os.open(self.path(".lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


    def wait_gone(self, timeout: float) -> bool:
        """Block until no supervisor holds this name (True), or `timeout` seconds pass."""
        try:
            fd = os.open(self.path(".lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return True
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(0.05)
        finally:
            os.close(fd)


def slot(name: str, root: Path | None = None) -> Slot:
    return Slot(named_dir(root), check_name(name))


class Claim:
    """A name held by this process (the supervisor): the lock stays taken until `release`."""

    def __init__(self, slot_: Slot, fd: int):
        self.slot = slot_
        self._fd = fd

    def release(self) -> None:
        """Remove the record and socket, then let go of the name (in that order: a record
        whose lock is free is always a dead sandbox's)."""
        if self._fd < 0:
            return
        self.slot.remove((".json", ".sock", ".log"))
        with contextlib.suppress(FileNotFoundError):
            self.slot.path(".lock").unlink()
        os.close(self._fd)
        self._fd = -1


def claim(name: str, root: Path | None = None) -> Claim:
    """Take `name` for a new detached sandbox, clearing what a dead predecessor left; a
    ShuruError if a live sandbox has it."""
    s = slot(name, root)
    for _ in range(10):
        fd = os.open(s.path(".lock"), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ShuruError(f"a sandbox named {name!r} is already running",
                             hint=f"stop it first (`shuru stop {name}`) or pick another name")
        # `prune` may have unlinked this lock file between our open and our flock: the name
        # is only ours if the path still names the file we locked.
        try:
            same = os.stat(s.path(".lock")).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            s.remove((".json", ".sock"))  # a dead predecessor's; the log is ours
            return Claim(s, fd)
        os.close(fd)
    raise ShuruError(f"could not take the name {name!r}: its lock file keeps being replaced")


def names(root: Path | None = None) -> list[str]:
    d = named_dir(root)
    found = {p.name[: -len(suffix)] for suffix in (".json", ".lock", ".sock")
             for p in d.glob(f"*{suffix}")}
    return sorted(n for n in found if NAME_RE.match(n))


def list_records(root: Path | None = None) -> list[dict]:
    """Every detached sandbox's record, by name; one whose supervisor is gone has state
    `dead` (what `prune` removes)."""
    out = []
    d = named_dir(root)
    for name in names(root):
        s = Slot(d, name)
        record = s.read()
        alive = s.alive()
        if record is None:
            if alive:
                continue  # starting: its record is not written yet
            record = {"name": name}
        if not alive:
            record["state"] = "dead"
        out.append(record)
    return out


def prune(root: Path | None = None) -> list[str]:
    """Remove the slots of sandboxes whose supervisor died (and the run directories their
    QEMU left); returns their names."""
    pruned = []
    d = named_dir(root)
    for name in names(root):
        s = Slot(d, name)
        try:
            fd = os.open(s.path(".lock"), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # alive
            elif any(s.path(x).exists() for x in (".json", ".sock")):
                # No lock file: a supervisor between its start and its claim has none yet
                # either, so only take what is old enough.
                if time.time() - max(s.path(x).stat().st_mtime for x in (".json", ".sock")
                                     if s.path(x).exists()) < 60:
                    continue
            s.remove()
            pruned.append(name)
        finally:
            if fd >= 0:
                os.close(fd)
    runtime.sweep(d.parent)  # the run directories (sockets) of their QEMUs
    with contextlib.suppress(OSError):
        from ..image.store import shuru_home

        disks = runtime.disk_root(shuru_home())
        if disks.is_dir():
            runtime.sweep(disks)  # and their disk overlays
    return pruned
