"""`shuru mcp`: shuru sandboxes as tools of a Model Context Protocol server over stdio.

Owns the tool surface a model sees (names, JSON schemas, descriptions), the registry of the
sandboxes and processes one client session started, and the bounds on what goes back to the
model (command output, file contents, listings). Built on the public SDK (`AsyncSandbox`)
and the `mcp` package's `MCPServer`, which is imported only when a server is built
(`pip install 'shuru[mcp]'`).

One stdio connection is one client session: every sandbox belongs to it and is stopped when
the client disconnects (stdin closes) or the server gets SIGTERM, SIGINT or SIGHUP. If the
server is killed outright, QEMU dies with it (it runs with PDEATHSIG) and the next start
sweeps what the VMs left on disk. A `ShuruError` becomes a tool error carrying its message;
the server goes on serving.

Secrets: the model never sees or chooses a secret's value or its hosts. The person who runs
the server offers secrets with `--secret NAME=HOST_ENV_VAR@host1,host2` (as `shuru run`
does); a model can only name an offered secret when it starts a sandbox, so a
prompt-injected model cannot aim a key at a host of its choosing.
"""

import asyncio
import base64
import contextlib
import itertools
import os
import signal as _signal
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from .. import AsyncSandbox, ConfigError, ExecResult, Process, ShuruError  # the public SDK

OUTPUT_LIMIT = 32 * 1024  # bytes of each of stdout and stderr a tool result carries
EXEC_CAPTURE_LIMIT = 8 * 1024 * 1024  # what exec keeps on the host before killing the command
PROCESS_BUFFER_LIMIT = 1024 * 1024  # unread output per process; past it the process is paused
FILE_READ_LIMIT = 1024 * 1024
LIST_LIMIT = 1000
MAX_WAIT = 60.0
STOP_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP)
SIGNALS = {"TERM": _signal.SIGTERM, "KILL": _signal.SIGKILL, "INT": _signal.SIGINT,
           "HUP": _signal.SIGHUP, "QUIT": _signal.SIGQUIT, "USR1": _signal.SIGUSR1,
           "USR2": _signal.SIGUSR2, "STOP": _signal.SIGSTOP, "CONT": _signal.SIGCONT}


# ---- pure helpers ----------------------------------------------------------------------

def clip(data: bytes, limit: int = OUTPUT_LIMIT) -> tuple[str, int]:
    """Text for a model: all of `data` up to `limit` bytes, else its first and last halves.
    Returns the text and how many bytes were cut (0 when none)."""
    if len(data) <= limit:
        return data.decode("utf-8", "replace"), 0
    half = limit // 2
    cut = len(data) - 2 * half
    first = data[:half].decode("utf-8", "replace")
    last = data[-half:].decode("utf-8", "replace")
    return f"{first}\n[... {cut} bytes cut ...]\n{last}", cut


def head(data: bytes | bytearray, limit: int) -> bytes:
    """The first `limit` bytes at most, not ending inside a UTF-8 character (unless the data
    is not UTF-8 there), so each read decodes cleanly on its own."""
    if len(data) <= limit:
        return bytes(data)
    end = limit
    # Back up over continuation bytes (10xxxxxx) to the start of the character that straddles
    # the cut; at most 3 of them in valid UTF-8.
    while end > limit - 3 and end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return bytes(data[:end if end > 0 and data[end] & 0xC0 == 0xC0 else limit])


def output_fields(stdout: bytes, stderr: bytes, notes: list[str]) -> dict:
    out: dict[str, Any] = {}
    for name, data in (("stdout", stdout), ("stderr", stderr)):
        text, cut = clip(data)
        out[name] = text
        if cut:
            notes.append(f"{name} was {len(data)} bytes; {cut} bytes in the middle were cut")
    return out


def signal_number(name: str | int) -> int:
    """"TERM", "SIGTERM", "term" or 15 -> 15; anything else is a ConfigError naming it."""
    if isinstance(name, int) and not isinstance(name, bool):
        if 1 <= name <= 64:
            return name
    elif isinstance(name, str):
        key = name.upper().removeprefix("SIG")
        if key in SIGNALS:
            return int(SIGNALS[key])
        if key.isdigit() and 1 <= int(key) <= 64:
            return int(key)
    raise ConfigError([f"signal: unknown signal {name!r} (use one of "
                       f"{', '.join(SIGNALS)} or a number 1-64)"])


