"""The agent's host folder mounts as a handler: `mount` streams served by `fusefs`, which is
loaded on the first mount only (ctypes and threads cost time on the boot path).

It also answers, for the other handlers, whether a path lies in a mount: the loop serves
each mount's requests, so it must never wait on a file there itself.
"""

from __future__ import annotations

import os

from .handler import NOTHING, Handler


class Mounts(Handler):
    opens = ("mount",)

    def __init__(self, send, forget):
        super().__init__(send, forget)
        self.fuse = None  # fusefs.Mounts once something is mounted

    def _fuse(self):
        if self.fuse is None:
            from . import fusefs

            self.fuse = fusefs.Mounts(self.send)
            self.fuse.forget = self.forget
        return self.fuse

    def preload(self) -> None:
        """Import the mount code now (before a machine state is saved, so that clones wake
        up with it)."""
        from . import fusefs  # noqa: F401

    def open(self, t: str, s: int, msg: dict) -> None:
        self._fuse().open(s, msg)

    def owns(self, s: int) -> bool:
        return self.fuse is not None and self.fuse.owns(s)

    def message(self, t: str, s: int, msg: dict) -> None:
        self.fuse.message(t, s, msg)

    def interest(self, backed_up: bool) -> dict[int, int]:
        # Never paused: a mount's requests come from guest programs blocked on them.
        return self.fuse.interest() if self.fuse is not None else NOTHING

    def service(self, fd: int, events: int) -> None:
        self.fuse.service(fd, events)

    def shutdown(self) -> None:
        if self.fuse is not None:
            self.fuse.shutdown()

    def under(self, path: object) -> str | None:
        """The mount `path` lies in, if any, by its name: resolving it would ask the mount."""
        if self.fuse is None or not isinstance(path, str):
            return None
        norm = os.path.normpath(path)
        for target in self.fuse.targets():
            if norm == target or norm.startswith(target + "/"):
                return target
        return None
