"""Everything a caller of the SDK sees is annotated: each public method and property of the
exported classes names the types of its parameters and what it returns, so a type checker
and an IDE see the API as it is (the package ships `py.typed`). mypy checks the bodies
(`scripts/test`); this checks the surface, including modules whose internals mypy is not
yet strict about."""

from __future__ import annotations

import inspect

import pytest

import shuru
from shuru.checkpoints import Checkpoint
from shuru.files import FileInfo, Files, Watch, WatchEvent
from shuru.mounts import Change, Changes, MountSpec
from shuru.ports import Address, Forward
from shuru.sync import SyncChanges, SyncFiles, SyncWatch

EXPORTED = sorted(
    {obj for name in shuru.__all__ if inspect.isclass(obj := getattr(shuru, name))
     and not issubclass(obj, BaseException)}
    | {Files, Watch, FileInfo, WatchEvent, Changes, Change, MountSpec, Address, Forward,
       Checkpoint, SyncFiles, SyncWatch, SyncChanges},
    key=lambda c: c.__name__)


def public_functions(cls):
    """(name, function) for each public method and property `cls` itself defines."""
    for klass in cls.__mro__:
        if not klass.__module__.startswith("shuru"):
            continue  # list, str, Enum, NamedTuple: not ours
        for name, member in vars(klass).items():
            if name.startswith("_") and name not in ("__iter__", "__aiter__", "__enter__",
                                                     "__aenter__"):
                continue
            if isinstance(member, property):
                yield f"{klass.__name__}.{name}", member.fget
            elif isinstance(member, (classmethod, staticmethod)):
                yield f"{klass.__name__}.{name}", member.__func__
            elif inspect.isfunction(getattr(member, "_method", member)):
                yield f"{klass.__name__}.{name}", getattr(member, "_method", member)


def missing_annotations(fn) -> list[str]:
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def test_the_exported_classes_are_found():
    names = {c.__name__ for c in EXPORTED}
    assert {"AsyncSandbox", "Sandbox", "Process", "SyncProcess", "ExecResult"} <= names
    assert any(name == "AsyncSandbox.exec" for name, _ in public_functions(shuru.AsyncSandbox))


@pytest.mark.parametrize("cls", EXPORTED, ids=lambda c: c.__name__)
def test_every_public_method_is_annotated(cls):
    gaps = {name: missing for name, fn in public_functions(cls)
            if (missing := missing_annotations(fn))}
    assert gaps == {}


def test_the_wheel_says_it_is_typed():
    # PEP 561: without the marker in the installed package, type checkers ignore the
    # annotations above.
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in tool["package-data"]["shuru"]
    assert (root / tool["package-dir"]["shuru"] / "py.typed").is_file()
