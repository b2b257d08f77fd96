"""The sync facade has exactly the async API's public methods, and each one really calls its
async twin with the arguments it was given. (The mirrored methods copy their signatures from
the async ones, so comparing those signatures alone could never fail: the calls are checked
instead, and the hand-written methods' signatures are compared.)"""

import inspect

import pytest

from shuru import AsyncSandbox, Process, Sandbox, SyncProcess
from shuru.files import Files, Watch
from shuru.sync import SyncFiles, SyncWatch, _LoopThread, public_async_methods

PAIRS = [(Sandbox, AsyncSandbox), (SyncProcess, Process), (SyncFiles, Files), (SyncWatch, Watch)]
# Sync methods that return something else than their async twin, on purpose, and the async
# method they go through instead: `Sandbox.connect` hands back a blocking socket, since
# asyncio streams would belong to the sandbox's private loop.
ROUTED = {(Sandbox, "connect"): "_connect_socket"}


def _instance_fn(cls, name):
    """The method a sandbox object has under `name` (`connect` means attach on the class)."""
    static = inspect.getattr_static(cls, name)
    return getattr(static, "_method", None) or getattr(cls, name)


def _is_class_level(cls, name):
    return isinstance(inspect.getattr_static(cls, name), (classmethod, staticmethod))


def _public(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


class Recorder:
    """Stands in for the async object: every method records how it was called."""

    def __init__(self, async_cls):
        self.calls = []
        for name, member in inspect.getmembers(async_cls):
            if inspect.iscoroutinefunction(member):
                setattr(self, name, self._coroutine(name))
            elif inspect.isasyncgenfunction(member):
                setattr(self, name, self._generator(name))

    def _coroutine(self, name):
        async def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return name
        return method

    def _generator(self, name):
        async def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            yield name
        return method


def _sample_call(fn):
    """Distinct values for every parameter of `fn` (after self): positional ones by position,
    keyword-only ones by name."""
    args, kwargs = [], {}
    for param in list(inspect.signature(fn).parameters.values())[1:]:
        value = object()
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            args.append(value)
        elif param.kind == param.KEYWORD_ONLY:
            kwargs[param.name] = value
    return tuple(args), kwargs


@pytest.mark.parametrize("sync_cls, async_cls", PAIRS, ids=lambda c: c.__name__)
def test_every_async_method_is_called_through_with_its_arguments(sync_cls, async_cls):
    methods = {name: fn for name, fn in inspect.getmembers(async_cls)
               if not name.startswith("_") and not _is_class_level(async_cls, name)
               and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))
               and (sync_cls, name) not in ROUTED}
    assert methods
    for name, fn in methods.items():
        recorder = Recorder(async_cls)
        facade = object.__new__(sync_cls)
        facade._async, facade._runner = recorder, _LoopThread()
        try:
            args, kwargs = _sample_call(fn)
            result = getattr(facade, name)(*args, **kwargs)
            if inspect.isasyncgenfunction(fn):
                assert list(result) == [name]
            elif name in sync_cls.__dict__ and not hasattr(sync_cls.__dict__[name], "__wrapped__"):
                pass  # written by hand (Sandbox.stop also ends the loop): the call is what counts
            else:
                assert result == name
            assert recorder.calls == [(name, args, kwargs)], name
        finally:
            if not facade._runner.loop.is_closed():
                facade._runner.close()


def test_routed_methods_call_their_async_route_with_their_arguments():
    class Socket:
        def setblocking(self, flag):
            self.blocking = flag

    for (sync_cls, name), route in ROUTED.items():
        async_cls = dict(PAIRS)[sync_cls]
        ours = inspect.signature(_instance_fn(sync_cls, name)).parameters
        assert list(ours) == list(inspect.signature(_instance_fn(async_cls, name)).parameters)
        calls, sock = [], Socket()

        async def routed(*args, **kwargs):
            calls.append((args, kwargs))
            return sock

        recorder = Recorder(async_cls)
        setattr(recorder, route, routed)
        facade = object.__new__(sync_cls)
        facade._async, facade._runner = recorder, _LoopThread()
        try:
            args, kwargs = _sample_call(_instance_fn(async_cls, name))
            assert getattr(facade, name)(*args, **kwargs) is sock
            assert calls == [(args, kwargs)] and sock.blocking is True
        finally:
            facade._runner.close()


def test_sandbox_start_passes_every_option_to_the_async_start(monkeypatch):
    seen = {}

    async def start(**kwargs):
        seen.update(kwargs)
        return AsyncSandbox()

    monkeypatch.setattr(AsyncSandbox, "start", start)
    options = {"cpus": 1, "config": "x.yaml", "on_console": print, "from_": "ready"}
    sandbox = Sandbox.start(lifetime=5, **options)
    assert seen == {"lifetime": 5.0, **options}
    sandbox._runner.close()


def test_hand_written_methods_match_the_async_ones():
    # The plain (not mirrored) methods are written twice; their parameters must agree.
    for sync_cls, async_cls in PAIRS:
        for name in _public(async_cls):
            member = getattr(async_cls, name)
            if (not inspect.isfunction(member) or inspect.iscoroutinefunction(member)
                    or inspect.isasyncgenfunction(member)):
                continue
            ours = inspect.signature(getattr(sync_cls, name)).parameters
            theirs = inspect.signature(member).parameters
            assert list(ours) == list(theirs), (sync_cls.__name__, name)
            for p in ours:
                assert ours[p].kind == theirs[p].kind and ours[p].default == theirs[p].default, \
                    (sync_cls.__name__, name, p)


def test_sandbox_public_names_match():
    async_names = _public(AsyncSandbox) - {"config", "state", "files", "accel"}
    sync_names = _public(Sandbox) - {"config", "state", "files", "accel"}
    assert async_names == sync_names


def test_facades_have_every_public_async_method():
    for sync_cls, async_cls in PAIRS:
        for name in public_async_methods(async_cls):
            assert callable(getattr(sync_cls, name, None)), (sync_cls.__name__, name)
    assert {"pid", "exit_code", "on"} <= _public(SyncProcess)
    assert hasattr(SyncFiles, "iter_read")
