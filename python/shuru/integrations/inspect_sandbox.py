"""Inspect AI sandbox environment: `sandbox="shuru"` runs each sample in its own shuru VM.

Inspect finds this provider through the `inspect_ai` entry-point group (pyproject.toml), so
installing `shuru[inspect]` is all a task needs to say `sandbox="shuru"`, or
`sandbox=("shuru", "shuru.yaml")` for a config file (cpus, memory, `from` a checkpoint,
`allow_net`/`network`/`secrets`, env, ...: shuru's own config fields, checked by
`shuru.config`). With no file named, a `shuru.yaml`/`shuru.yml`/`shuru.json` next to the task
is used, as `shuru run` does in its working directory.

This module owns the translation between Inspect's `SandboxEnvironment` contract and shuru's
public SDK: one `AsyncSandbox` per sample (a start restores saved machine state unless the
config says `cold: true`), stopped at sample cleanup; relative paths and cwds resolved
against the per-sample working directory (`WORKDIR`, or the config's `workdir`); Inspect's
output limits passed to `exec(max_output=)` and applied to file reads; shuru's errors turned
into the exceptions Inspect documents (most already are: a timeout is a `TimeoutError`, guest
file errors are `FileNotFoundError`, `PermissionError`, `IsADirectoryError`...).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import uuid
from pathlib import Path
from typing import Literal, Union, overload

from inspect_ai.util import (ExecResult, OutputLimitExceededError, SandboxConnection,
                             SandboxEnvironment, SandboxEnvironmentConfigType,
                             SandboxEnvironmentLimits, SandboxUnavailableError, sandboxenv)

from shuru import (AsyncSandbox, ExecError, ExecOutputLimitError, SandboxDiedError,
                   SandboxStateError)
from shuru.config import CONFIG_NAMES, ConfigError, load_file

# The per-sample working directory when the config file names no `workdir`: exec's default
# cwd and the base of relative paths. Not /root: that is 0700, and Inspect runs commands as
# other users too (`user=`), who must still be able to start in it.
WORKDIR = "/workspace"


def attach_command(sandbox: AsyncSandbox, user: str | None = None) -> str | None:
    """The shell command a person runs to get a shell in `sandbox` (as `user`): samples run
    in named sandboxes bound to the eval's process, which `shuru shell` attaches to; None
    for a sandbox without a name."""
    if sandbox.name is None:
        return None
    command = ["shuru", "shell", sandbox.name]
    if user is not None:
        command += ["--user", str(user)]
    return shlex.join(command)


def _config_path(config: SandboxEnvironmentConfigType | None) -> Path | None:
    """The config file Inspect passed: a path (relative to the task's directory, which is
    the working directory while Inspect runs it), or None for shuru's defaults."""
    if config is None:
        return None
    if isinstance(config, str):
        return Path(config)
    raise ConfigError([f"the shuru sandbox takes a config file name (one of "
                       f"{', '.join(CONFIG_NAMES)}), not a {type(config).__name__}"])


