"""The agent's `watch` streams: one inotify `watch.Watcher` each, its fd polled by the loop,
its changes sent to the host as `event` messages. inotify (ctypes) is imported only when
someone watches: it costs time on the boot path."""

from __future__ import annotations

from . import fsops
from .handler import NOTHING, READ, FileHandler


class Watches(FileHandler):
    opens = ("watch",)

    def __init__(self, send, forget, mounts):
        super().__init__(send, forget, mounts)
        self.by_fd: dict[int, int] = {}  # inotify fd -> stream

    def start(self, t: str, s: int, msg: dict) -> None:
        from .watch import Watcher

        path = fsops.check_path(msg["path"])
        watcher = Watcher(path, bool(msg.get("recursive", True)))
        self.streams[s] = watcher
        self.by_fd[watcher.fd] = s
        self.send("result", s, value=None)  # the watch is in place

    def interest(self, backed_up: bool) -> dict[int, int]:
        if backed_up or not self.streams:
            return NOTHING
        return {w.fd: READ for w in self.streams.values()}

    def service(self, fd: int, events: int) -> None:
        s = self.by_fd.get(fd)
        if s is None:
            return
        for event in self.streams[s].read_events():
            self.send("event", s, **event)

    def tick(self, now: float, backed_up: bool) -> None:
        if not self.streams:
            return
        # The first half of a rename whose pair never came was a move out of the tree.
        for s, watcher in list(self.streams.items()):
            for event in watcher.expire(now):
                self.send("event", s, **event)

    def deadline(self, backed_up: bool) -> float | None:
        if not self.streams:
            return None
        return min((d for w in self.streams.values() if (d := w.deadline()) is not None),
                   default=None)

    def end(self, s: int) -> None:
        watcher = self.streams.get(s)
        if watcher is not None:
            self.by_fd.pop(watcher.fd, None)
            self.forget(watcher.fd)  # before Watcher.close closes it
        super().end(s)
