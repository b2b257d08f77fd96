"""Errors a Python user expects, and users made in the guest, against one real VM: guest file
errors are the builtin OSError subclasses (and name the guest path), an exec timeout is a
TimeoutError, `exec(user=...)` runs as users made with useradd or adduser, and
`start(lifetime=)` stops the sandbox."""

import asyncio

import pytest
import pytest_asyncio

from shuru import (AsyncSandbox, ExecError, ExecTimeoutError, GuestFileError,
                   GuestFileExistsError, GuestFileNotFoundError, GuestIsADirectoryError,
                   GuestNotADirectoryError, GuestPermissionError, SandboxStateError, State)

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    sandbox = await AsyncSandbox.start(cpus=1, memory=1024)
    yield sandbox
    await sandbox.stop()


async def test_guest_file_errors_are_the_builtin_errors(sb):
    await sb.files.write("/tmp/errs/file", "x")
    await sb.files.write("/root/immutable", "x")
    assert (await sb.exec("chattr +i /root/immutable")).ok  # even root may not write it
    cases = [
        (sb.files.read("/tmp/errs/missing"), FileNotFoundError, GuestFileNotFoundError,
         "/tmp/errs/missing"),
        (sb.files.read("/tmp/errs"), IsADirectoryError, GuestIsADirectoryError, "/tmp/errs"),
        (sb.files.write("/tmp/errs", "x"), IsADirectoryError, GuestIsADirectoryError,
         "/tmp/errs"),
        (sb.files.list("/tmp/errs/file"), NotADirectoryError, GuestNotADirectoryError,
         "/tmp/errs/file"),
        (sb.files.mkdir("/tmp/errs/file", parents=False), FileExistsError,
         GuestFileExistsError, "/tmp/errs/file"),
        (sb.files.write("/root/immutable", "y"), PermissionError, GuestPermissionError,
         "/root/immutable"),
    ]
    for call, builtin, ours, path in cases:
        with pytest.raises(builtin) as info:
            await call
        error = info.value
        assert isinstance(error, ours) and isinstance(error, GuestFileError)
        assert path in str(error) and error.path == path and error.filename == path
        assert error.errno is not None and error.strerror


async def test_exec_timeout_is_a_timeout_error(sb):
    with pytest.raises(TimeoutError) as info:
        await sb.exec("echo partial; sleep 60", timeout=2)
    assert isinstance(info.value, ExecTimeoutError)
    assert info.value.stdout == b"partial\n"


async def test_exec_as_users_made_in_the_guest(sb):
    # useradd without -m leaves the user without a home directory: exec starts in /.
    r = await sb.exec("useradd plain && adduser --disabled-password --comment '' debby")
    assert r.ok, r.stderr
    for user in ("plain", "debby"):
        r = await sb.exec("id -un; echo $HOME; pwd", user=user)
        assert r.ok, r.stderr
        name, home, cwd = r.stdout.split()
        assert (name, home) == (user, f"/home/{user}")
    assert cwd == "/home/debby"  # adduser made it a home
    r = await sb.exec("pwd", user="plain")
    assert r.stdout.strip() == "/"
    with pytest.raises(ExecError, match="no-such-user"):
        await sb.exec("true", user="no-such-user")


async def test_lifetime_stops_the_sandbox():
    sandbox = await AsyncSandbox.start(cpus=1, memory=1024, lifetime=2)
    try:
        assert (await sandbox.exec("true")).ok
        await asyncio.wait_for(sandbox._timeout_task, 120)  # the lifetime's own timer
        assert sandbox.state == State.STOPPED
        with pytest.raises(SandboxStateError, match="stopped"):
            await sandbox.exec("true")
    finally:
        await sandbox.stop()
