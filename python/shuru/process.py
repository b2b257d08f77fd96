"""Processes running in the guest, seen from the host: `Process`, `ExecResult`, `OutputChunk`.

A `Process` owns one exec stream. A pump task reads the stream and hands output to the
callbacks registered with `on(...)` and to async iteration; credit goes back to the guest only
as output is consumed, so a slow consumer slows the guest process instead of growing host
memory. Whatever ends the stream ends every waiting call with it: `wait()` and iteration
return after the exit callbacks ran, or raise the error that ended the stream (a callback's
exception, which also kills the process; ProtocolError; SandboxDiedError).
`run_to_completion` is the collect-everything path behind `sandbox.exec`; it keeps at most
`max_output` bytes of each stream, and past that kills the process and raises
ExecOutputLimitError with what it kept.

What the host holds per process is bounded whatever the guest does: per stream at most the
window (1 MiB) unread in the channel (see `channel.Stream`), plus, for a `Process`, at most
_ITER_BYTES waiting for iteration, and, for `exec`, the kept output.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import signal as _signal
from dataclasses import dataclass
from typing import AsyncGenerator, Callable

from shuru_guest import wire

from . import agent_client as agent
from .channel import Stream
from .errors import ExecOutputLimitError, ExecTimeoutError, ShuruError

STDOUT, STDERR = 1, 2
_NAMES = {STDOUT: "stdout", STDERR: "stderr"}
# Output waiting for async iteration before the guest is slowed down: the pump (and with it
# the credit) waits while either bound is reached.
_ITER_QUEUE = 256
_ITER_BYTES = wire.WINDOW
# What `exec` keeps of each of stdout and stderr unless told otherwise (`max_output=`).
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


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


async def start_stream(stream: Stream, argv: list[str], **options) -> int:
    """Send exec (`options` are `agent_client.exec_`'s: cwd, env, user, stdin, tty, rows,
    cols) and wait for the guest to say the process started; returns its pid."""
    await stream.send_msg(agent.exec_(argv, **options))
    try:
        msg = await stream.recv()
        if msg["t"] == "error":
            stream.close()  # the guest's end is over: nothing started
        return agent.parse_started(msg, argv)
    except BaseException:
        # Cancelled, the channel failed, or the guest answered nonsense, while the guest
        # may be starting it: whatever starts is killed, as nobody will hold its Process.
        await abandon(stream)
        raise


async def abandon(stream: Stream) -> None:
    """The host gives up on a process that is still running: kill its process group and
    drop the rest of its output (credited back, so the guest can finish the stream)."""
    if stream.closed:
        return
    stream.discard()
    with contextlib.suppress(ShuruError):
        await stream.send_msg(agent.signal(_signal.SIGKILL, group=True))


class _Output:
    """Chunks waiting for `async for`, then how the output ended (None: the process exited;
    or the error that ended the stream). `put` waits while _ITER_QUEUE chunks or
    _ITER_BYTES bytes wait, unless the channel broke; `end` never waits."""

    def __init__(self, broken: asyncio.Event):
        self._chunks: collections.deque[OutputChunk] = collections.deque()
        self._bytes = 0
        self._changed = asyncio.Event()
        self._broken = broken
        self.ended = False
        self.error: BaseException | None = None

    @property
    def full(self) -> bool:
        return len(self._chunks) >= _ITER_QUEUE or self._bytes >= _ITER_BYTES

    async def put(self, chunk: OutputChunk) -> None:
        while self.full and not self._broken.is_set():
            self._changed.clear()
            waits = [asyncio.ensure_future(self._changed.wait()),
                     asyncio.ensure_future(self._broken.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        self._chunks.append(chunk)
        self._bytes += len(chunk.data)
        self._changed.set()

    def end(self, error: BaseException | None) -> None:
        self.ended, self.error = True, error
        self._changed.set()

    async def get(self) -> OutputChunk | None:
        """The next chunk; None at a clean end; raises the error that ended the output."""
        while not self._chunks:
            if self.ended:
                if self.error is not None:
                    raise self.error
                return None
            self._changed.clear()
            await self._changed.wait()
        chunk = self._chunks.popleft()
        self._bytes -= len(chunk.data)
        self._changed.set()
        return chunk


class Process:
    """A process started with `sandbox.spawn`. Output arrives through `on(...)` callbacks
    and/or `async for chunk in process`; `wait()` returns the exit code once the `exit`
    callbacks have run. A callback that raises ends the stream: the process group is
    killed, and `wait()` and iteration raise that exception."""

    def __init__(self, stream: Stream, pid: int, argv: list[str]):
        self._stream = stream
        self.pid = pid
        self.argv = argv
        self._callbacks: dict[str, list[Callable]] = {"stdout": [], "stderr": [], "exit": []}
        self._output = _Output(stream.broken)
        self._iterating = False
        self._callback_error: BaseException | None = None
        self._exit: asyncio.Future = asyncio.get_running_loop().create_future()
        self.exit_code: int | None = None
        self.exit_signal: int | None = None  # set when a signal ended the process
        # A process nobody waits on may still die with its sandbox; that is not an error.
        # A callback's exception is: asyncio reports it if nobody retrieves it.
        self._exit.add_done_callback(
            lambda f: f.cancelled() or self._callback_error is not None or f.exception())
        self._pump = asyncio.create_task(self._run())

    def on(self, event: str, callback: Callable) -> "Process":
        """Register `callback(data: bytes)` for "stdout"/"stderr", `callback(exit_code)` for
        "exit". Callbacks may be plain functions or coroutines; one that raises ends the
        process (see the class)."""
        if event not in self._callbacks:
            raise ValueError(f"unknown event {event!r}: use 'stdout', 'stderr' or 'exit'")
        self._callbacks[event].append(callback)
        return self

    async def _emit(self, event: str, value) -> None:
        for callback in self._callbacks[event]:
            try:
                result = callback(value)
                if inspect.isawaitable(result):
                    await result
            except BaseException as e:
                self._callback_error = e
                raise

    async def _run(self) -> None:
        try:
            while True:
                msg = agent.exec_output(await self._stream.recv())
                if msg is None:
                    continue
                if msg["t"] == "data":  # the channel admits stdout and stderr only
                    name = _NAMES[msg["fd"]]
                    await self._emit(name, msg["d"])
                    if self._iterating or not self._callbacks[name]:
                        await self._output.put(OutputChunk(name, msg["d"]))
                    await self._stream.consumed(msg["fd"], len(msg["d"]))
                elif msg["t"] == "exit":
                    self.exit_code, self.exit_signal = agent.exit_status(msg)
                    self._stream.close()
                    await self._emit("exit", self.exit_code)
                    break
        except BaseException as e:
            try:
                if e is self._callback_error:
                    await abandon(self._stream)  # nobody is left to take its output
                else:
                    self._stream.close()
            finally:
                self._finish(e)
            if not isinstance(e, Exception):
                raise
            return
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        if isinstance(error, asyncio.CancelledError):
            error = ShuruError("the process's output was abandoned: its pump was cancelled")
        if error is None:
            self._exit.set_result(self.exit_code)
        else:
            self._exit.set_exception(error)
        self._output.end(error)

    def __aiter__(self) -> AsyncGenerator[OutputChunk, None]:
        self._iterating = True
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[OutputChunk, None]:
        self._check_not_in_callback("async for")
        while (chunk := await self._output.get()) is not None:
            yield chunk

    def _check_not_in_callback(self, what: str) -> None:
        if asyncio.current_task() is self._pump:
            # The pump runs the callbacks; waiting for it from one would wait forever.
            raise RuntimeError(f"{what} on a process from inside one of its own callbacks "
                               "would wait for itself")

    async def write(self, data: bytes | str) -> None:
        """Write to the process's stdin (waits while the guest has no room for more). What
        the process can no longer read, because it closed its stdin or exited, is dropped."""
        if isinstance(data, str):
            data = data.encode()
        await self._stream.send_data(0, data)

    async def close_stdin(self) -> None:
        await self._stream.send_msg(agent.eof(0))

    async def signal(self, sig: int = _signal.SIGTERM, *, group: bool = True) -> None:
        """Send a signal to the process (and by default its whole process group)."""
        if not self._exit.done():
            await self._stream.send_msg(agent.signal(sig, group))

    async def kill(self) -> None:
        await self.signal(_signal.SIGKILL)

    async def resize(self, rows: int, cols: int) -> None:
        await self._stream.send_msg(agent.resize(rows, cols))

    async def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and its `exit` callbacks to run; return its exit
        code (128+N for signal N), or raise the error that ended its stream. ExecTimeoutError
        (a TimeoutError) when `timeout` passes first; the process goes on running."""
        self._check_not_in_callback("wait()")
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


