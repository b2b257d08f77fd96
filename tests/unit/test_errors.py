"""The error tree: one module, all exported, builtin where Python has a builtin; and the
start() options that used to be ignored or confusable. No VM."""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import warnings

import pytest

import shuru
from shuru import errors
from shuru.errors import (ExecTimeoutError, GuestFileError, GuestFileExistsError,
                          GuestFileNotFoundError, GuestIsADirectoryError,
                          GuestNotADirectoryError, GuestPermissionError, HTTPError,
                          ProtocolError, ShuruError, guest_file_error)


def _all_modules():
    yield shuru
    for info in pkgutil.walk_packages(shuru.__path__, "shuru."):
        if info.name.startswith("shuru.integrations"):
            continue  # optional extras import their libraries
        yield importlib.import_module(info.name)


def test_every_error_class_is_defined_in_errors_and_exported():
    defined = {cls for module in _all_modules()
               for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, ShuruError)}
    assert {cls.__module__ for cls in defined} == {"shuru.errors"}, \
        sorted(f"{c.__module__}.{c.__name__}" for c in defined if c.__module__ != "shuru.errors")
    in_errors = {cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(cls, (ShuruError, Warning)) and cls.__module__ == "shuru.errors"}
    for cls in in_errors:
        assert getattr(shuru, cls.__name__) is cls and cls.__name__ in shuru.__all__, cls


def test_old_import_locations_still_work():
    from shuru import checkpoints
    from shuru.backends.qemu import qmp
    from shuru.launch import states as snapshots
    from shuru.net import http, upstream

    assert checkpoints.CheckpointError is shuru.CheckpointError
    assert snapshots.StaleStateError is shuru.StaleStateError
    assert qmp.QMPError is shuru.QMPError
    assert upstream.UpstreamError is shuru.UpstreamError
    assert http.HTTPError is shuru.HTTPError


def test_a_guest_programs_bad_http_is_not_a_protocol_error():
    assert not issubclass(HTTPError, ProtocolError)
    assert HTTPError("bad", status=431).status == 431


@pytest.mark.parametrize("code, builtin, ours", [
    ("ENOENT", FileNotFoundError, GuestFileNotFoundError),
    ("EACCES", PermissionError, GuestPermissionError),
    ("EPERM", PermissionError, GuestPermissionError),
    ("EROFS", PermissionError, GuestPermissionError),
    ("EISDIR", IsADirectoryError, GuestIsADirectoryError),
    ("ENOTDIR", NotADirectoryError, GuestNotADirectoryError),
    ("EEXIST", FileExistsError, GuestFileExistsError),
])
def test_guest_errno_names_become_the_builtin_errors(code, builtin, ours):
    e = guest_file_error(code, "/srv/a: it failed", "/srv/a")
    assert type(e) is ours and isinstance(e, builtin) and isinstance(e, ShuruError)
    assert (e.errno, e.filename, e.path, e.code) == (getattr(errno, code), "/srv/a", "/srv/a", code)
    assert str(e) == e.strerror == "guest: /srv/a: it failed"
    with pytest.raises(builtin):
        raise e


def test_other_guest_errors_are_oserrors_that_name_the_path():
    e = guest_file_error("ENOSPC", "No space left on device", "/big")
    assert type(e) is GuestFileError and isinstance(e, OSError)
    assert e.errno == errno.ENOSPC and "/big" in str(e)
    odd = guest_file_error("EWHATEVER", 7, "/x")  # a guest's nonsense still makes an error
    assert odd.errno is None and str(odd) == "guest: /x: EWHATEVER"


def test_exec_timeout_is_a_timeout_error_with_its_evidence():
    e = ExecTimeoutError("slow", stdout=b"o", stderr=b"e", timeout=2.0)
    assert isinstance(e, TimeoutError) and isinstance(e, ShuruError)
    assert (e.stdout, e.stderr, e.timeout, e.errno, str(e)) == (b"o", b"e", 2.0,
                                                                 errno.ETIMEDOUT, "slow")


async def test_start_refuses_command():
    with pytest.raises(shuru.ConfigError, match="command: start"):
        await shuru.AsyncSandbox.start(command="make test")


async def test_start_timeout_is_lifetime_with_a_deprecation_warning():
    # cpus is invalid, so nothing boots: the warning comes before the options are checked.
    with pytest.warns(DeprecationWarning, match="lifetime") as caught:
        with pytest.raises(shuru.ConfigError, match="cpus"):
            await shuru.AsyncSandbox.start(timeout=30, cpus="many")
    assert caught[0].filename == __file__  # it points at the caller's line
    with pytest.raises(shuru.ConfigError, match="both"):
        await shuru.AsyncSandbox.start(timeout=30, lifetime=30)
    for bad in (0, -1, "30", True):
        with pytest.raises(shuru.ConfigError, match="lifetime"):
            await shuru.AsyncSandbox.start(lifetime=bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(shuru.ConfigError, match="cpus"):
            await shuru.AsyncSandbox.start(lifetime=30, cpus="many")


def test_sync_start_warns_at_the_callers_line():
    with pytest.warns(DeprecationWarning, match="lifetime") as caught:
        with pytest.raises(shuru.ConfigError, match="cpus"):
            shuru.Sandbox.start(timeout=30, cpus="many")
    assert caught[0].filename == __file__
    with pytest.raises(shuru.ConfigError, match="command"):
        shuru.Sandbox.start(command=["true"])


async def test_exec_options_take_path_objects_and_refuse_other_types():
    from pathlib import PurePosixPath

    from shuru import AsyncSandbox, ConfigError

    sandbox = AsyncSandbox()
    assert sandbox._exec_options(PurePosixPath("/srv"), None, None)["cwd"] == "/srv"
    with pytest.raises(ConfigError) as e:
        sandbox._exec_options(3, None, 7)
    assert e.value.problems == ["cwd must be a guest path (str), got int",
                                "user must be a user name (str), got int"]
