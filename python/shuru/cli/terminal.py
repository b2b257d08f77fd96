"""`shuru run`'s terminal plumbing: an interactive PTY session or a piped command.

With a TTY on stdin the local terminal goes raw, so every key (Ctrl-C included) goes to the
guest's PTY, and window size changes follow. Without one, stdin is streamed to the command
and its stdout/stderr come back on ours. Either way the command's exit status is returned.
The serial console (`--console`) is the guest's too, so it is neutralised before it reaches
the terminal (`sanitize`); the command's own output is passed through as it is, as ssh does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import threading
import tty

from ..config import SandboxConfig
from ..sandbox import AsyncSandbox
from ..sanitize import StreamNeutraliser


class _ConsoleSink:
    """The VM's serial console on our stderr, its control sequences made harmless."""

    def __init__(self) -> None:
        self._safe = StreamNeutraliser()

    def __call__(self, chunk: bytes) -> None:
        self._write(self._safe.feed(chunk))

    def close(self) -> None:
        self._write(self._safe.flush())

    @staticmethod
    def _write(data: bytes) -> None:
        try:
            _write_all(2, data)
        except OSError:
            pass


async def run_command(config: SandboxConfig, on_exit=None, on_start=None,
                      before_stop=None) -> int:
    """Run the config's command; `on_start(sandbox)` runs once it is up (the free host ports
    forwards got are printed there), `await before_stop(sandbox)` once the command ended
    while the sandbox still runs (`--diff` reads the mounts' changes there), `on_exit(sandbox)`
    after it, whatever happened (`--verbose` prints the network log there)."""
    interactive = os.isatty(0)
    sink = _ConsoleSink() if config.console else None
    sandbox = AsyncSandbox(config, on_console=sink)
    try:
        async with sandbox:
            if on_start is not None:
                on_start(sandbox)
            try:
                if interactive:
                    return await _interactive(sandbox, list(config.command))
                return await run_piped(sandbox, list(config.command))
            finally:
                if before_stop is not None:
                    await before_stop(sandbox)
    finally:
        if sink is not None:
            sink.close()
        if on_exit is not None:
            on_exit(sandbox)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


async def run_piped(sandbox: AsyncSandbox, argv: list[str], **options) -> int:
    proc = await sandbox.spawn(argv, **options)
    broken = False

    def out(fd):
        def write(data: bytes) -> None:
            nonlocal broken
            if broken:
                return
            try:
                _write_all(fd, data)
            except BrokenPipeError:
                broken = True  # like a shell pipeline: the reader left, stop the writer
                asyncio.get_running_loop().create_task(proc.kill())
        return write

    proc.on("stdout", out(1)).on("stderr", out(2))
    feeder = asyncio.create_task(_feed_stdin(proc))
    try:
        return await proc.wait()
    finally:
        feeder.cancel()


async def _feed_stdin(proc) -> None:
    """Stream our stdin to the process. A daemon thread does the blocking reads (stdin may be
    a file, where the event loop cannot poll), so a never-ending stdin cannot hold up exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=16)

    def reader() -> None:
        while True:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            fut = asyncio.run_coroutine_threadsafe(queue.put(chunk), loop)
            try:
                fut.result()
            except Exception:
                return
            if not chunk:
                return

    threading.Thread(target=reader, daemon=True, name="shuru-stdin").start()
    while chunk := await queue.get():
        await proc.write(chunk)
    await proc.close_stdin()


async def _interactive(sandbox: AsyncSandbox, argv: list[str], user: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    cols, rows = os.get_terminal_size(0)
    proc = await sandbox.spawn(argv, tty=True, rows=rows, cols=cols, user=user)
    proc.on("stdout", lambda data: _write_all(1, data))
    pending: asyncio.Queue = asyncio.Queue()

    def on_key() -> None:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        pending.put_nowait(data)
        if not data:
            loop.remove_reader(0)

    def on_resize() -> None:
        c, r = os.get_terminal_size(0)
        loop.create_task(proc.resize(r, c))

    async def forward() -> None:
        while data := await pending.get():
            await proc.write(data)
        await proc.close_stdin()

    saved = termios.tcgetattr(0)
    # TCSANOW, not setraw's default TCSAFLUSH: keys typed while the VM booted go to it.
    tty.setraw(0, termios.TCSANOW)
    loop.add_reader(0, on_key)
    loop.add_signal_handler(signal.SIGWINCH, on_resize)
    forwarder = asyncio.create_task(forward())
    try:
        return await proc.wait()
    finally:
        forwarder.cancel()
        loop.remove_reader(0)
        loop.remove_signal_handler(signal.SIGWINCH)
        with contextlib.suppress(termios.error):
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        sys.stdout.flush()
