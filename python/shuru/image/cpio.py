"""Writing initramfs archives: the cpio "newc" format the kernel unpacks at boot.

Pure and deterministic: entries are written in the order given, with fixed owner (root) and
mtime 0, so the same inputs give the same bytes (and the same image id).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, without a leading slash
    mode: int  # full st_mode: type bits and permissions
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes

    @classmethod
    def dir(cls, path: str, perm: int = 0o755) -> "Entry":
        return cls(path, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, path: str, data: bytes, perm: int = 0o644) -> "Entry":
        return cls(path, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, path: str, target: str) -> "Entry":
        return cls(path, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def chardev(cls, path: str, major: int, minor: int, perm: int = 0o600) -> "Entry":
        return cls(path, stat.S_IFCHR | perm, b"", (major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes, size: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = [ino, entry.mode, 0, 0, nlink, 0, size, 0, 0, entry.rdev[0], entry.rdev[1],
              len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def archive(entries: list[Entry]) -> bytes:
    """A complete newc archive holding `entries`, then the trailer."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.path.lstrip("/").encode()
        head = _header(ino if entry.path != TRAILER else 0, entry, name, len(entry.data))
        out += head + name + b"\0"
        out += _pad(len(head) + len(name) + 1)
        out += entry.data + _pad(len(entry.data))
    return bytes(out)