def _shown(argv: list[str]) -> str:
    text = repr(argv)
    return text if len(text) <= 200 else text[:197] + "..."


async def run_to_completion(stream: Stream, argv: list[str], *, stdin: bytes | None,
                            timeout: float | None, max_output: int = DEFAULT_MAX_OUTPUT,
                            **options) -> ExecResult:
    """Run one command, collect its output, return an ExecResult. On timeout the whole
    process group is killed and ExecTimeoutError carries the partial output; once stdout or
    stderr passes `max_output` bytes, the same happens with ExecOutputLimitError, carrying
    the first `max_output` bytes of each. Either way the rest of the output is dropped as it
    comes, so the host never holds more than that."""
    out = {STDOUT: bytearray(), STDERR: bytearray()}
    over: list[int] = []  # the fd that passed the limit
    await start_stream(stream, argv, stdin=stdin is not None, **options)

    async def feed() -> None:
        if stdin:
            await stream.send_data(0, stdin)
        await stream.send_msg(agent.eof(0))

    async def collect() -> dict | None:
        while True:
            msg = agent.exec_output(await stream.recv())
            if msg is None:
                continue
            if msg["t"] == "data":  # the channel admits stdout and stderr only
                kept, data = out[msg["fd"]], msg["d"]
                if len(kept) + len(data) > max_output:
                    kept += data[:max_output - len(kept)]
                    over.append(msg["fd"])
                    return None
                kept += data
                await stream.consumed(msg["fd"], len(data))
            elif msg["t"] == "exit":
                stream.close()
                return msg

    feeder = asyncio.create_task(feed()) if stdin is not None else None
    if feeder:
        feeder.add_done_callback(lambda t: t.cancelled() or t.exception())
    try:
        msg = await asyncio.wait_for(collect(), timeout)
    except asyncio.TimeoutError:
        raise ExecTimeoutError(
            f"command {_shown(argv)} did not finish within {timeout} s; its process group "
            "was killed", stdout=bytes(out[STDOUT]), stderr=bytes(out[STDERR]),
            timeout=timeout) from None
    finally:
        if feeder:
            feeder.cancel()
        await abandon(stream)  # unless it exited: nobody is left to take its output
    if msg is None:
        name = _NAMES[over[0]]
        raise ExecOutputLimitError(
            f"command {_shown(argv)} wrote more than {max_output} bytes to {name}; its process "
            "group was killed and the output past the limit dropped",
            stdout=bytes(out[STDOUT]), stderr=bytes(out[STDERR]), limit=max_output,
            stream=name,
            hint="pass a larger max_output=, or stream the output with spawn(), or write it "
                 "to a file in the guest and fetch it with files.download()")
    code, sig = agent.exit_status(msg)
    return ExecResult(bytes(out[STDOUT]), bytes(out[STDERR]), code, sig)
