"""A small asyncio client for QEMU's machine protocol (QMP) over an accepted Unix socket.

Owns request/response matching and error translation. Events are kept (the most recent ones),
and a caller can wait for one that matches (`event_waiter`, armed before the command that
causes it, so it cannot be missed), e.g. a migration finishing. QEMU connects to us (we listen), so
there is no connect-retry loop anywhere.

Its run state is `engine.RunState`'s, as for the agent channel and the helper client:
CONNECTING while it reads the greeting and negotiates capabilities, RUNNING after, CLOSED
once the socket ended or was closed. A command on a closed connection fails at once with
SandboxDiedError (QEMU is gone, and the sandbox with it); so does every command and event
waiter pending when it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Callable

from ...engine import Runstate, RunState
from ...errors import HostError, QMPError, SandboxDiedError

_EVENTS_KEPT = 64


class QMP:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self.run = RunState("QEMU's QMP connection", gone="QEMU's QMP connection is closed")
        self._task: asyncio.Task | None = None
        self.events: list[dict] = []
        # (pending key, event name, match) of each waiter; its future is the run state's
        self._waiters: list[tuple[tuple, str, Callable[[dict], bool]]] = []

    async def start(self) -> None:
        self.run.require(Runstate.IDLE)
        self.run.enter(Runstate.CONNECTING)
        try:
            greeting = json.loads(await self._reader.readline() or b"null")
        except (OSError, ValueError) as e:
            self.run.fail(HostError(f"its greeting could not be read: {e}"))
            raise self.run.closed_error() from None
        if not isinstance(greeting, dict) or "QMP" not in greeting:
            self.run.fail(HostError("QEMU's QMP socket sent an unexpected greeting"))
            raise HostError(f"QEMU's QMP socket sent an unexpected greeting: {greeting!r}")
        self._task = asyncio.create_task(self._read_loop())
        await self._execute("qmp_capabilities")
        self.run.enter(Runstate.RUNNING)

    async def _read_loop(self) -> None:
        error: BaseException = SandboxDiedError("QEMU closed its QMP socket")
        try:
            while line := await self._reader.readline():
                msg = json.loads(line)
                if not isinstance(msg, dict):
                    raise ValueError(f"a {type(msg).__name__} instead of an object")
                if "event" in msg:
                    self.events = (self.events + [msg])[-_EVENTS_KEPT:]
                    self._notify(msg)
                    continue
                fut = self.run.take(("reply", msg.get("id")))
                if fut is not None:
                    fut.set_result(msg)
        except (OSError, ValueError) as e:
            error = HostError(str(e))  # reported as "QEMU's QMP connection failed: ..."
        except asyncio.CancelledError:
            error = SandboxDiedError("QEMU's QMP connection was closed")
            raise
        finally:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self.run.fail(error)  # every pending command and event waiter fails with it
        self._waiters.clear()

    def _notify(self, msg: dict) -> None:
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        for waiter in list(self._waiters):
            key, name, match = waiter
            if msg["event"] == name and match(data):
                self._waiters.remove(waiter)
                fut = self.run.take(key)
                if fut is not None:
                    fut.set_result(data)

    def event_waiter(self, name: str, match: Callable[[dict], bool] = lambda _: True
                     ) -> asyncio.Future:
        """A future for the next event `name` whose data satisfies `match`."""
        self.run.require(Runstate.RUNNING)
        key = ("event", next(self._ids))
        fut = self.run.expect(key)
        self._waiters.append((key, name, match))
        fut.add_done_callback(lambda _: self._drop(key))  # given up on: nothing stays
        return fut

    def _drop(self, key: tuple) -> None:
        self.run.forget(key)
        self._waiters = [w for w in self._waiters if w[0] != key]

    async def execute(self, command: str, arguments: dict | None = None) -> object:
        """Run one command; its `return` value, or QMPError with QEMU's error. Once the
        connection is closed, SandboxDiedError at once."""
        self.run.require(Runstate.RUNNING)
        return await self._execute(command, arguments)

    async def _execute(self, command: str, arguments: dict | None = None) -> object:
        key = ("reply", next(self._ids))
        fut = self.run.expect(key)
        request = {"execute": command, "id": key[1]}
        if arguments:
            request["arguments"] = arguments
        try:
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            reply = await fut
        except (ConnectionError, OSError) as e:
            self._fail(SandboxDiedError(f"QEMU's QMP socket broke: {e}"))
            raise self.run.closed_error() from None
        finally:
            self.run.forget(key)
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise QMPError(command, str(err.get("class", "?")), str(err.get("desc", "?")))
        return reply.get("return")

    async def close(self) -> None:
        self.run.enter(Runstate.DISCONNECTING)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._fail(SandboxDiedError("QEMU's QMP connection was closed"))
        try:
            self._writer.close()
        except OSError:
            pass
