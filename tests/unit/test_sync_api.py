"""The sync facade is the async API, method for method: the same public names, the same
parameters (names, kinds, defaults and annotations), the return types mapped to their sync
twins, and each method really calls its async twin with the arguments it was given.

Both sides are read from the real classes (`inspect`), and nothing is copied from one to the
other at run time: the sync methods are written out in `shuru/sync.py` so type checkers see
them, and these tests fail as soon as the two are edited apart."""

from __future__ import annotations

import inspect
import re

import pytest

from shuru import AsyncSandbox, Process, Sandbox, SyncProcess
from shuru.files import Files, Watch
from shuru.mounts import Changes
from shuru.sync import SyncChanges, SyncFiles, SyncWatch, _LoopThread

PAIRS = [(Sandbox, AsyncSandbox), (SyncProcess, Process), (SyncFiles, Files),
         (SyncWatch, Watch), (SyncChanges, Changes)]
# What an async return type becomes on the sync side.
SYNC_TWIN = {"AsyncSandbox": "Sandbox", "Process": "SyncProcess", "Watch": "SyncWatch",
             "Changes": "SyncChanges"}
# Sync methods that return something else than their async twin, on purpose, and the async
# method they go through instead: `Sandbox.connect` hands back a blocking socket, since
# asyncio streams would belong to the sandbox's private loop.
ROUTED = {(Sandbox, "connect"): ("_connect_socket", "socket.socket")}
# `Changes` is a list, and its sync twin too: list methods are not compared.
ATTRIBUTE = re.compile(r"^\s*self\.([a-z]\w*)\s*(?::[^=\n]*)?=[^=]", re.M)


def _public(cls):
    own = {n for n in dir(cls) if not n.startswith("_")}
    return own - set(dir(list)) if issubclass(cls, list) else own


def _instance_fn(cls, name):
    """The function behind `name` on an instance (`connect` means attach on the class)."""
    static = inspect.getattr_static(cls, name)
    if isinstance(static, property):
        return static.fget
    if isinstance(static, (classmethod, staticmethod)):
        return static.__func__
    return getattr(static, "_method", None) or static


def _kind(cls, name):
    static = inspect.getattr_static(cls, name)
    if type(static).__name__ == "_ClassOrInstance":
        return "class-or-instance"
    return type(static).__name__ if isinstance(static, (property, classmethod, staticmethod)) \
        else "method"


def _type(annotation) -> str:
    """An annotation as text, spelled one way: `builtins.list` (and sync.py's `_list`
    alias, both needed in classes that have a `list` method) is `list`."""
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    text = text.strip("'\"")
    return re.sub(r"\b(?:builtins\.list|_list)\b", "list", text)


def sync_return(annotation) -> str:
    """The sync twin of an async method's return type."""
    text = _type(annotation)
    match = re.fullmatch(r"Async(?:Generator|Iterator)\[(.*?)(?:, None)?\]", text)
    if match:
        return f"Iterator[{match[1]}]"
    return SYNC_TWIN.get(text, text)


def _params(fn):
    return [(p.name, p.kind, p.default, _type(p.annotation))
            for p in inspect.signature(fn).parameters.values()]


def _members(cls):
    return sorted(_public(cls))


def attributes(cls) -> set[str]:
    """The public attributes `cls.__init__` sets on an instance (invisible on the class)."""
    if "__init__" not in vars(cls):
        return set()
    return set(ATTRIBUTE.findall(inspect.getsource(cls.__init__)))


@pytest.mark.parametrize("sync_cls, async_cls", PAIRS, ids=lambda c: c.__name__)
def test_the_same_public_names(sync_cls, async_cls):
    # The async object's attributes are properties on the sync one (or attributes too, as
    # `files`, which holds the sync twin).
    assert (sorted(set(_members(sync_cls)) | attributes(sync_cls))
            == sorted(set(_members(async_cls)) | attributes(async_cls)))
    for name in attributes(async_cls) - attributes(sync_cls):
        assert isinstance(inspect.getattr_static(sync_cls, name), property), name


def test_attributes_are_found():
    # What the name comparison relies on, so that it cannot pass by finding nothing.
    assert {"pid", "exit_code", "exit_signal", "argv"} <= attributes(Process)
    assert {"config", "state", "files"} <= attributes(AsyncSandbox)
    assert "path" in attributes(Watch)


@pytest.mark.parametrize("sync_cls, async_cls", PAIRS, ids=lambda c: c.__name__)
def test_every_method_has_its_async_twins_signature(sync_cls, async_cls):
    checked = 0
    for name in _members(async_cls):
        if not hasattr(sync_cls, name):
            continue  # reported by test_the_same_public_names
        ours, theirs = _instance_fn(sync_cls, name), _instance_fn(async_cls, name)
        assert _kind(sync_cls, name) == _kind(async_cls, name), name
        assert _params(ours) == _params(theirs), f"{sync_cls.__name__}.{name}"
        want = ROUTED.get((sync_cls, name), (None, None))[1] or sync_return(
            inspect.signature(theirs).return_annotation)
        assert _type(inspect.signature(ours).return_annotation) == want, \
            f"{sync_cls.__name__}.{name} returns"
        checked += 1
    assert checked


