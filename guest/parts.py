"""Requests that arrive in `part`s (wire.request_frames): an exec with a megabyte of
arguments is larger than one frame may be. Parts are joined per stream and the whole request
is handed back to the loop, to act on as if it had come in one frame. Past MAX_REQUEST bytes
a request is refused once, naming the limit, and the rest of its parts are dropped."""

from __future__ import annotations

from . import wire

# Only requests that start a stream may be that large.
PARTABLE = ("exec", "fs", "read", "write", "watch")


class Parts:
    def __init__(self, send, busy):
        self.send = send  # the agent's send(t, s, **fields)
        self.busy = busy  # busy(s): is stream s in use
        # The request being joined, by stream; None once refused (the rest is dropped).
        self.joining: dict[int, bytearray | None] = {}

    def clear(self) -> None:
        self.joining.clear()

    def feed(self, s: int, msg: dict) -> dict | None:
        """Take one `part`; the whole request once its last part came, else None."""
        if s not in self.joining:
            if s % 2 == 0 or self.busy(s):
                self.joining[s] = None
                self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            else:
                self.joining[s] = bytearray()
        buf = self.joining[s]
        if buf is not None:
            if len(buf) + len(msg["d"]) > wire.MAX_REQUEST:
                self.joining[s] = None
                self.send("error", s, code="E2BIG", message=(
                    f"the request is larger than the guest agent's limit of {wire.MAX_REQUEST} "
                    f"bytes ({wire.MAX_REQUEST >> 20} MiB); Linux itself takes at most 6 MiB "
                    "of arguments and environment"))
            else:
                buf += msg["d"]
        if msg["more"]:
            return None
        buf = self.joining.pop(s)
        if buf is None:
            return None
        try:
            request = wire.decode_request(bytes(buf))
        except wire.WireError as e:
            self.send("error", s, code="EINVAL", message=f"bad request in parts: {e}")
            return None
        if request["s"] != s or request["t"] not in PARTABLE:
            self.send("error", s, code="EINVAL",
                      message=f"a {request['t']!r} on stream {request['s']} cannot come in parts")
            return None
        return request
