"""`Sandbox` and `SyncProcess`: the synchronous twins of `AsyncSandbox` and `Process`.

Async is written once. Each sync sandbox owns a private event loop on a daemon thread and
runs the async methods there; every public async method of the async class appears here with
the same name and signature (generated below, and checked by a test). The loop thread lives
exactly as long as the sandbox, which matters: QEMU is tied to it with PDEATHSIG.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from typing import Any, Callable, Iterator

from .files import Files, Watch
from .mounts import Changes
from .process import Process
from .sandbox import AsyncSandbox, _ClassOrInstance, start_lifetime


class _LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="shuru-loop")
        self._thread.start()

    def run(self, coro) -> Any:
        if self.loop.is_closed():
            # The sandbox was stopped and its loop is gone; what remains to run is only the
            # async side's state guard, which needs no VM, so a throwaway loop will do.
            return asyncio.run(coro)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


async def _call(fn, *args):
    """A plain method run on the loop thread, where the state it reads is changed."""
    return fn(*args)


def _wrap_result(value: Any, runner: _LoopThread) -> Any:
    if isinstance(value, Process):
        return SyncProcess(value, runner)
    if isinstance(value, Watch):
        return SyncWatch(value, runner)
    if isinstance(value, Changes):
        return SyncChanges(value, runner)
    return value


def _sync_generator(name: str, async_gen_fn: Callable) -> Callable:
    @functools.wraps(async_gen_fn)
    def method(self, *args, **kwargs):
        agen = getattr(self._async, name)(*args, **kwargs)
        while True:
            try:
                yield self._runner.run(agen.__anext__())
            except StopAsyncIteration:
                return

    method.__signature__ = inspect.signature(async_gen_fn)
    return method


def _mirror(sync_cls: type, async_cls: type, skip: tuple[str, ...] = ()) -> None:
    """Give `sync_cls` a blocking twin of every public coroutine (and async generator)
    method of `async_cls`."""
    for name, member in inspect.getmembers(async_cls):
        if name.startswith("_") or name in skip:
            continue
        if inspect.iscoroutinefunction(member):
            setattr(sync_cls, name, _sync_method(name, member))
        elif inspect.isasyncgenfunction(member):
            setattr(sync_cls, name, _sync_generator(name, member))


def _sync_method(name: str, async_fn: Callable) -> Callable:
    @functools.wraps(async_fn)
    def method(self, *args, **kwargs):
        target = getattr(self._async, name)
        return _wrap_result(self._runner.run(target(*args, **kwargs)), self._runner)

    method.__signature__ = inspect.signature(async_fn)
    return method


def public_async_methods(cls: type) -> dict[str, Callable]:
    """Public coroutine methods of `cls` (instance methods, not classmethods such as `start`
    and `attach`, nor the static `list`)."""
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name),
                                              (classmethod, staticmethod)):
            continue
        if inspect.iscoroutinefunction(member):
            out[name] = member
    return out


class SyncProcess:
    """A process in the sandbox, with blocking methods. Iterating yields OutputChunks."""

    def __init__(self, process: Process, runner: _LoopThread):
        self._async = process
        self._runner = runner

    @property
    def pid(self) -> int:
        return self._async.pid

    @property
    def exit_code(self) -> int | None:
        return self._async.exit_code

    def on(self, event: str, callback: Callable) -> "SyncProcess":
        """Callbacks run on the sandbox's loop thread."""
        self._async.on(event, callback)
        return self

    def __iter__(self) -> Iterator:
        agen = self._async.__aiter__()
        while True:
            try:
                yield self._runner.run(agen.__anext__())
            except StopAsyncIteration:
                return


_mirror(SyncProcess, Process)


class _Proxy:
    def __init__(self, target: Any, runner: _LoopThread):
        self._async = target
        self._runner = runner


class SyncFiles(_Proxy):
    """`sandbox.files` with blocking methods; `iter_read` yields chunks."""


class SyncChanges(list):
    """`mount_changes`' list with a blocking `apply(host_dir=None)`."""

    def __init__(self, changes: Changes, runner: _LoopThread):
        super().__init__(changes)
        self._async = changes
        self._runner = runner
        self.guest, self.host = changes.guest, changes.host

    def apply(self, host_dir=None) -> None:
        self._runner.run(self._async.apply(host_dir))

    def __str__(self) -> str:
        return str(self._async)


class SyncWatch(_Proxy):
    """A running watch; `stop()` ends it. Callbacks run on the sandbox's loop thread."""

    @property
    def path(self) -> str:
        return self._async.path


_mirror(SyncFiles, Files)
_mirror(SyncWatch, Watch)


class Sandbox:
    """A disposable Linux VM with a blocking API; see `AsyncSandbox` for the methods."""

    def __init__(self, async_sandbox: AsyncSandbox, runner: _LoopThread):
        self._async = async_sandbox
        self._runner = runner
        self.files = SyncFiles(async_sandbox.files, runner)

    @classmethod
    def start(cls, **kwargs) -> "Sandbox":
        # The deprecated name is translated here, so its warning points at the caller's line
        # (the async start runs on the loop thread).
        kwargs["lifetime"] = start_lifetime(kwargs.get("lifetime"), kwargs.pop("timeout", None),
                                            stacklevel=3)
        runner = _LoopThread()
        try:
            sandbox = runner.run(AsyncSandbox.start(**kwargs))
        except BaseException:
            runner.close()
            raise
        return cls(sandbox, runner)

    @classmethod
    def attach(cls, name: str) -> "Sandbox":
        """A detached sandbox by name; see `AsyncSandbox.attach`."""
        runner = _LoopThread()
        try:
            sandbox = runner.run(AsyncSandbox.attach(name))
        except BaseException:
            runner.close()
            raise
        return cls(sandbox, runner)

    @staticmethod
    def list() -> list[dict]:
        """The user's detached sandboxes; see `AsyncSandbox.list`."""
        from .named import registry

        return registry.list_records()

    @property
    def name(self) -> str | None:
        return self._async.name

    @property
    def state(self):
        return self._async.state

    @property
    def config(self):
        return self._async.config

    @property
    def accel(self):
        return self._async.accel

    @property
    def restored(self) -> bool:
        return self._async.restored

    def console_tail(self, lines: int = 40) -> str:
        return self._async.console_tail(lines)

    def network_log(self) -> list[dict]:
        """The network audit log; see `AsyncSandbox.network_log`."""
        return self._runner.run(_call(self._async.network_log))

    @property
    def ports(self) -> list:
        """The forwards listening now; see `AsyncSandbox.ports`."""
        return self._runner.run(_call(lambda: self._async.ports))

    @property
    def mounts(self) -> list:
        """The host folders mounted now; see `AsyncSandbox.mounts`."""
        return self._runner.run(_call(lambda: self._async.mounts))

    @_ClassOrInstance
    def connect(self, guest_port: int):
        """Connect to 127.0.0.1:`guest_port` in the sandbox: a connected, blocking
        `socket.socket` (asyncio streams would belong to the sandbox's private loop). (On
        the class, `Sandbox.connect(name)` is `attach(name)`.)"""
        sock = self._runner.run(self._async._connect_socket(guest_port))
        sock.setblocking(True)
        return sock

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

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        if self._async._remote is not None:
            self.disconnect()  # a detached sandbox outlives the block
        else:
            self.stop()

    def __del__(self):
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


Sandbox.start.__func__.__signature__ = inspect.signature(AsyncSandbox.start.__func__)
_mirror(Sandbox, AsyncSandbox, skip=("start", "stop", "connect", "attach", "list", "disconnect"))
