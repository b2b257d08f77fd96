"""The one interface behind which every kind of stream the agent serves lives.

The agent loop (`agent.py`) knows no stream kind. It routes a host message that starts
something (`exec`, `read`, `tcp_connect`, ...) to the handler that lists the type in `opens`,
and any other message to the handler that `owns` its stream; it polls the fds each handler's
`interest` names and hands a ready fd straight to the handler that named it; it runs each
handler's `tick` every round and sleeps no later than the earliest `deadline`; and it ends
every handler's streams with `shutdown` when the host goes away or parks the machine. A
handler owns its streams' state and fds, and nothing else.

`backed_up` is the loop telling handlers that the channel holds more than it should queue:
credit bounds each stream, and pausing the readers of guest data bounds the sum.
"""

from __future__ import annotations

import os
import selectors
import sys
import types
from collections.abc import Mapping

from . import fsops

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# The interest of a handler with nothing open: shared, so an idle handler costs the loop's
# round no allocation (read-only, so no handler can fill it by mistake).
NOTHING: Mapping[int, int] = types.MappingProxyType({})


class Handler:
    """One kind of stream. `send(t, s, **fields)` queues a frame for the host; `forget(fd)`
    takes an fd out of the loop's selector, which must happen before the fd is closed (the
    number is reused by the next pipe or socket)."""

    opens: tuple[str, ...] = ()  # message types that start a stream (or a one-shot request)

    def __init__(self, send, forget):
        self.send = send
        self.forget = forget

    def open(self, t: str, s: int, msg: dict) -> None:
        """Start what `msg` asks for on stream `s` (the loop has checked `s` is free)."""
        raise NotImplementedError

    def owns(self, s: int) -> bool:
        return False

    def message(self, t: str, s: int, msg: dict) -> None:
        """A host message for a stream this handler owns."""

    def interest(self, backed_up: bool) -> Mapping[int, int]:
        """{fd: selector events} to wait for now."""
        return NOTHING

    def service(self, fd: int, events: int) -> None:
        """One of the fds from `interest` is ready."""

    def tick(self, now: float, backed_up: bool) -> None:
        """Work no fd announces (regular files, grace periods), once per loop round."""

    def deadline(self, backed_up: bool) -> float | None:
        """The monotonic time `tick` next has work; None when only an fd can bring any."""
        return None

    def shutdown(self) -> None:
        """End every stream: nobody is left to collect them."""

    def close_fd(self, fd: int) -> None:
        self.forget(fd)
        close_quietly(fd)


class FileHandler(Handler):
    """A handler whose requests name guest paths: it refuses paths in a host folder mount
    (the loop serves that mount, so it must not wait on a file there) and answers a bad
    request with an error naming the path, never by raising into the loop. Its streams are
    kept in `streams`, each with a `close()`; `cancel` ends one and is answered."""

    def __init__(self, send, forget, mounts):
        super().__init__(send, forget)
        self.mounts = mounts  # mounts.Mounts, for `under`
        self.streams: dict = {}

    def owns(self, s: int) -> bool:
        return s in self.streams

    def message(self, t: str, s: int, msg: dict) -> None:
        if t == "cancel":
            self.end(s)
            self.send("result", s, value=None)

    def end(self, s: int) -> None:
        stream = self.streams.pop(s, None)
        if stream is not None:
            stream.close()

    def shutdown(self) -> None:
        for s in list(self.streams):
            self.end(s)

    def open(self, t: str, s: int, msg: dict) -> None:
        for field in ("path", "dest"):
            target = self.mounts.under(msg.get(field))
            if target is not None:
                self.send("error", s, code="EBUSY", path=msg[field], message=(
                    f"{msg[field]} is in the host folder mounted on {target}: read or write "
                    "it on the host, or through a command in the sandbox"))
                return
        try:
            self.start(t, s, msg)
        except OSError as e:
            self.send("error", s, **fsops.error_fields(e, msg))
        except (TypeError, ValueError, OverflowError) as e:
            self.send("error", s, code="EINVAL", message=f"bad {t} request: {e}")

    def start(self, t: str, s: int, msg: dict) -> None:
        raise NotImplementedError


def log(*parts) -> None:
    print("shuru-agent:", *parts, file=sys.stderr, flush=True)


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