def start_options(offered_secrets: dict, *, from_checkpoint: str | None, cpus: int | None,
                  memory_mb: int | None, allow_hosts: list[str] | None,
                  secrets: list[str] | None, env: dict[str, str] | None) -> dict:
    """The start_sandbox tool's arguments as AsyncSandbox.start options. Secrets are looked
    up among those the server offers; their hosts join the allowlist, since a secret is
    only useful where the sandbox may connect."""
    options: dict[str, Any] = {}
    if from_checkpoint:
        options["from_"] = from_checkpoint
    if cpus is not None:
        options["cpus"] = cpus
    if memory_mb is not None:
        options["memory"] = memory_mb
    if env:
        options["env"] = env
    hosts = list(allow_hosts or [])
    if secrets:
        unknown = [name for name in secrets if name not in offered_secrets]
        if unknown:
            offered = ", ".join(sorted(offered_secrets)) or "none"
            raise ConfigError([f"secrets: {name!r} is not offered by this server "
                               f"(offered: {offered})" for name in unknown])
        options["secrets"] = {name: offered_secrets[name] for name in secrets}
        hosts += [h for name in secrets for h in offered_secrets[name]["hosts"] if h not in hosts]
    if hosts:
        options["allow_net"] = True
        options["network"] = {"allow": hosts}
    return options


# ---- the session's sandboxes and processes ---------------------------------------------

class ProcessOutput:
    """A spawned process's output kept for `read_process_output`: the pump takes chunks
    from the process and waits while PROCESS_BUFFER_LIMIT bytes are unread, so the guest
    process is paused rather than its output dropped."""

    def __init__(self, process: Process):
        self.process = process
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.changed = asyncio.Event()
        self.drained = asyncio.Event()
        self.error: str | None = None
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for chunk in self.process:
                while len(self.stdout) + len(self.stderr) >= PROCESS_BUFFER_LIMIT:
                    self.drained.clear()
                    await self.drained.wait()
                (self.stdout if chunk.stream == "stdout" else self.stderr).extend(chunk.data)
                self.changed.set()
        except ShuruError as e:
            self.error = str(e)
        finally:
            self.changed.set()

    @property
    def running(self) -> bool:
        return not self.pump.done()

    def take(self, limit: int = OUTPUT_LIMIT) -> tuple[bytes, bytes]:
        """Up to `limit` bytes of each stream, cut on a UTF-8 character boundary; the rest
        stays for the next read."""
        out = head(self.stdout, limit)
        err = head(self.stderr, limit)
        del self.stdout[:len(out)]
        del self.stderr[:len(err)]
        if not (self.stdout or self.stderr):
            self.changed.clear()
        self.drained.set()
        return out, err

    @property
    def pending(self) -> int:
        return len(self.stdout) + len(self.stderr)


@dataclass
class Entry:
    sandbox: AsyncSandbox
    options: dict
    processes: dict[str, ProcessOutput] = field(default_factory=dict)


class Session:
    """Everything one client started. `close()` stops it all; nothing outlives it."""

    def __init__(self, offered_secrets: dict | None = None):
        self.offered_secrets = offered_secrets or {}
        self.sandboxes: dict[str, Entry] = {}
        self._ids = itertools.count(1)
        self._closed = False

    def entry(self, sandbox_id: str) -> Entry:
        try:
            return self.sandboxes[sandbox_id]
        except KeyError:
            known = ", ".join(self.sandboxes) or "none"
            raise ShuruError(f"no sandbox {sandbox_id!r} in this session (running: {known})",
                             hint="start one with start_sandbox") from None

    def process(self, process_id: str) -> ProcessOutput:
        for entry in self.sandboxes.values():
            if process_id in entry.processes:
                return entry.processes[process_id]
        raise ShuruError(f"no process {process_id!r} in this session's running sandboxes",
                         hint="start one with start_process")

    async def start(self, options: dict, lifetime: float | None) -> str:
        if self._closed:
            raise ShuruError("the session is closing")
        sandbox = await AsyncSandbox.start(lifetime=lifetime, **options)
        if self._closed:  # the session closed while this one booted
            await sandbox.stop()
            raise ShuruError("the session is closing")
        sandbox_id = f"sb-{next(self._ids)}"
        self.sandboxes[sandbox_id] = Entry(sandbox, options)
        return sandbox_id

    def spawned(self, sandbox_id: str, process: Process) -> str:
        process_id = f"p-{next(self._ids)}"
        self.sandboxes[sandbox_id].processes[process_id] = ProcessOutput(process)
        return process_id

    async def stop(self, sandbox_id: str) -> None:
        entry = self.sandboxes.pop(sandbox_id, None)
        if entry is None:
            return
        try:
            await entry.sandbox.stop()
        finally:
            for out in entry.processes.values():
                out.pump.cancel()

    async def close(self) -> None:
        self._closed = True
        # Best effort: a sandbox that fails to stop cleanly still dies with this process.
        await asyncio.gather(*(self.stop(i) for i in list(self.sandboxes)),
                             return_exceptions=True)


