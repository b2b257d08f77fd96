"""shuru as a sandbox for the OpenAI Agents SDK (`pip install 'shuru[openai-agents]'`).

    from agents import Runner
    from agents.run import RunConfig
    from agents.sandbox import SandboxAgent, SandboxRunConfig
    from shuru.integrations.openai_agents import ShuruSandboxClient, ShuruSandboxClientOptions

    run_config = RunConfig(sandbox=SandboxRunConfig(
        client=ShuruSandboxClient(), options=ShuruSandboxClientOptions(memory=2048)))
    result = await Runner.run(SandboxAgent(name="dev", instructions="..."), "...",
                              run_config=run_config)

This module owns the mapping of the SDK's sandbox interface (`BaseSandboxClient`,
`BaseSandboxSession`, their options and session-state types) onto shuru's public SDK: one
`AsyncSandbox` per session. It follows what the SDK's own Docker client does where the
interface leaves a choice: the workspace is `manifest.root` (`/workspace` by default) inside
the VM and commands run there, the manifest's environment is the VM's environment, file
paths are confined to the workspace in the guest (the SDK's own path-resolving helper), and
`persist_workspace`/`hydrate_workspace` are tar streams with workspace-relative members.

A shuru VM cannot outlive the process that started it, and a stopped one cannot be started
again, so `shutdown()` stops the VM (nothing is ever left running) and `resume()` reattaches
to a session's VM only while it still runs in this process; otherwise it starts a new VM
from the same options, and the SDK restores the workspace from the session's snapshot.

The SDK is imported here and nowhere else in shuru: `import shuru` never needs it.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import tarfile
import tempfile
import uuid
from collections import deque
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:
    from agents.sandbox.errors import (ExecTimeoutError, ExecTransportError,
                                       ExposedPortUnavailableError, WorkspaceArchiveReadError,
                                       WorkspaceArchiveWriteError, WorkspaceReadNotFoundError,
                                       WorkspaceStartError)
    from agents.sandbox.manifest import Manifest
    from agents.sandbox.session import SandboxSession, SandboxSessionState
    from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
    from agents.sandbox.session.dependencies import Dependencies
    from agents.sandbox.session.manager import Instrumentation
    from agents.sandbox.session.pty_output import collect_pty_output
    from agents.sandbox.session.pty_types import (PTY_PROCESSES_MAX, PtyExecUpdate,
                                                  allocate_pty_process_id,
                                                  clamp_pty_yield_time_ms,
                                                  process_id_to_prune_from_meta,
                                                  resolve_pty_write_yield_time_ms)
    from agents.sandbox.session.runtime_helpers import (RESOLVE_WORKSPACE_PATH_HELPER,
                                                        RuntimeHelperScript)
    from agents.sandbox.session.sandbox_client import (BaseSandboxClient,
                                                       BaseSandboxClientOptions)
    from agents.sandbox.session.workspace_payloads import coerce_write_payload
    from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
    from agents.sandbox.types import ExecResult, ExposedPortEndpoint, User
    from agents.sandbox.util.tar_utils import (UnsafeTarMemberError, strip_tar_member_prefix,
                                               validate_tarfile)
    from agents.sandbox.workspace_paths import posix_path_for_error, sandbox_path_str
    from pydantic import Field
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("shuru.integrations.openai_agents needs the OpenAI Agents SDK: "
                      "pip install 'shuru[openai-agents]'") from e

# shuru's public API only, as any other user of it would import it.
from shuru import AsyncSandbox, GuestFileNotFoundError, ShuruError, State
from shuru import ExecTimeoutError as ShuruExecTimeoutError

BACKEND_ID = "shuru"

# Archives pass through a file in the guest's /tmp: shuru streams files in bounded chunks,
# whereas exec output is capped (and held in memory).
_GUEST_STAGING_DIR = "/tmp/shuru-agents"
_CHUNK = 1 << 20
# Output of a `pty_exec_start` process held until the model polls it; the SDK truncates what
# it shows the model to a token budget far below this anyway.
_PTY_BUFFER_MAX = 4 << 20


class ShuruSandboxClientOptions(BaseSandboxClientOptions):
    """How to start each session's VM: the `AsyncSandbox.start` options that make sense for
    an agent's sandbox. `checkpoint` names a shuru checkpoint to start from (tools installed
    once, every session forks it); `lifetime` stops the VM that many seconds after it
    started, whatever the agent does; `exposed_ports` are guest ports the session may expose
    on the host's loopback (`session.resolve_exposed_port(port)`); the network is off
    unless `allow_net`, and then limited by `network` (`{"allow": [...]}`) with `secrets`
    injected on the host as shuru documents (`{NAME: {"from": HOST_VAR, "hosts": [...]}}`).
    """

    type: Literal["shuru"] = "shuru"
    checkpoint: str | None = None
    cpus: int | None = None
    memory: int | None = None
    disk_size: int | None = None
    cold: bool = False
    lifetime: float | None = None
    allow_net: bool = False
    network: dict[str, Any] | None = None
    secrets: dict[str, dict[str, Any]] | None = None
    exposed_ports: tuple[int, ...] = ()

    def start_options(self) -> dict[str, Any]:
        """The keyword arguments for `AsyncSandbox.start`."""
        options: dict[str, Any] = {"cold": self.cold}
        for name in ("cpus", "memory", "disk_size", "lifetime", "network", "secrets"):
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        if self.checkpoint is not None:
            options["from_"] = self.checkpoint
        if self.allow_net:
            options["allow_net"] = True
        return options


class ShuruSandboxSessionState(SandboxSessionState):
    """A session's serialisable state: the SDK's fields plus the options its VM was started
    with, so that `resume()` in another process can start an equivalent VM. It holds secret
    names and host variable names, never values."""

    type: Literal["shuru"] = "shuru"
    options: ShuruSandboxClientOptions = Field(default_factory=ShuruSandboxClientOptions)


@dataclass
class _PtyEntry:
    """A process started with `pty_exec_start`, and the output nobody has collected yet."""

    process: Any  # shuru.Process
    tty: bool
    last_used: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    output_chunks: deque = field(default_factory=deque)
    output_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    output_notify: asyncio.Event = field(default_factory=asyncio.Event)
    output_closed: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int | None = None
    error: ShuruError | None = None  # what ended the process's stream, if not an exit
    wait_task: asyncio.Task | None = None
    buffered: int = 0  # bytes appended since the buffer was last measured (an upper bound)
    dropped: int = 0  # bytes dropped since the last update, to bound host memory

    async def add(self, data: bytes) -> None:
        async with self.output_lock:
            self.output_chunks.append(data)
            self.buffered += len(data)
            if self.buffered > _PTY_BUFFER_MAX:
                # A process nobody polls must not fill the host's memory: keep the newest
                # output (what a model asks for next), and say how much went.
                self.buffered = sum(map(len, self.output_chunks))
                while self.buffered > _PTY_BUFFER_MAX and len(self.output_chunks) > 1:
                    gone = len(self.output_chunks.popleft())
                    self.buffered -= gone
                    self.dropped += gone
        self.output_notify.set()


class ShuruSandboxSession(BaseSandboxSession):
    """One shuru VM as the SDK's sandbox session."""

    state: ShuruSandboxSessionState

    def __init__(self, *, state: ShuruSandboxSessionState, on_shutdown=None) -> None:
        self.state = state
        self._sandbox: AsyncSandbox | None = None
        self._on_shutdown = on_shutdown
        self._vm = uuid.uuid4()  # names the VM now behind the session (see the helper cache)
        self._booted_by_start = False
        self._pty_lock = asyncio.Lock()
        self._pty_processes: dict[int, _PtyEntry] = {}

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def sandbox(self) -> AsyncSandbox:
        """The shuru sandbox behind this session (for what the SDK's interface lacks)."""
        if self._sandbox is None:
            raise ExecTransportError(command=("<start>",),
                                     context={"reason": "the shuru VM is not started"})
        return self._sandbox

    async def _ensure_backend_started(self) -> None:
        self._booted_by_start = False
        if self._sandbox is not None and self._sandbox.state == State.RUNNING:
            return
        root = Path(self.state.manifest.root)
        try:
            env = await self.state.manifest.environment.resolve()
            self._sandbox = await AsyncSandbox.start(env=env,
                                                     **self.state.options.start_options())
        except ShuruError as e:
            raise WorkspaceStartError(path=root, cause=e,
                                      context={"reason": str(e)}) from e
        self._vm = uuid.uuid4()
        self._booted_by_start = True

    async def _after_start_failed(self) -> None:
        # A VM this start booted serves nobody once the start failed (the caller has no
        # session to close): stop it now rather than when this process exits.
        if self._booted_by_start:
            await self._shutdown_backend()

    async def _prepare_backend_workspace(self) -> None:
        # The workspace root exists before the manifest is applied, so every command can run
        # in it (the Docker client waits for the manifest instead; an empty directory made
        # early is harmless and keeps `exec`'s working directory fixed).
        root = self.state.manifest.root
        try:
            await self.sandbox.files.mkdir(root, parents=True)
        except ShuruError as e:
            raise WorkspaceStartError(path=Path(root), cause=e,
                                      context={"reason": str(e)}) from e

    def _runtime_helpers(self) -> tuple[RuntimeHelperScript, ...]:
        return (RESOLVE_WORKSPACE_PATH_HELPER,)

    def _current_runtime_helper_cache_key(self) -> object | None:
        return self._vm  # a new VM has none of the old one's helpers

    async def _validate_path_access(self, path: Path | str, *, for_write: bool = False) -> Path:
        # Resolve symlinks in the guest, as the Docker client does: a link inside the
        # workspace must not let the file tools reach outside it.
        return await self._validate_remote_path_access(path, for_write=for_write)

    async def running(self) -> bool:
        return self._sandbox is not None and self._sandbox.state == State.RUNNING

    async def _shutdown_backend(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        try:
            if sandbox is not None:
                await sandbox.stop()
        finally:
            if self._on_shutdown is not None:
                self._on_shutdown(self)

    def supports_pty(self) -> bool:
        return True

    # ---- commands ------------------------------------------------------------------------

    async def exec(self, *command: str | Path, timeout: float | None = None,
                   shell: bool | list[str] = True, user: str | User | None = None) -> ExecResult:
        # The guest agent switches users itself; the base class would prefix `sudo -u`,
        # which the guest image does not have.
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        return await self._run(argv, timeout=timeout, user=_user_name(user))

    async def _exec_internal(self, *command: str | Path,
                             timeout: float | None = None) -> ExecResult:
        return await self._run([str(c) for c in command], timeout=timeout, user=None)

    async def _run(self, argv: list[str], *, timeout: float | None,
                   user: str | None) -> ExecResult:
        try:
            result = await self.sandbox.exec(argv, cwd=self.state.manifest.root, user=user,
                                             timeout=timeout)
        except ShuruExecTimeoutError as e:
            raise ExecTimeoutError(command=argv, timeout_s=timeout, cause=e) from e
        except ShuruError as e:
            raise ExecTransportError(command=argv, cause=e,
                                     context={"reason": str(e)}) from e
        return ExecResult(stdout=result.stdout_bytes, stderr=result.stderr_bytes,
                          exit_code=result.exit_code)

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        sandbox = self.sandbox
        for forward in sandbox.ports:
            if forward.guest_port == port:
                return ExposedPortEndpoint(host=forward.host, port=forward.host_port)
        try:
            address = await sandbox.expose(port)
        except ShuruError as e:
            raise ExposedPortUnavailableError(
                port=port, exposed_ports=self.state.exposed_ports, reason="backend_unavailable",
                context={"backend": BACKEND_ID, "detail": str(e)}, cause=e) from e
        return ExposedPortEndpoint(host=address[0], port=address[1])

    # ---- files ---------------------------------------------------------------------------

    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        workspace_path = await self._validate_path_access(path)
        guest_path = sandbox_path_str(workspace_path)
        if user is not None:
            # Read as that user, so its permissions apply (shuru's file calls run as root).
            argv = ["cat", "--", guest_path]
            result = await self.exec(*argv, shell=False, user=user)
            if not result.ok():
                await self._raise_read_error_from_exec(path=path, workspace_path=workspace_path,
                                                       command=argv, result=result, user=user)
            return io.BytesIO(result.stdout)
        spool = tempfile.SpooledTemporaryFile(max_size=16 * _CHUNK)
        try:
            async for chunk in self.sandbox.files.iter_read(guest_path):
                spool.write(chunk)
        except GuestFileNotFoundError as e:
            spool.close()
            raise WorkspaceReadNotFoundError(path=path, cause=e) from e
        except ShuruError as e:
            spool.close()
            raise WorkspaceArchiveReadError(path=path, cause=e,
                                            context={"reason": str(e)}) from e
        spool.seek(0)
        return spool

    async def _read_bounded(self, path: Path, *, max_bytes: int) -> bytes:
        # Stop the guest's stream after max_bytes, so a huge file costs no more than that.
        guest_path = sandbox_path_str(await self._validate_path_access(path))
        out = bytearray()
        try:
            async with aclosing(self.sandbox.files.iter_read(guest_path)) as chunks:
                async for chunk in chunks:
                    out += chunk[:max_bytes - len(out)]
                    if len(out) >= max_bytes:
                        break
        except GuestFileNotFoundError as e:
            raise WorkspaceReadNotFoundError(path=path, cause=e) from e
        return bytes(out)

    async def write(self, path: Path, data: io.IOBase, *,
                    user: str | User | None = None) -> None:
        payload = coerce_write_payload(path=path, data=data)
        workspace_path = await self._validate_path_access(path, for_write=True)
        guest_path = sandbox_path_str(workspace_path)
        if user is not None:
            # Write as that user, so its permissions apply; streamed through stdin.
            await self._write_as(guest_path, payload.stream, _user_name(user), workspace_path)
            return
        try:
            await self.sandbox.files.write(guest_path, _ByteChunks(payload.stream))
        except ShuruError as e:
            raise WorkspaceArchiveWriteError(path=workspace_path, cause=e,
                                             context={"reason": str(e)}) from e

    async def _write_as(self, guest_path: str, stream: io.IOBase, user: str | None,
                        error_path: Path) -> None:
        argv = ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", guest_path]
        try:
            process = await self.sandbox.spawn(argv, cwd=self.state.manifest.root, user=user)
            stderr = bytearray()  # the first 4 KiB, for the error
            process.on("stdout", lambda data: None)
            process.on("stderr", lambda data: stderr.extend(data[:4096 - len(stderr)]))
            try:
                async for chunk in _ByteChunks(stream):
                    await process.write(chunk)
                await process.close_stdin()
                code = await process.wait()
            except BaseException:
                with suppress(ShuruError):
                    await process.kill()
                raise
        except ShuruError as e:
            raise WorkspaceArchiveWriteError(path=error_path, cause=e,
                                             context={"reason": str(e)}) from e
        if code != 0:
            raise WorkspaceArchiveWriteError(
                path=error_path,
                context={"exit_code": code, "stderr": stderr.decode("utf-8", "replace")})

    # ---- workspace archives --------------------------------------------------------------

    async def persist_workspace(self) -> io.IOBase:
        root = self._workspace_root_path()
        error_root = posix_path_for_error(root)
        if str(root) == "/":
            raise WorkspaceArchiveReadError(path=error_root,
                                            context={"reason": "workspace root is /"})
        parent, name = posixpath.split(root.as_posix().rstrip("/"))
        staged = f"{_GUEST_STAGING_DIR}/{uuid.uuid4().hex}.tar"
        # Skip paths are names, not patterns: `--no-wildcards` keeps a `*` in one literal.
        excludes = ["--no-wildcards", *(f"--exclude=./{name}/{rel.as_posix()}"
                                        for rel in sorted(self._persist_workspace_skip_relpaths()))]
        # Members are `./NAME/...`; the SDK's helper rewrites them to workspace-relative ones
        # and rebases absolute symlinks that point inside the workspace.
        script = ('mkdir -p "$1" && out=$2 && dir=$3 && shift 3 && '
                  'tar -C "$dir" -cf "$out" "$@"')
        argv = ["sh", "-c", script, "sh", _GUEST_STAGING_DIR, staged, parent or "/",
                *excludes, f"./{name}"]
        archive = tempfile.TemporaryFile()
        try:
            result = await self._run(argv, timeout=None, user=None)
            if not result.ok():
                raise WorkspaceArchiveReadError(
                    path=error_root,
                    context={"exit_code": result.exit_code,
                             "stderr": result.stderr.decode("utf-8", "replace")})
            async for chunk in self.sandbox.files.iter_read(staged):
                archive.write(chunk)
            archive.seek(0)
            return strip_tar_member_prefix(archive, prefix=f"./{name}",
                                           relativize_symlinks_under=root)
        except ShuruError as e:
            archive.close()
            raise WorkspaceArchiveReadError(path=error_root, cause=e,
                                            context={"reason": str(e)}) from e
        except (tarfile.TarError, UnsafeTarMemberError) as e:
            archive.close()
            raise WorkspaceArchiveReadError(path=error_root, cause=e,
                                            context={"reason": str(e)}) from e
        except BaseException:
            archive.close()
            raise
        finally:
            with suppress(ShuruError, ExecTransportError):
                await self.sandbox.files.remove(staged, recursive=False)

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        root = self._workspace_root_path()
        error_root = posix_path_for_error(root)
        with tempfile.TemporaryFile() as archive:
            await asyncio.to_thread(_copy_bytes, data, archive, error_root)
            try:
                archive.seek(0)
                with tarfile.open(fileobj=archive, mode="r:*") as tar:
                    # Refuse what could land outside the workspace before the guest sees it.
                    validate_tarfile(tar, allow_external_symlink_targets=False)
            except UnsafeTarMemberError as e:
                raise WorkspaceArchiveWriteError(
                    path=error_root, context={"reason": e.reason, "member": e.member},
                    cause=e) from e
            except (tarfile.TarError, OSError) as e:
                raise WorkspaceArchiveWriteError(path=error_root, cause=e) from e
            archive.seek(0)
            staged = f"{_GUEST_STAGING_DIR}/{uuid.uuid4().hex}.tar"
            try:
                await self.sandbox.files.write(staged, _ByteChunks(archive))
                result = await self._run(
                    ["sh", "-c", 'mkdir -p "$1" && tar -x -C "$1" -f "$2"', "sh",
                     root.as_posix(), staged], timeout=None, user=None)
            except ShuruError as e:
                raise WorkspaceArchiveWriteError(path=error_root, cause=e,
                                                 context={"reason": str(e)}) from e
            finally:
                with suppress(ShuruError, ExecTransportError):
                    await self.sandbox.files.remove(staged, recursive=False)
            if not result.ok():
                raise WorkspaceArchiveWriteError(
                    path=error_root,
                    context={"exit_code": result.exit_code,
                             "stderr": result.stderr.decode("utf-8", "replace")})

    # ---- interactive processes -----------------------------------------------------------

    async def pty_exec_start(self, *command: str | Path, timeout: float | None = None,
                             shell: bool | list[str] = True, user: str | User | None = None,
                             tty: bool = False, yield_time_s: float | None = None,
                             max_output_tokens: int | None = None) -> PtyExecUpdate:
        _ = timeout  # as the SDK's own clients: the process runs until it ends or is ended
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        try:
            process = await self.sandbox.spawn(argv, cwd=self.state.manifest.root,
                                               user=_user_name(user), tty=tty)
        except ShuruError as e:
            raise ExecTransportError(command=argv, cause=e, context={"reason": str(e)}) from e
        entry = _PtyEntry(process=process, tty=tty)

        async def watch() -> None:
            try:
                entry.exit_code = await process.wait()
            except ShuruError as e:
                entry.error = e  # the stream broke (the VM died)
            finally:
                entry.output_closed.set()
                entry.output_notify.set()

        # Registered before anything awaits, so no output can pass unseen.
        process.on("stdout", entry.add).on("stderr", entry.add)
        entry.wait_task = asyncio.create_task(watch())

        pruned = None
        async with self._pty_lock:
            process_id = allocate_pty_process_id(set(self._pty_processes))
            if len(self._pty_processes) >= PTY_PROCESSES_MAX:
                meta = [(pid, e.last_used, e.output_closed.is_set())
                        for pid, e in self._pty_processes.items()]
                victim = process_id_to_prune_from_meta(meta)
                if victim is not None:
                    pruned = self._pty_processes.pop(victim, None)
            self._pty_processes[process_id] = entry
        if pruned is not None:
            await _terminate(pruned)
        yield_ms = 10_000 if yield_time_s is None else int(yield_time_s * 1000)
        return await self._update(process_id, entry, clamp_pty_yield_time_ms(yield_ms),
                                  max_output_tokens)

    async def pty_write_stdin(self, *, session_id: int, chars: str,
                              yield_time_s: float | None = None,
                              max_output_tokens: int | None = None) -> PtyExecUpdate:
        async with self._pty_lock:
            entry = self._resolve_pty_session_entry(pty_processes=self._pty_processes,
                                                    session_id=session_id)
        if chars:
            if not entry.tty:
                raise RuntimeError("stdin is not available for this process")
            with suppress(ShuruError):  # a process that has exited takes no more input
                await entry.process.write(chars.encode("utf-8"))
        yield_ms = 250 if yield_time_s is None else int(yield_time_s * 1000)
        entry.last_used = asyncio.get_running_loop().time()
        return await self._update(
            session_id, entry,
            resolve_pty_write_yield_time_ms(yield_time_ms=yield_ms, input_empty=chars == ""),
            max_output_tokens)

    async def _update(self, process_id: int, entry: _PtyEntry, yield_ms: int,
                      max_output_tokens: int | None) -> PtyExecUpdate:
        output, token_count, closed = await collect_pty_output(
            output_chunks=entry.output_chunks, output_lock=entry.output_lock,
            output_notify=entry.output_notify, is_done=entry.output_closed.is_set,
            yield_time_ms=yield_ms, max_output_tokens=max_output_tokens)
        if entry.dropped:
            output = b"[... %d bytes of output dropped ...]\n" % entry.dropped + output
            entry.dropped = 0
        if not closed:
            return PtyExecUpdate(process_id=process_id, output=output, exit_code=None,
                                 original_token_count=token_count)
        async with self._pty_lock:
            self._pty_processes.pop(process_id, None)
        if entry.error is not None:
            raise ExecTransportError(command=entry.process.argv, cause=entry.error,
                                     context={"reason": str(entry.error)})
        return PtyExecUpdate(process_id=None, output=output, exit_code=entry.exit_code,
                             original_token_count=token_count)

    async def pty_terminate_all(self) -> None:
        async with self._pty_lock:
            entries = list(self._pty_processes.values())
            self._pty_processes.clear()
        for entry in entries:
            await _terminate(entry)


class ShuruSandboxClient(BaseSandboxClient[ShuruSandboxClientOptions | None]):
    """Creates sessions that each run in their own shuru VM (backend id `shuru`). Options
    may be omitted: a session then gets shuru's defaults (2 CPUs, 2 GiB, no network)."""

    backend_id = BACKEND_ID
    supports_default_options = True

    def __init__(self, *, instrumentation: Instrumentation | None = None,
                 dependencies: Dependencies | None = None) -> None:
        super().__init__()
        self._instrumentation = instrumentation if instrumentation is not None \
            else Instrumentation()
        self._dependencies = dependencies
        # The sessions whose VMs run now, so that resume() in this process reattaches.
        self._live: dict[uuid.UUID, ShuruSandboxSession] = {}

    def _session(self, state: ShuruSandboxSessionState) -> ShuruSandboxSession:
        inner = ShuruSandboxSession(state=state, on_shutdown=self._forget)
        self._live[state.session_id] = inner
        return inner

    def _forget(self, inner: ShuruSandboxSession) -> None:
        if self._live.get(inner.state.session_id) is inner:
            del self._live[inner.state.session_id]

    async def create(self, *, snapshot: SnapshotSpec | SnapshotBase | None = None,
                     manifest: Manifest | None = None,
                     options: ShuruSandboxClientOptions | None = None) -> SandboxSession:
        """A new session; its VM boots (or is restored) when the session starts."""
        manifest = self._validate_manifest_for_create(manifest or Manifest())
        options = options or ShuruSandboxClientOptions()
        session_id = uuid.uuid4()
        state = ShuruSandboxSessionState(
            session_id=session_id, manifest=manifest, options=options,
            snapshot=resolve_snapshot(snapshot, str(session_id)),
            exposed_ports=tuple(options.exposed_ports))
        return self._wrap_session(self._session(state), instrumentation=self._instrumentation)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Stop the session's VM (its disk goes with it)."""
        inner = session._inner
        if not isinstance(inner, ShuruSandboxSession):
            raise TypeError("ShuruSandboxClient.delete expects a session it created")
        await inner.shutdown()
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """The session of `state`: its own VM while that still runs in this process, else a
        new VM started from the same options, whose workspace the SDK restores from the
        session's snapshot when it starts."""
        if not isinstance(state, ShuruSandboxSessionState):
            raise TypeError("ShuruSandboxClient.resume expects a ShuruSandboxSessionState")
        state.assert_path_grants_rebound()
        live = self._live.get(state.session_id)
        if live is not None and await live.running():
            live.state = state
            live._set_start_state_preserved(True)
            return self._wrap_session(live, instrumentation=self._instrumentation)
        state.workspace_root_ready = False
        inner = self._session(state)
        inner._set_start_state_preserved(False)
        return self._wrap_session(inner, instrumentation=self._instrumentation)

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, ShuruSandboxSessionState)


# ---- helpers ---------------------------------------------------------------------------------

def _user_name(user: str | User | None) -> str | None:
    return user.name if isinstance(user, User) else user


async def _terminate(entry: _PtyEntry) -> None:
    with suppress(ShuruError):
        await entry.process.kill()
    if entry.wait_task is not None:
        entry.wait_task.cancel()


def _copy_bytes(source: io.IOBase, dest, error_root: Path) -> None:
    while True:
        chunk = source.read(_CHUNK)
        if chunk in (b"", "", None):
            return
        if isinstance(chunk, str):
            chunk = chunk.encode("utf-8")
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise WorkspaceArchiveWriteError(path=error_root,
                                             context={"reason": "non_bytes_tar_payload"})
        dest.write(chunk)


class _ByteChunks:
    """A file-like object's bytes as an async iterator for `files.write`, read off the
    event loop so a slow stream never stalls the VM's channel."""

    def __init__(self, stream: io.IOBase):
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        chunk = await asyncio.to_thread(self._stream.read, _CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


__all__ = ["ShuruSandboxClient", "ShuruSandboxClientOptions", "ShuruSandboxSession",
           "ShuruSandboxSessionState", "BACKEND_ID"]
