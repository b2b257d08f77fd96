"""The agent's `write` streams: `data` on fd 0 goes to a file, each chunk granted back as
credit once written; `eof` closes the file and answers with its size."""

from __future__ import annotations

import os

from . import fsops
from .handler import FileHandler, close_quietly


class FileWriter:
    def __init__(self, stream: int, fd: int):
        self.stream = stream
        self.fd = fd
        self.size = 0


class Writes(FileHandler):
    opens = ("write",)

    def __init__(self, send, forget, mounts):
        super().__init__(send, forget, mounts)
        self.writers: dict[int, FileWriter] = {}

    def start(self, t: str, s: int, msg: dict) -> None:
        self.writers[s] = FileWriter(s, fsops.open_for_write(msg))

    def owns(self, s: int) -> bool:
        return s in self.writers

    def message(self, t: str, s: int, msg: dict) -> None:
        if t == "cancel":
            self.end(s)
            self.send("result", s, value=None)
        elif t == "data" and msg["fd"] == 0:
            writer = self.writers[s]
            try:
                _write_fully(writer.fd, msg["d"])
            except OSError as e:
                self.end(s)
                self.send("error", s, **fsops.error_fields(e, {"path": ""}))
                return
            writer.size += len(msg["d"])
            self.send("credit", s, fd=0, n=len(msg["d"]))
        elif t == "eof" and msg["fd"] == 0:
            size = self.writers[s].size
            self.end(s)
            self.send("result", s, value={"size": size})

    def end(self, s: int) -> None:
        writer = self.writers.pop(s, None)
        if writer is not None:
            close_quietly(writer.fd)

    def shutdown(self) -> None:
        for s in list(self.writers):
            self.end(s)


def _write_fully(fd: int, data: bytes) -> None:
    # A regular file takes a write whole; the loop is the only writer, so blocking is fine.
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
