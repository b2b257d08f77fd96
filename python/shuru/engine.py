"""The run state the host's three protocol engines share: the agent `Channel`, the helper's
`HelperClient` and QEMU's `QMP`.

In the manner of qemu.qmp: a connection is IDLE until it starts, CONNECTING while it
greets the peer, RUNNING once requests may flow, DISCONNECTING while it is being taken down,
and CLOSED for good after that or once it failed. `require` guards each operation with the
states it needs, so a request on a dead connection fails at once with the error that ended
it instead of waiting for an answer that cannot come. `fail` is the one way a connection
ends: it records the first error and fails every pending request (a future registered with
`expect`) with a fresh copy of it; each engine then drops what else it holds (streams, queued
descriptors, event waiters).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Hashable

from .errors import ProtocolError, SandboxDiedError, ShuruError


class Runstate(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    RUNNING = "running"
    DISCONNECTING = "disconnecting"
    CLOSED = "closed"


# The errors a closed engine re-raises as they are (a fresh copy each time, so every caller
# gets its own traceback); any other error that ended it is reported as the peer's death.
_KEPT = (SandboxDiedError, ProtocolError)


class RunState:
    """One connection's run state and its pending requests. `what` names the connection in
    messages ("the sandbox's agent channel"); `gone` is the error text once it was closed
    without a failure."""

    def __init__(self, what: str, gone: str | None = None):
        self.what = what
        self._gone = gone or f"{what} is closed"
        self.state = Runstate.IDLE
        self.error: BaseException | None = None
        self._pending: dict[Hashable, asyncio.Future] = {}

    def __repr__(self) -> str:
        return f"<RunState {self.what}: {self.state.value}>"

    @property
    def is_open(self) -> bool:
        return self.error is None and self.state is not Runstate.CLOSED

    def enter(self, state: Runstate) -> None:
        """Move on to `state`; a closed connection stays closed."""
        if self.state is not Runstate.CLOSED:
            self.state = state

    def require(self, *states: Runstate) -> None:
        """Raise unless the connection is in one of `states`: the error that ended it once
        it is closed (or being closed), a ShuruError naming both states otherwise."""
        if self.state in states:
            return
        if self.state in (Runstate.CLOSED, Runstate.DISCONNECTING) or self.error is not None:
            raise self.closed_error()
        wanted = " or ".join(s.value for s in states)
        raise ShuruError(f"{self.what} is {self.state.value}, not {wanted}")

    def closed_error(self) -> ShuruError:
        """A fresh copy of the error that ended the connection."""
        err = self.error
        if err is None:
            return SandboxDiedError(self._gone)
        if isinstance(err, _KEPT) and type(err) in _KEPT:
            return type(err)(str(err))
        return SandboxDiedError(f"{self.what} failed: {err}")

    # ---- pending requests --------------------------------------------------------------------

    def expect(self, key: Hashable) -> asyncio.Future:
        """A future for the answer to the request `key`; fails at once if the connection is
        closed. The caller drops it with `forget` when it gives up."""
        if not self.is_open:
            raise self.closed_error()
        if key in self._pending:
            raise ShuruError(f"{self.what}: request {key!r} is already waiting for its answer")
        fut = self._pending[key] = asyncio.get_running_loop().create_future()
        return fut

    def take(self, key: Hashable) -> asyncio.Future | None:
        """The future still waiting for `key`'s answer, removed; None if nobody waits."""
        fut = self._pending.pop(key, None)
        return fut if fut is not None and not fut.done() else None

    def forget(self, key: Hashable) -> None:
        self._pending.pop(key, None)

    def fail(self, error: BaseException) -> bool:
        """End the connection with `error` (the first one wins) and fail every pending
        request with it. True the first time, when the caller drops the rest it holds."""
        if self.error is None:
            self.error = error
        first = self.state is not Runstate.CLOSED
        self.state = Runstate.CLOSED
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self.closed_error())
        return first
