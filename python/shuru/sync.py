"""`Sandbox` and `SyncProcess`: the synchronous twins of `AsyncSandbox` and `Process`.

Async is written once. Each sync sandbox owns a private event loop on a daemon thread and
runs the async methods there. Every public method of the async classes is written out here
with the same signature (so type checkers and IDEs see the sync API as it is), and each is
one call through the loop; `tests/unit/test_sync_api.py` fails when the two drift apart, and
`tests/typecheck/` has mypy check what the sync calls return. The loop thread lives exactly as
long as the sandbox, which matters: QEMU is tied to it with PDEATHSIG.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import os
import signal as _signal
import socket
import threading
from typing import Any, AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence, TypeVar

from . import checkpoints
from .config import SandboxConfig
from .files import MAX_DOWNLOAD, FileInfo, Files, Watch
from .mounts import Changes, MountSpec
from .ports import Address, Forward
from .process import DEFAULT_MAX_OUTPUT, ExecResult, OutputChunk, Process
from .sandbox import AsyncSandbox, State, _ClassOrInstance, start_lifetime

T = TypeVar("T")
# Files.list and Sandbox.list are methods: in their class bodies `list` means the method.
_list = builtins.list


class _LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="shuru-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop.is_closed():
            # The sandbox was stopped and its loop is gone; what remains to run is only the
            # async side's state guard, which needs no VM, so a throwaway loop will do.
            return asyncio.run(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """The items of an async iterator that lives on the loop, one blocking step each."""
        async def step() -> T:
            return await agen.__anext__()

        while True:
            try:
                yield self.run(step())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


async def _call(fn: Callable[[], T]) -> T:
    """A plain method or property run on the loop thread, where the state it reads is
    changed."""
    return fn()


class SyncProcess:
    """A process in the sandbox, with blocking methods. Iterating yields OutputChunks."""

    def __init__(self, process: Process, runner: _LoopThread):
        self._async = process
        self._runner = runner

    @property
    def pid(self) -> int:
        return self._async.pid

    @property
    def argv(self) -> _list[str]:
        return self._async.argv

    @property
    def exit_code(self) -> int | None:
        return self._async.exit_code

    @property
    def exit_signal(self) -> int | None:
        """The signal that ended the process, if one did."""
        return self._async.exit_signal

    @property
    def returncode(self) -> int | None:
        return self._async.returncode

    def on(self, event: str, callback: Callable) -> SyncProcess:
        """Callbacks run on the sandbox's loop thread."""
        self._async.on(event, callback)
        return self

    def __iter__(self) -> Iterator[OutputChunk]:
        return self._runner.iterate(self._async.__aiter__())

    def write(self, data: bytes | str) -> None:
        self._runner.run(self._async.write(data))

    def close_stdin(self) -> None:
        self._runner.run(self._async.close_stdin())

    def signal(self, sig: int = _signal.SIGTERM, *, group: bool = True) -> None:
        self._runner.run(self._async.signal(sig, group=group))

    def kill(self) -> None:
        self._runner.run(self._async.kill())

    def resize(self, rows: int, cols: int) -> None:
        self._runner.run(self._async.resize(rows, cols))

    def wait(self, timeout: float | None = None) -> int:
        return self._runner.run(self._async.wait(timeout))


