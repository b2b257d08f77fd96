"""A small asyncio client for QEMU's machine protocol (QMP) over an accepted Unix socket.

Owns request/response matching and error translation. Events are kept (the most recent ones),
and a caller can wait for one that matches (`event_waiter`, armed before the command that
causes it, so it cannot be missed), e.g. a migration finishing. QEMU connects to us (we listen), so
there is no connect-retry loop anywhere.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Callable

from ...errors import HostError, QMPError


class QMP:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._task: asyncio.Task | None = None
        self.events: list[dict] = []
        self._waiters: list[tuple[str, Callable[[dict], bool], asyncio.Future]] = []

    async def start(self) -> None:
        greeting = json.loads(await self._reader.readline() or b"null")
        if not isinstance(greeting, dict) or "QMP" not in greeting:
            raise HostError(f"QEMU's QMP socket sent an unexpected greeting: {greeting!r}")
        self._task = asyncio.create_task(self._read_loop())
        await self.execute("qmp_capabilities")

    async def _read_loop(self) -> None:
        error: BaseException = HostError("QEMU closed its QMP socket")
        try:
            while line := await self._reader.readline():
                msg = json.loads(line)
                if "event" in msg:
                    self.events = (self.events + [msg])[-64:]
                    self._notify(msg)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut and not fut.done():
                    fut.set_result(msg)
        except (OSError, ValueError) as e:
            error = HostError(f"QMP connection failed: {e}")
        finally:
            for fut in [*self._pending.values(), *(w[2] for w in self._waiters)]:
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()
            self._waiters.clear()

    def _notify(self, msg: dict) -> None:
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        for waiter in list(self._waiters):
            name, match, fut = waiter
            if msg["event"] == name and not fut.done() and match(data):
                fut.set_result(data)
                self._waiters.remove(waiter)

    def event_waiter(self, name: str, match: Callable[[dict], bool] = lambda _: True
                     ) -> asyncio.Future:
        """A future for the next event `name` whose data satisfies `match`."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((name, match, fut))
        return fut

    async def execute(self, command: str, arguments: dict | None = None) -> object:
        msg_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        request = {"execute": command, "id": msg_id}
        if arguments:
            request["arguments"] = arguments
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        reply = await fut
        if "error" in reply:
            err = reply["error"]
            raise QMPError(command, err.get("class", "?"), err.get("desc", "?"))
        return reply.get("return")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
        try:
            self._writer.close()
        except OSError:
            pass
