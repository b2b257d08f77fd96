"""File watches inside the guest, on inotify (through ctypes: the guest has only the stdlib).

One `Watcher` per `watch` stream owns an inotify fd that the agent's selector polls. It turns
raw inotify records into the protocol's events (`create`, `modify`, `delete`, `rename`) with
absolute paths. Recursive watches add a watch for every directory, including ones created
later; files that appear in a new directory before its watch is in place are reported by
scanning the directory right after adding the watch, so nothing created there is missed.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED, IN_ISDIR = (
    0x400, 0x800, 0x4000, 0x8000, 0x40000000)
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
# The two halves of a rename are queued one after the other, and a read can fall between
# them; a half that finds no pair within this long was a move out of the tree (a delete).
MOVE_WAIT = 0.1
MASK = (IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
        | IN_DELETE_SELF | IN_MOVE_SELF | IN_ATTRIB)
_EVENT = struct.Struct("iIII")

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return _libc


class Watcher:
    def __init__(self, root: str, recursive: bool):
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), root)
        self.fd = fd
        self.root = root
        self.recursive = recursive
        self.paths: dict[int, str] = {}  # watch descriptor -> directory
        # cookie -> (path moved away, when it was read), awaiting its pair
        self._moves: dict[int, tuple[str, float]] = {}
        if not os.path.isdir(root):
            os.close(fd)
            raise NotADirectoryError(20, "Not a directory", root)
        self._add_tree(root, report=None)

    def _add(self, path: str) -> None:
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        self.paths[wd] = path

    def _add_tree(self, top: str, report: list | None) -> None:
        """Watch `top` (and below, if recursive). With `report`, also emit `create` for what
        already exists under it: it appeared before the watch could see it."""
        try:
            self._add(top)
        except OSError:
            return
        if not self.recursive:
            return
        try:
            entries = list(os.scandir(top))
        except OSError:
            return
        for entry in entries:
            if report is not None:
                report.append({"kind": "create", "path": entry.path,
                               "is_dir": entry.is_dir(follow_symlinks=False)})
            if entry.is_dir(follow_symlinks=False):
                self._add_tree(entry.path, report)

    def read_events(self) -> list[dict]:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events: list[dict] = []
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            self._translate(wd, mask, cookie, name, events)
        return _coalesce(events + self.expire(time.monotonic()))

    def expire(self, now: float) -> list[dict]:
        """Deletes for moves whose other half did not come within MOVE_WAIT."""
        # Compared as `deadline()` computes it: `now - seen >= MOVE_WAIT` can be false at
        # the deadline itself by a rounding error, and the agent would spin until it is not.
        gone = [c for c, (_, seen) in self._moves.items() if now >= seen + MOVE_WAIT]
        return [{"kind": "delete", "path": self._moves.pop(c)[0]} for c in gone]

    def deadline(self) -> float | None:
        """When the oldest unpaired move becomes a delete (the agent's select wakes then)."""
        return min(seen for _, seen in self._moves.values()) + MOVE_WAIT if self._moves else None

    def _translate(self, wd: int, mask: int, cookie: int, name: str, out: list) -> None:
        if mask & IN_Q_OVERFLOW:
            out.append({"kind": "overflow", "path": self.root})
            return
        base = self.paths.get(wd)
        if base is None:
            return
        if mask & IN_IGNORED:
            self.paths.pop(wd, None)
            return
        path = os.path.join(base, name) if name else base
        is_dir = bool(mask & IN_ISDIR)
        if mask & IN_CREATE:
            out.append({"kind": "create", "path": path, "is_dir": is_dir})
            if is_dir and self.recursive:
                self._add_tree(path, out)
        elif mask & (IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB):
            if name:  # changes to a watched directory itself show up on its parent
                out.append({"kind": "modify", "path": path, "is_dir": is_dir})
        elif mask & IN_DELETE:
            out.append({"kind": "delete", "path": path, "is_dir": is_dir})
        elif mask & IN_MOVED_FROM:
            self._moves[cookie] = (path, time.monotonic())
        elif mask & IN_MOVED_TO:
            src = self._moves.pop(cookie, (None, 0.0))[0]
            if src is None:
                out.append({"kind": "create", "path": path, "is_dir": is_dir})
                if is_dir and self.recursive:
                    self._add_tree(path, out)
            else:
                out.append({"kind": "rename", "path": src, "dest": path, "is_dir": is_dir})
                if is_dir:
                    self._rebase(src, path)
        elif mask & (IN_DELETE_SELF | IN_MOVE_SELF) and base == self.root:
            out.append({"kind": "delete", "path": self.root, "is_dir": True})

    def _rebase(self, old: str, new: str) -> None:
        """A watched directory moved within the tree: its watches now live under `new`."""
        for wd, path in self.paths.items():
            if path == old or path.startswith(old + "/"):
                self.paths[wd] = new + path[len(old):]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _coalesce(events: list[dict]) -> list[dict]:
    """One `modify` per path per batch: a single write shows up as several inotify records."""
    out, seen = [], set()
    for event in events:
        if event["kind"] == "modify":
            if event["path"] in seen:
                continue
            seen.add(event["path"])
        else:
            seen.discard(event["path"])
        out.append(event)
    return out