def test_sync_process_iterates_what_process_does():
    ours = inspect.signature(SyncProcess.__iter__).return_annotation
    theirs = inspect.signature(Process.__aiter__).return_annotation
    assert _type(ours) == sync_return(theirs)


def test_the_comparison_sees_a_drift(monkeypatch):
    # The checks above must be able to fail: an async method that gains a parameter, or
    # changes a default, no longer matches its written-out sync twin.
    async def exec(self, command, *, cwd=None, env=None, user=None, timeout=None, stdin=None,
                   shell="sh", max_output=1, extra=None):
        raise AssertionError

    monkeypatch.setattr(AsyncSandbox, "exec", exec)
    assert _params(Sandbox.exec) != _params(AsyncSandbox.exec)


class Token:
    """What a recorded async call returns: enough of a Process, Watch or Changes for the
    sync wrappers to hold it."""

    guest = host = "/"

    def __init__(self, name):
        self.name = name

    def __iter__(self):
        return iter(())

    def __eq__(self, other):
        return isinstance(other, Token) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


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
            return Token(name)
        return method

    def _generator(self, name):
        async def method(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            yield Token(name)
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


def _called_through(async_cls, name, args, kwargs):
    """The call the sync method must make: positional parameters may be passed by
    position or by name, so both sides are bound to the async signature first."""
    signature = inspect.signature(getattr(async_cls, name))
    bound = signature.bind(None, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


@pytest.mark.parametrize("sync_cls, async_cls", PAIRS, ids=lambda c: c.__name__)
def test_every_async_method_is_called_through_with_its_arguments(sync_cls, async_cls):
    methods = {name: fn for name, fn in inspect.getmembers(async_cls)
               if not name.startswith("_")
               and not isinstance(inspect.getattr_static(async_cls, name),
                                  (classmethod, staticmethod))
               and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn))
               and (sync_cls, name) not in ROUTED}
    assert methods
    for name, fn in methods.items():
        recorder = Recorder(async_cls)
        facade = sync_cls.__new__(sync_cls)
        facade._async, facade._runner = recorder, _LoopThread()
        try:
            args, kwargs = _sample_call(fn)
            result = getattr(facade, name)(*args, **kwargs)
            if inspect.isasyncgenfunction(fn):
                assert list(result) == [Token(name)]
            elif _type(inspect.signature(fn).return_annotation) == "None":
                assert result is None
            else:  # the async result itself, or a sync twin holding it
                assert getattr(result, "_async", result) == Token(name), name
            [(called, got_args, got_kwargs)] = recorder.calls
            assert called == name
            assert (_called_through(async_cls, name, got_args, got_kwargs)
                    == _called_through(async_cls, name, args, kwargs)), name
        finally:
            if not facade._runner.loop.is_closed():
                facade._runner.close()


def test_routed_methods_call_their_async_route_with_their_arguments():
    class Socket:
        def setblocking(self, flag):
            self.blocking = flag

    for (sync_cls, name), (route, _) in ROUTED.items():
        async_cls = dict(PAIRS)[sync_cls]
        calls, sock = [], Socket()

        async def routed(*args, **kwargs):
            calls.append((args, kwargs))
            return sock

        recorder = Recorder(async_cls)
        setattr(recorder, route, routed)
        facade = sync_cls.__new__(sync_cls)
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
    options = {"cpus": 1, "config": "x.yaml", "on_console": print, "from_": "ready",
               "detach": True, "name": "box", "idle_timeout": 7}
    sandbox = Sandbox.start(lifetime=5, **options)
    assert seen == {"lifetime": 5.0, **options}
    sandbox._runner.close()


def test_sandbox_start_translates_the_old_timeout_name(monkeypatch):
    seen = {}

    async def start(**kwargs):
        seen.update(kwargs)
        return AsyncSandbox()

    monkeypatch.setattr(AsyncSandbox, "start", start)
    with pytest.warns(DeprecationWarning):
        sandbox = Sandbox.start(timeout=5)
    assert seen["lifetime"] == 5.0 and "timeout" not in seen
    sandbox._runner.close()


@pytest.mark.parametrize("sync_cls, async_cls", PAIRS, ids=lambda c: c.__name__)
def test_help_on_a_sync_method_says_what_its_async_twin_says(sync_cls, async_cls):
    for name in _members(async_cls):
        if inspect.getdoc(_instance_fn(async_cls, name)):
            assert inspect.getdoc(_instance_fn(sync_cls, name)), f"{sync_cls.__name__}.{name}"
