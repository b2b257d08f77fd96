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

    def close(self) -> None:
        close_quietly(self.fd)


class Writes(FileHandler):
    opens = ("write",)

    def start(self, t: str, s: int, msg: dict) -> None:
        self.streams[s] = FileWriter(s, fsops.open_for_write(msg))

    def message(self, t: str, s: int, msg: dict) -> None:
        if t == "data" and msg["fd"] == 0:
            writer = self.streams[s]
            try:
                _write_fully(writer.fd, msg["d"])
            except OSError as e:
                self.end(s)
                self.send("error", s, **fsops.error_fields(e, {"path": ""}))
                return
            writer.size += len(msg["d"])
            self.send("credit", s, fd=0, n=len(msg["d"]))
        elif t == "eof" and msg["fd"] == 0:
            size = self.streams[s].size
            self.end(s)
            self.send("result", s, value={"size": size})
        else:
            super().message(t, s, msg)


def _write_fully(fd: int, data: bytes) -> None:
    # A regular file takes a write whole; the loop is the only writer, so blocking is fine.
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