class SyncFiles:
    """`sandbox.files` with blocking methods; `iter_read`, `iter_list` and `walk` yield as
    they go."""

    def __init__(self, files: Files, runner: _LoopThread):
        self._async = files
        self._runner = runner

    def stat(self, path: str) -> FileInfo:
        return self._runner.run(self._async.stat(path))

    def exists(self, path: str) -> bool:
        return self._runner.run(self._async.exists(path))

    def list(self, path: str) -> _list[FileInfo]:
        return self._runner.run(self._async.list(path))

    def iter_list(self, path: str) -> Iterator[FileInfo]:
        return self._runner.iterate(self._async.iter_list(path))

    def walk(self, path: str) -> Iterator[FileInfo]:
        return self._runner.iterate(self._async.walk(path))

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> None:
        self._runner.run(self._async.mkdir(path, parents=parents, mode=mode))

    def remove(self, path: str, *, recursive: bool = True) -> None:
        self._runner.run(self._async.remove(path, recursive=recursive))

    def rename(self, path: str, dest: str) -> None:
        self._runner.run(self._async.rename(path, dest))

    def copy(self, path: str, dest: str) -> None:
        self._runner.run(self._async.copy(path, dest))

    def chmod(self, path: str, mode: int) -> None:
        self._runner.run(self._async.chmod(path, mode))

    def symlink(self, path: str, target: str) -> None:
        self._runner.run(self._async.symlink(path, target))

    def iter_read(self, path: str) -> Iterator[bytes]:
        return self._runner.iterate(self._async.iter_read(path))

    def read(self, path: str) -> bytes:
        return self._runner.run(self._async.read(path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self._runner.run(self._async.read_text(path, encoding))

    def write(self, path: str, data: Any, *, mode: int | None = None,
              append: bool = False) -> int:
        return self._runner.run(self._async.write(path, data, mode=mode, append=append))

    def upload(self, host_path: str | os.PathLike, path: str) -> None:
        self._runner.run(self._async.upload(host_path, path))

    def download(self, path: str, host_path: str | os.PathLike, *,
                 max_size: int | None = MAX_DOWNLOAD) -> None:
        self._runner.run(self._async.download(path, host_path, max_size=max_size))


class SyncChanges(_list[Any]):
    """`mount_changes`' list with a blocking `apply(host_dir=None)`."""

    def __init__(self, changes: Changes, runner: _LoopThread):
        super().__init__(changes)
        self._async = changes
        self._runner = runner
        self.guest = changes.guest
        self.host = changes.host

    def apply(self, host_dir: str | os.PathLike | None = None) -> None:
        self._runner.run(self._async.apply(host_dir))

    def __str__(self) -> str:
        return str(self._async)


class SyncWatch:
    """A running watch; `stop()` ends it. Callbacks run on the sandbox's loop thread."""

    def __init__(self, watch: Watch, runner: _LoopThread):
        self._async = watch
        self._runner = runner

    @property
    def path(self) -> str:
        return self._async.path

    @property
    def error(self) -> BaseException | None:
        """What ended the watch early (the guest's error, or the callback's), if anything."""
        return self._async.error

    def wait(self, timeout: float | None = None) -> None:
        self._runner.run(self._async.wait(timeout))

    def stop(self) -> None:
        self._runner.run(self._async.stop())


class Sandbox:
    """A disposable Linux VM with a blocking API; see `AsyncSandbox` for the methods."""

    def __init__(self, async_sandbox: AsyncSandbox, runner: _LoopThread):
        self._async = async_sandbox
        self._runner = runner
        self.files = SyncFiles(async_sandbox.files, runner)

    # ---- lifecycle ---------------------------------------------------------------------

    @classmethod
    def start(cls, *, config: str | os.PathLike | None = None,
              lifetime: float | None = None,
              on_console: Callable[[bytes], None] | None = None,
              timeout: float | None = None, detach: bool = False,
              name: str | None = None, idle_timeout: float | None = None,
              **options: Any) -> Sandbox:
        """Start a sandbox; see `AsyncSandbox.start` for the options."""
        # The deprecated name is translated here, so its warning points at the caller's line
        # (the async start runs on the loop thread).
        lifetime = start_lifetime(lifetime, timeout, stacklevel=3)
        runner = _LoopThread()
        try:
            sandbox = runner.run(AsyncSandbox.start(
                config=config, lifetime=lifetime, on_console=on_console, detach=detach,
                name=name, idle_timeout=idle_timeout, **options))
        except BaseException:
            runner.close()
            raise
        return cls(sandbox, runner)

    @classmethod
    def attach(cls, name: str) -> Sandbox:
        """A detached sandbox by name; see `AsyncSandbox.attach`."""
        runner = _LoopThread()
        try:
            sandbox = runner.run(AsyncSandbox.attach(name))
        except BaseException:
            runner.close()
            raise
        return cls(sandbox, runner)

    @staticmethod
    def list() -> _list[dict]:
        """The user's detached sandboxes; see `AsyncSandbox.list`."""
        from .named import registry

        return registry.list_records()

    def checkpoint(self, name: str, *, overwrite: bool = False) -> checkpoints.Checkpoint:
        return self._runner.run(self._async.checkpoint(name, overwrite=overwrite))

    def stop(self) -> None:
        """Stop the VM and discard its disk. Safe to call more than once."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._async.stop())
        finally:
            self._runner.close()

    def disconnect(self) -> None:
        """Leave a detached sandbox running and close this connection to it."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._async.disconnect())
        finally:
            self._runner.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._async._remote is not None:
            self.disconnect()  # a detached sandbox outlives the block
        else:
            self.stop()

    def __del__(self) -> None:
        # A forgotten sandbox must not keep a VM running; stop() is idempotent. A detached
        # one is meant to outlive this object: only its connection goes.
        try:
            if self._runner.loop.is_running():
                if self._async._remote is not None:
                    self.disconnect()
                else:
                    self.stop()
        except Exception:
            pass

    # ---- state -------------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        return self._async.name

    @property
    def state(self) -> State:
        return self._async.state

    @property
    def config(self) -> SandboxConfig:
        return self._async.config

    @property
    def accel(self) -> str | None:
        return self._async.accel

    @property
    def restored(self) -> bool:
        return self._async.restored

    def console_tail(self, lines: int = 40) -> str:
        return self._async.console_tail(lines)

    # ---- commands and files ------------------------------------------------------------

    def exec(self, command: str | Sequence[str], *, cwd: str | None = None,
             env: Mapping[str, str] | None = None, user: str | None = None,
             timeout: float | None = None, stdin: bytes | str | None = None,
             shell: str = "sh", max_output: int = DEFAULT_MAX_OUTPUT) -> ExecResult:
        return self._runner.run(self._async.exec(
            command, cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin, shell=shell,
            max_output=max_output))

    def spawn(self, command: str | Sequence[str], *, cwd: str | None = None,
              env: Mapping[str, str] | None = None, user: str | None = None,
              tty: bool = False, rows: int = 24, cols: int = 80,
              shell: str = "sh") -> SyncProcess:
        process = self._runner.run(self._async.spawn(
            command, cwd=cwd, env=env, user=user, tty=tty, rows=rows, cols=cols, shell=shell))
        return SyncProcess(process, self._runner)

    def watch(self, path: str, callback: Callable, *, recursive: bool = True) -> SyncWatch:
        watch = self._runner.run(self._async.watch(path, callback, recursive=recursive))
        return SyncWatch(watch, self._runner)

    def network_log(self) -> _list[dict]:
        """The network audit log; see `AsyncSandbox.network_log`."""
        return self._runner.run(_call(self._async.network_log))

    # ---- pause, lifetimes, metrics -----------------------------------------------------

    def pause(self) -> None:
        self._runner.run(self._async.pause())

    def resume(self) -> None:
        self._runner.run(self._async.resume())

    def set_timeout(self, lifetime: float | None = None, *,
                    idle_timeout: float | None = None) -> None:
        self._runner.run(self._async.set_timeout(lifetime, idle_timeout=idle_timeout))

    def metrics(self) -> dict:
        return self._runner.run(self._async.metrics())

    # ---- ports and host folders --------------------------------------------------------

    def expose(self, guest_port: int, host_port: int | None = None) -> Address:
        return self._runner.run(self._async.expose(guest_port, host_port))

    def unexpose(self, guest_port: int, host_port: int | None = None) -> None:
        self._runner.run(self._async.unexpose(guest_port, host_port))

    @_ClassOrInstance
    def connect(self, guest_port: int) -> socket.socket:
        """Connect to 127.0.0.1:`guest_port` in the sandbox: a connected, blocking
        `socket.socket` (asyncio streams would belong to the sandbox's private loop). (On
        the class, `Sandbox.connect(name)` is `attach(name)`.)"""
        sock: socket.socket = self._runner.run(self._async._connect_socket(guest_port))
        sock.setblocking(True)
        return sock

    @property
    def ports(self) -> _list[Forward]:
        """The forwards listening now; see `AsyncSandbox.ports`."""
        return self._runner.run(_call(lambda: self._async.ports))

    def mount_changes(self, guest_path: str) -> SyncChanges:
        return SyncChanges(self._runner.run(self._async.mount_changes(guest_path)),
                           self._runner)

    @property
    def mounts(self) -> _list[MountSpec]:
        """The host folders mounted now; see `AsyncSandbox.mounts`."""
        return self._runner.run(_call(lambda: self._async.mounts))


def _inherit_docs(sync_cls: type, async_cls: type) -> None:
    """`help()` on a sync method shows its async twin's docstring unless it has its own."""
    for name, member in vars(sync_cls).items():
        twin = inspect.getattr_static(async_cls, name, None)
        if name.startswith("_") or twin is None:
            continue
        fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
        twin_fn = twin.fget if isinstance(twin, property) else getattr(twin, "__func__", twin)
        if getattr(fn, "__doc__", None) is None and getattr(twin_fn, "__doc__", None):
            fn.__doc__ = twin_fn.__doc__


for _sync_cls, _async_cls in ((Sandbox, AsyncSandbox), (SyncProcess, Process),
                              (SyncFiles, Files), (SyncWatch, Watch), (SyncChanges, Changes)):
    _inherit_docs(_sync_cls, _async_cls)