@sandboxenv(name="shuru")
class ShuruSandboxEnvironment(SandboxEnvironment):
    """One sample's shuru sandbox."""

    def __init__(self, sandbox: AsyncSandbox, workdir: str) -> None:
        super().__init__()
        self.sandbox = sandbox
        self.workdir = workdir

    # ---- lifecycle ---------------------------------------------------------------------

    @classmethod
    def config_files(cls) -> list[str]:
        return list(CONFIG_NAMES)

    @classmethod
    def default_concurrency(cls) -> int | None:
        # Each sample is a VM with its own CPUs; more at once than host cores only queues.
        return os.cpu_count() or 1

    @classmethod
    async def task_init(cls, task_name: str,
                        config: SandboxEnvironmentConfigType | None) -> None:
        # A bad config file fails the task once, before any sample starts a VM.
        path = _config_path(config)
        if path is not None:
            load_file(path)

    @classmethod
    async def sample_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                          metadata: dict[str, str]) -> dict[str, SandboxEnvironment]:
        # Named, so a person can attach a shell (`connection()`), and bound to this process,
        # so a killed eval leaves no VM behind.
        sandbox = await AsyncSandbox.start(config=_config_path(config),
                                           name=f"inspect-{uuid.uuid4().hex[:12]}")
        try:
            workdir = sandbox.config.workdir or WORKDIR
            await sandbox.files.mkdir(workdir, parents=True)
        except BaseException:
            await sandbox.stop()
            raise
        return {"default": cls(sandbox, workdir)}

    @classmethod
    async def sample_cleanup(cls, task_name: str, config: SandboxEnvironmentConfigType | None,
                             environments: dict[str, SandboxEnvironment],
                             interrupted: bool) -> None:
        # A sample's VM dies with the eval's process anyway; stopping it here frees its
        # memory for the next sample at once.
        for env in environments.values():
            if isinstance(env, ShuruSandboxEnvironment):
                await env.sandbox.stop()

    # ---- processes ---------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return posixpath.join(self.workdir, path)

    async def exec(self, cmd: list[str], input: str | bytes | None = None,
                   cwd: str | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, timeout: int | None = None,
                   timeout_retry: bool = True, concurrency: bool = True) -> ExecResult[str]:
        # timeout_retry is for a container daemon that hangs; shuru's timeout is the guest
        # killing the command's process group, which a retry would only run again.
        with _unavailable():
            if user is not None and user.isdigit():  # Inspect allows a uid; shuru takes names
                name = await self._user_name(user)
                if name is None:
                    return ExecResult(False, 126, "", f"no user with uid {user} in the guest\n")
                user = name
            try:
                result = await self.sandbox.exec(
                    list(cmd), stdin=input, cwd=self._path(cwd or "."), env=env, user=user,
                    timeout=timeout, max_output=SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE)
            except ExecOutputLimitError as e:
                raise OutputLimitExceededError(
                    SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR,
                    truncated_output=(e.stdout + e.stderr).decode("utf-8", "replace")) from e
            except ExecError as e:
                # An unknown user or a missing cwd: the command did not run, which Inspect
                # expects as a failed result that says why (as `docker exec` reports it).
                return ExecResult(False, 126, "", f"{e}\n")
        if result.exit_code == 126 and result.stderr == f"shuru: {cmd[0]}: Permission denied\n":
            raise PermissionError(f"{cmd[0]}: permission denied (not executable)")
        return ExecResult(result.ok, result.exit_code, result.stdout, result.stderr)

    async def _user_name(self, uid: str) -> str | None:
        """The name of the guest user with this uid (the first, if several share it)."""
        result = await self.sandbox.exec(["getent", "passwd", uid], timeout=60)
        name = result.stdout.split(":", 1)[0] if result.ok else ""
        return name or None

    # ---- files -------------------------------------------------------------------------

    async def write_file(self, file: str, contents: str | bytes) -> None:
        with _unavailable():
            await self.sandbox.files.write(self._path(file), contents)

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> Union[str, bytes]:
        limit = SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
        data = bytearray()
        with _unavailable():
            async with contextlib.aclosing(self.sandbox.files.iter_read(self._path(file))) as chunks:
                async for chunk in chunks:
                    data += chunk
                    if len(data) > limit:  # leaving the loop ends the guest's read
                        raise OutputLimitExceededError(
                            SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, truncated_output=None)
        # Strict UTF-8 (UnicodeDecodeError, as Inspect documents); newlines kept as they are.
        return bytes(data).decode("utf-8") if text else bytes(data)

    # ---- people ------------------------------------------------------------------------

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        command = attach_command(self.sandbox, user)
        if command is None:
            raise NotImplementedError("this sandbox has no name, so no shell can attach to it")
        return SandboxConnection(type="shuru", command=command)


@contextlib.contextmanager
def _unavailable():
    """A sandbox that stopped or died: Inspect's SandboxUnavailableError (a RuntimeError)."""
    try:
        yield
    except (SandboxStateError, SandboxDiedError) as e:
        raise SandboxUnavailableError(str(e)) from e


__all__ = ["ShuruSandboxEnvironment", "WORKDIR", "attach_command"]
