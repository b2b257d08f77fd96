"""Processes running in the guest, seen from the host: `Process`, `ExecResult`, `OutputChunk`.

A `Process` owns one exec stream. A pump task reads the stream and hands output to the
callbacks registered with `on(...)` and to async iteration; credit goes back to the guest only
as output is consumed, so a slow consumer slows the guest process instead of growing host
memory. `run_to_completion` is the collect-everything path behind `sandbox.exec`.
"""

from __future__ import annotations

import asyncio
import inspect
import signal as _signal
from dataclasses import dataclass
from typing import Callable

from .channel import Stream
from .errors import ExecError, ExecTimeoutError, SandboxDiedError

STDOUT, STDERR = 1, 2
_ITER_QUEUE = 256  # chunks buffered for async iteration before the guest is slowed down


@dataclass(frozen=True)
class ExecResult:
    """The outcome of `sandbox.exec`: raw bytes, with text views."""

    stdout_bytes: bytes
    stderr_bytes: bytes
    exit_code: int
    signal: int | None = None

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a process's output; `stream` is "stdout" or "stderr"."""

    stream: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def exit_status(msg: dict) -> tuple[int, int | None]:
    """Shell convention: a process killed by signal N exits with 128 + N."""
    if msg.get("signal") is not None:
        return 128 + msg["signal"], msg["signal"]
    return msg.get("code") or 0, None


async def start_stream(stream: Stream, argv: list[str], **options) -> int:
    """Send exec and wait for the guest to say the process started; returns its pid."""
    fields = {k: v for k, v in options.items() if v is not None}
    await stream.send("exec", argv=argv, **fields)
    msg = await stream.recv()
    if msg["t"] == "started":
        return msg["pid"]
    stream.close()
    if msg["t"] == "error":
        raise ExecError(f"cannot start {argv[0]!r} in the guest: {msg['message']}")
    raise ExecError(f"unexpected {msg['t']!r} from the guest while starting {argv[0]!r}")


class Process:
    """A process started with `sandbox.spawn`. Output arrives through `on(...)` callbacks
    and/or `async for chunk in process`; `wait()` returns the exit code."""

    def __init__(self, stream: Stream, pid: int, argv: list[str]):
        self._stream = stream
        self.pid = pid
        self.argv = argv
        self._callbacks: dict[str, list[Callable]] = {"stdout": [], "stderr": [], "exit": []}
        self._queue: asyncio.Queue = asyncio.Queue(_ITER_QUEUE)
        self._iterating = False
        self._exit: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._run())
        self.exit_code: int | None = None
        self.exit_signal: int | None = None  # set when a signal ended the process
        # A process nobody waits on may still die with its sandbox; that is not an error.
        self._exit.add_done_callback(lambda f: f.cancelled() or f.exception())

    def on(self, event: str, callback: Callable) -> "Process":
        """Register `callback(data: bytes)` for "stdout"/"stderr", `callback(exit_code)` for
        "exit". Callbacks may be plain functions or coroutines."""
        if event not in self._callbacks:
            raise ValueError(f"unknown event {event!r}: use 'stdout', 'stderr' or 'exit'")
        self._callbacks[event].append(callback)
        return self

    async def _emit(self, event: str, value) -> None:
        for callback in self._callbacks[event]:
            result = callback(value)
            if inspect.isawaitable(result):
                await result

    async def _run(self) -> None:
        try:
            while True:
                msg = await self._stream.recv()
                t = msg["t"]
                if t == "data" and msg["fd"] in (STDOUT, STDERR):
                    name = "stdout" if msg["fd"] == STDOUT else "stderr"
                    await self._emit(name, msg["d"])
                    if self._iterating or not self._callbacks[name]:
                        await self._queue.put(OutputChunk(name, msg["d"]))
                    await self._stream.consumed(msg["fd"], len(msg["d"]))
                elif t == "exit":
                    self.exit_code, self.exit_signal = exit_status(msg)
                    break
        except SandboxDiedError as e:
            if not self._exit.done():
                self._exit.set_exception(e)
            await self._queue.put(None)
            return
        finally:
            self._stream.close()
        self._exit.set_result(self.exit_code)
        await self._queue.put(None)
        await self._emit("exit", self.exit_code)

    def __aiter__(self):
        self._iterating = True
        return self._iterate()

    async def _iterate(self):
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                self._queue.put_nowait(None)
                return
            yield chunk

    async def write(self, data: bytes | str) -> None:
        """Write to the process's stdin (waits while the guest has no room for more)."""
        if isinstance(data, str):
            data = data.encode()
        await self._stream.send_data(0, data)

    async def close_stdin(self) -> None:
        await self._stream.send("eof", fd=0)

    async def signal(self, sig: int = _signal.SIGTERM, *, group: bool = True) -> None:
        """Send a signal to the process (and by default its whole process group)."""
        if not self._exit.done():
            await self._stream.send("signal", sig=int(sig), group=group)

    async def kill(self) -> None:
        await self.signal(_signal.SIGKILL)

    async def resize(self, rows: int, cols: int) -> None:
        await self._stream.send("resize", rows=rows, cols=cols)

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit code (128+N for signal N)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._exit), timeout)
        except asyncio.TimeoutError:
            if self._exit.done():
                raise  # the process's own outcome, not our deadline
            raise ExecTimeoutError(
                f"process {self.pid} ({self.argv[0]}) did not exit within {timeout} s; it is "
                "still running", timeout=timeout) from None

    @property
    def returncode(self) -> int | None:
        return self.exit_code


async def run_to_completion(stream: Stream, argv: list[str], *, stdin: bytes | None,
                            timeout: float | None, **options) -> ExecResult:
    """Run one command, collect all of its output, return an ExecResult. On timeout the
    whole process group is killed and ExecTimeoutError carries the partial output."""
    out = {STDOUT: bytearray(), STDERR: bytearray()}
    await start_stream(stream, argv, stdin=stdin is not None, **options)

    async def feed() -> None:
        if stdin:
            await stream.send_data(0, stdin)
        await stream.send("eof", fd=0)

    async def collect() -> dict:
        while True:
            msg = await stream.recv()
            if msg["t"] == "data" and msg["fd"] in out:
                out[msg["fd"]] += msg["d"]
                await stream.consumed(msg["fd"], len(msg["d"]))
            elif msg["t"] == "exit":
                return msg

    feeder = asyncio.create_task(feed()) if stdin is not None else None
    try:
        msg = await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        await stream.send("signal", sig=_signal.SIGKILL, group=True)
        raise ExecTimeoutError(
            f"command {argv!r} did not finish within {timeout} s; its process group was killed",
            stdout=bytes(out[STDOUT]), stderr=bytes(out[STDERR]), timeout=timeout,
        ) from None
    finally:
        if feeder:
            feeder.cancel()
        stream.close()
    code, sig = exit_status(msg)
    return ExecResult(bytes(out[STDOUT]), bytes(out[STDERR]), code, sig)
