"""The sync facade has exactly the async API's public methods, with the same signatures."""

import inspect

from shuru import AsyncSandbox, Process, Sandbox, SyncProcess
from shuru.sync import public_async_methods


def _public(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


def test_sandbox_has_every_async_method_with_the_same_signature():
    for name, fn in public_async_methods(AsyncSandbox).items():
        assert hasattr(Sandbox, name), name
        assert inspect.signature(getattr(Sandbox, name)) == inspect.signature(fn), name
    assert inspect.signature(Sandbox.start) == inspect.signature(AsyncSandbox.start)


def test_sandbox_public_names_match():
    async_names = _public(AsyncSandbox) - {"config", "state", "files", "accel"}
    sync_names = _public(Sandbox) - {"config", "state", "files", "accel"}
    assert async_names == sync_names


def test_process_facade_matches():
    for name, fn in public_async_methods(Process).items():
        assert inspect.signature(getattr(SyncProcess, name)) == inspect.signature(fn), name
    assert {"pid", "exit_code", "on"} <= _public(SyncProcess)


def test_files_and_watch_facades_match():
    from shuru.files import Files, Watch
    from shuru.sync import SyncFiles, SyncWatch
    for sync_cls, async_cls in ((SyncFiles, Files), (SyncWatch, Watch)):
        for name, fn in public_async_methods(async_cls).items():
            assert inspect.signature(getattr(sync_cls, name)) == inspect.signature(fn), name
    assert hasattr(SyncFiles, "iter_read")