# ---- the server ------------------------------------------------------------------------

def build_server(session: Session):
    """An `MCPServer` whose tools act on `session`'s sandboxes."""
    from mcp.server import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from pydantic import Field

    server = MCPServer(
        name="shuru",
        log_level="WARNING",  # the client shows our stderr; a failed tool call is not news
        instructions=(
            "Disposable Linux microVMs (Debian). Start a sandbox with start_sandbox, run "
            "commands in it with exec (or start_process for long-running ones), move files "
            "with read_file / write_file / list_files, and stop it when done. Sandboxes are "
            "offline unless started with allow_hosts. Everything stops when you disconnect."),
    )

    def tool(fn):
        """Register fn as a tool; a ShuruError becomes a tool error with its message."""
        import functools

        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except ShuruError as e:
                raise ToolError(str(e)) from e
        server.add_tool(wrapper, name=fn.__name__, description=fn.__doc__)
        return fn

    SandboxId = Annotated[str, Field(description="The sandbox's id, as start_sandbox returned it")]
    ProcessId = Annotated[str, Field(description="The process's id, as start_process returned it")]
    Command = Annotated[str | list[str], Field(
        description="A shell command line (run with sh -c), or an argv list run directly")]
    Cwd = Annotated[str | None, Field(description="Working directory in the sandbox "
                                      "(default /root)")]
    Env = Annotated[dict[str, str] | None, Field(description="Extra environment variables")]
    Path = Annotated[str, Field(description="Path in the sandbox; relative paths are under /root")]

    @tool
    async def start_sandbox(
        from_checkpoint: Annotated[str | None, Field(
            description="Start from this checkpoint (made with checkpoint_sandbox) instead "
                        "of the clean image")] = None,
        cpus: Annotated[int | None, Field(
            ge=1, le=64, description="Virtual CPUs (default 2)")] = None,
        memory_mb: Annotated[int | None, Field(
            ge=128, description="RAM in MiB (default 2048)")] = None,
        allow_hosts: Annotated[list[str] | None, Field(
            description="Hosts the sandbox may connect to, e.g. ['pypi.org', "
                        "'*.githubusercontent.com']; without any, the sandbox is offline")] = None,
        secrets: Annotated[list[str] | None, Field(
            description="Names of secrets this server offers (see list_sandboxes): the "
                        "sandbox gets a placeholder in $NAME that is replaced by the real "
                        "value only in HTTPS requests to the secret's hosts")] = None,
        env: Env = None,
        lifetime_seconds: Annotated[float | None, Field(
            gt=0, description="Stop the sandbox automatically after this many seconds")] = None,
    ) -> dict[str, Any]:
        """Start a new sandbox: a disposable Debian Linux VM with root, python3 and the usual
        tools. Returns its sandbox_id for the other tools. Starts take about a second or
        several. It is discarded (disk included) when stopped, unless checkpointed first."""
        options = start_options(session.offered_secrets, from_checkpoint=from_checkpoint,
                                cpus=cpus, memory_mb=memory_mb, allow_hosts=allow_hosts,
                                secrets=secrets, env=env)
        sandbox_id = await session.start(options, lifetime_seconds)
        sb = session.sandboxes[sandbox_id].sandbox
        return {"sandbox_id": sandbox_id, "cpus": sb.config.cpus, "memory_mb": sb.config.memory,
                "network": "allowed: " + ", ".join(options["network"]["allow"])
                           if "network" in options else "offline"}

    @tool
    async def list_sandboxes() -> dict[str, Any]:
        """List this session's sandboxes (with their running processes) and the secrets the
        server offers."""
        return {
            "sandboxes": [
                {"sandbox_id": sid, "state": e.sandbox.state.value,
                 "from_checkpoint": e.options.get("from_"),
                 "cpus": e.sandbox.config.cpus, "memory_mb": e.sandbox.config.memory,
                 "processes": [pid for pid, p in e.processes.items() if p.running]}
                for sid, e in session.sandboxes.items()],
            "offered_secrets": {name: s["hosts"] for name, s in session.offered_secrets.items()},
        }

    @tool
    async def stop_sandbox(sandbox_id: SandboxId) -> dict[str, Any]:
        """Stop a sandbox and discard it with everything in it."""
        session.entry(sandbox_id)
        await session.stop(sandbox_id)
        return {"sandbox_id": sandbox_id, "stopped": True}

    @tool
    async def exec(
        sandbox_id: SandboxId, command: Command, cwd: Cwd = None, env: Env = None,
        timeout_seconds: Annotated[float, Field(
            gt=0, le=3600, description="Kill the command (its whole process group) after "
                                       "this many seconds")] = 120,
        stdin: Annotated[str | None, Field(description="Text fed to the command's stdin")] = None,
    ) -> dict[str, Any]:
        """Run a command in a sandbox to completion and return its exit code, stdout and
        stderr. Long outputs are cut in the middle (a note says so); use start_process for
        servers or commands that run for a long time or need interactive input."""
        sb = session.entry(sandbox_id).sandbox
        notes: list[str] = []
        try:
            result: ExecResult = await sb.exec(command, cwd=cwd, env=env,
                                               timeout=timeout_seconds, stdin=stdin,
                                               max_output=EXEC_CAPTURE_LIMIT)
        except ShuruError as e:
            stdout, stderr = getattr(e, "stdout", None), getattr(e, "stderr", None)
            if stdout is None:
                raise
            # A timeout or an output flood: the partial output is what the model needs.
            out = {"exit_code": None, **output_fields(stdout, stderr, notes)}
            out["error"] = str(e)
            if notes:
                out["notes"] = notes
            return out
        out = {"exit_code": result.exit_code, **output_fields(result.stdout_bytes,
                                                              result.stderr_bytes, notes)}
        if notes:
            out["notes"] = notes
        return out

    @tool
    async def start_process(sandbox_id: SandboxId, command: Command, cwd: Cwd = None,
                            env: Env = None) -> dict[str, Any]:
        """Start a long-running process (a server, a REPL, a build) in a sandbox and return
        at once with its process_id. Read its output with read_process_output, feed its
        stdin with write_process_stdin, stop it with signal_process."""
        sb = session.entry(sandbox_id).sandbox
        process = await sb.spawn(command, cwd=cwd, env=env)
        return {"process_id": session.spawned(sandbox_id, process), "pid": process.pid}

    @tool
    async def read_process_output(
        process_id: ProcessId,
        wait_seconds: Annotated[float, Field(
            ge=0, le=MAX_WAIT, description="If there is no new output yet, wait up to this "
                                           "long for some (or for the process to exit)")] = 0,
    ) -> dict[str, Any]:
        """Return the process's output since the last read (stdout and stderr, up to 32 KiB
        each; a note says when more is waiting), whether it is still running, and its exit
        code once it has exited."""
        out = session.process(process_id)
        if wait_seconds and out.running and not (out.stdout or out.stderr):
            try:
                await asyncio.wait_for(out.changed.wait(), wait_seconds)
            except asyncio.TimeoutError:
                pass
        stdout, stderr = out.take()
        result = {"running": out.running, "exit_code": out.process.exit_code,
                  "stdout": stdout.decode("utf-8", "replace"),
                  "stderr": stderr.decode("utf-8", "replace")}
        if out.error:
            result["error"] = out.error
        if out.pending:
            result["notes"] = [f"{out.pending} more bytes of output are waiting: read again"]
        return result

    @tool
    async def write_process_stdin(
        process_id: ProcessId,
        data: Annotated[str, Field(description="Text to write (include a trailing newline "
                                               "for line-oriented programs)")],
        close: Annotated[bool, Field(
            description="Close stdin after writing (end of input)")] = False,
    ) -> dict[str, Any]:
        """Write text to the stdin of a process started with start_process; close=true
        ends its input (as Ctrl-D would)."""
        process = session.process(process_id).process
        if data:
            await process.write(data)
        if close:
            await process.close_stdin()
        return {"process_id": process_id, "written": len(data.encode()), "closed": close}

    @tool
    async def signal_process(
        process_id: ProcessId,
        signal: Annotated[str, Field(description="TERM (default), KILL, INT, HUP, QUIT, USR1, "
                                                 "USR2, STOP, CONT, or a number")] = "TERM",
    ) -> dict[str, Any]:
        """Send a signal to a process and its whole process group (TERM asks it to stop,
        KILL forces it)."""
        out = session.process(process_id)
        await out.process.signal(signal_number(int(signal) if signal.isdigit() else signal))
        return {"process_id": process_id, "signal": signal, "running": out.running}

    @tool
    async def read_file(
        sandbox_id: SandboxId, path: Path,
        encoding: Annotated[Literal["utf-8", "base64"], Field(
            description="utf-8 for text, base64 for binary files")] = "utf-8",
    ) -> dict[str, Any]:
        """Read a file from a sandbox (at most 1 MiB; a note says when it was cut)."""
        files = session.entry(sandbox_id).sandbox.files
        data = bytearray()
        async with contextlib.aclosing(files.iter_read(path)) as chunks:
            async for chunk in chunks:  # leaving early closes the guest's read at once
                data.extend(chunk)
                if len(data) > FILE_READ_LIMIT:
                    break
        result: dict[str, Any] = {"path": path}
        if len(data) > FILE_READ_LIMIT:
            del data[FILE_READ_LIMIT:]
            result["notes"] = [f"only the first {FILE_READ_LIMIT} bytes are shown; use exec "
                               "(head, tail, grep) to see the rest"]
        if encoding == "base64":
            result["content"] = base64.b64encode(bytes(data)).decode()
        else:
            result["content"] = bytes(data).decode("utf-8", "replace")
        result["encoding"] = encoding
        return result

    @tool
    async def write_file(
        sandbox_id: SandboxId, path: Path,
        content: Annotated[str, Field(description="The file's new content")],
        encoding: Annotated[Literal["utf-8", "base64"], Field(
            description="How content is encoded: utf-8 text or base64 bytes")] = "utf-8",
        mode: Annotated[str | None, Field(
            pattern="^0?[0-7]{3,4}$", description="Permissions in octal, e.g. '755'")] = None,
    ) -> dict[str, Any]:
        """Write a file in a sandbox, creating missing parent directories and replacing the
        file if it exists."""
        files = session.entry(sandbox_id).sandbox.files
        try:
            data = (base64.b64decode(content, validate=True) if encoding == "base64"
                    else content.encode())
        except ValueError:
            raise ToolError("content is not valid base64") from None
        size = await files.write(path, data, mode=int(mode, 8) if mode else None)
        return {"path": path, "bytes": size}

    @tool
    async def list_files(sandbox_id: SandboxId, path: Path) -> dict[str, Any]:
        """List a directory in a sandbox: each entry's name, type (file, dir, symlink, other),
        size and permissions."""
        files = session.entry(sandbox_id).sandbox.files
        entries = []
        result: dict[str, Any] = {"path": path}
        async with contextlib.aclosing(files.iter_list(path)) as listing:
            async for info in listing:
                if len(entries) == LIST_LIMIT:
                    result["notes"] = [f"only the first {LIST_LIMIT} entries are shown"]
                    break
                entries.append({"name": info.name, "type": info.type, "size": info.size,
                                "mode": oct(info.mode & 0o7777)})
        result["entries"] = entries
        return result

    @tool
    async def checkpoint_sandbox(
        sandbox_id: SandboxId,
        name: Annotated[str, Field(description="Name for the checkpoint")],
        overwrite: Annotated[bool, Field(description="Replace a checkpoint of that name")] = False,
    ) -> dict[str, Any]:
        """Save a sandbox's disk as a named checkpoint, e.g. after installing tools. The
        sandbox is stopped by this; start any number of new sandboxes from it with
        start_sandbox(from_checkpoint=name)."""
        entry = session.entry(sandbox_id)
        try:
            cp = await entry.sandbox.checkpoint(name, overwrite=overwrite)
        finally:
            if entry.sandbox.state.value == "stopped":
                await session.stop(sandbox_id)
        return {"checkpoint": cp.name, "stopped_sandbox": sandbox_id}

    return server


