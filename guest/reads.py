"""The agent's streams that send the host bytes it asks for: `read` (a regular file) and the
`fs` listings (`list`, `walk`: entries as a byte stream, see wire.EntryDecoder); the other
`fs` ops answer at once with one `result`.

Regular files and listings cannot be polled, so a reader with credit is pumped once per loop
round instead (one chunk each, so the channel and the other streams get their turn), and the
loop does not sleep while one has credit. Each stream sends only what the host granted: a
file or a listing of any size takes bounded memory here and on the host.
"""

from __future__ import annotations

import os

from . import fsops, wire
from .handler import FileHandler, close_quietly, log


class FileReader:
    """A `read` stream: a regular file sent as data on fd 1 within the host's credit, never
    more than `limit` bytes (the host asks for what the file held when it looked)."""

    def __init__(self, stream: int, fd: int, limit: int | None = None):
        self.stream = stream
        self.fd = fd
        self.credit = {1: wire.WINDOW}
        self.size = 0
        self.limit = limit

    def read(self, n: int) -> bytes:
        if self.limit is not None:
            n = min(n, self.limit - self.size)
            if n <= 0:
                return b""
        return os.read(self.fd, n)

    def close(self) -> None:
        close_quietly(self.fd)

    def final(self) -> dict:
        return {"size": self.size}


class ListingReader(FileReader):
    """An `fs` list or walk: its entries as a byte stream on fd 1, produced only as the host
    grants credit."""

    def __init__(self, stream: int, entries):
        super().__init__(stream, -1)
        self.entries = entries
        self.pending = bytearray()
        self.count = 0

    def read(self, n: int) -> bytes:
        while len(self.pending) < n:
            entry = next(self.entries, None)
            if entry is None:
                break
            self.pending += wire.pack_entry(entry)
            self.count += 1
        data = bytes(self.pending[:n])
        del self.pending[:n]
        return data

    def close(self) -> None:
        self.entries.close()

    def final(self) -> dict:
        return {"count": self.count}


class Reads(FileHandler):
    """`read` streams; `Listings` adds the `fs` requests."""

    opens = ("read",)

    def start(self, t: str, s: int, msg: dict) -> None:
        limit = msg.get("limit")
        if limit is not None and limit < 0:
            raise fsops.RequestError("limit must not be negative")
        self.streams[s] = FileReader(s, fsops.open_for_read(msg), limit)

    def message(self, t: str, s: int, msg: dict) -> None:
        if t == "credit" and msg["fd"] == 1:
            self.streams[s].credit[1] += max(0, msg["n"])
        else:
            super().message(t, s, msg)

    def deadline(self, backed_up: bool) -> float | None:
        if self.streams and not backed_up and any(
                r.credit[1] > 0 for r in self.streams.values()):
            return 0.0  # work now: the loop polls without sleeping
        return None

    def tick(self, now: float, backed_up: bool) -> None:
        """Send one chunk per reader that has credit."""
        if backed_up or not self.streams:
            return
        for reader in list(self.streams.values()):
            want = min(reader.credit[1], wire.CHUNK)
            if want <= 0:
                continue
            try:
                data = reader.read(want)
            except OSError as e:
                self.end(reader.stream)
                self.send("error", reader.stream, **fsops.error_fields(e, {"path": ""}))
                continue
            except Exception as e:  # one bad listing must not take the agent down
                log("error reading stream", reader.stream, repr(e))
                self.end(reader.stream)
                self.send("error", reader.stream, code="EINTERNAL", message=str(e))
                continue
            if data:
                reader.credit[1] -= len(data)
                reader.size += len(data)
                self.send("data", reader.stream, fd=1, d=data)
            else:
                self.end(reader.stream)
                self.send("eof", reader.stream, fd=1)
                self.send("result", reader.stream, value=reader.final())


class Listings(Reads):
    """`fs`: a list or walk is a reader stream; every other op is answered at once."""

    opens = ("fs",)

    def start(self, t: str, s: int, msg: dict) -> None:
        if msg["op"] in fsops.LISTINGS:
            served = lambda path: self.mounts.under(path) is not None  # noqa: E731
            self.streams[s] = ListingReader(s, fsops.open_listing(msg, served))
            return
        op = fsops.OPS.get(msg["op"])
        if op is None:
            raise fsops.RequestError(f"unknown fs op {msg['op']!r}")
        self.send("result", s, value=op(msg))