async def serve(offered_secrets: dict | None = None) -> None:
    """Serve MCP on stdin/stdout until the client disconnects or a signal asks us to stop;
    then stop every sandbox the session started."""
    import anyio

    session = Session(offered_secrets)
    server = build_server(session)

    async def on_signal() -> None:
        with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
            async for signum in signals:
                # Cancelling the server would wait for its stdin reader, a thread blocked
                # in read() while the client keeps the pipe open: stop the VMs here, then
                # die of the signal as if we had not caught it.
                ignore_stop_signals()
                with anyio.CancelScope(shield=True):
                    await session.close()
                _signal.signal(signum, _signal.SIG_DFL)
                os.kill(os.getpid(), signum)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signal)
            try:
                await server.run_stdio_async()
            finally:
                tg.cancel_scope.cancel()
    finally:
        ignore_stop_signals()
        with anyio.CancelScope(shield=True):
            await session.close()


def ignore_stop_signals() -> None:
    """While the VMs stop, a client that tires of waiting may signal again: stopping goes
    on (SIGKILL still ends us, and QEMU with us)."""
    for sig in STOP_SIGNALS:
        _signal.signal(sig, _signal.SIG_IGN)


def main(offered_secrets: dict | None = None) -> None:
    import anyio

    anyio.run(serve, offered_secrets)
