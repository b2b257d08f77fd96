"""`AsyncSandbox`: the one implementation of a sandbox's life and its methods.

Owns the explicit run state (`created → starting → running → stopping → stopped`, or `failed`),
the guard every method uses to name the state it needs, resolving options into a
`SandboxConfig`, starting the machine through the platform's backend, and the agent channel
on top. With allow_net it also holds the sandbox's network session (`guestnet`): the policy
proxy, created before boot and attached after the handshake. The sync `Sandbox` (in
`sync.py`) drives this same class on a private loop thread.

A detached sandbox (`start(detach=True)`, `attach(name)`) is this same class with its VM in a
supervisor process (`shuru.supervisor`): its channel is a relay over the supervisor's socket,
so exec, spawn, files, watch and `connect` work unchanged, and what the VM's owner must do
(stop, checkpoint, pause, expose, lifetimes) goes to the supervisor as a request
(`shuru.remote`). Such an object only holds a connection: closing it (`disconnect`, or the end
of `async with`) leaves the sandbox running; `stop()` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import checkpoints, faststart, metrics as metrics_mod, snapshots
from . import config as cfg
from .backends.base import MachineSpec
from .backends.select import default_backend
from .channel import Channel
from .errors import SandboxDiedError, SandboxStateError, ShuruError
from .files import Files, Watch, start_watch
from .image import current_image, image_arch, normalize_arch, shuru_home
from .process import DEFAULT_MAX_OUTPUT, ExecResult, Process, run_to_completion, start_stream


def cfg_guest_path(path) -> str:
    from .mounts import check_guest_path

    return check_guest_path(os.fspath(path))


class State(str, enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"  # the VM's CPUs are stopped, its memory kept (see `pause`)
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def resolve_config(options: Mapping[str, Any], config_file: str | os.PathLike | None = None,
                   environ: Mapping[str, str] = os.environ) -> cfg.SandboxConfig:
    """Defaults < config file < SHURU_* environment < explicit options (flags)."""
    file_layer = cfg.load_file(Path(config_file)) if config_file is not None else {}
    given = {k: v for k, v in options.items() if v is not None}
    return cfg.merge(file_layer, cfg.env_layer(environ), cfg.validate(given))


def to_argv(command: str | Sequence[str], shell: str = "sh") -> list[str]:
    """A string runs through the shell; a list is the argv itself."""
    if isinstance(command, str):
        return [shell, "-c", command]
    argv = list(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise cfg.ConfigError(["command must be a string or a non-empty list of strings"])
    return argv


def start_lifetime(lifetime: object, timeout: object, *, stacklevel: int = 2) -> float | None:
    """`start(lifetime=)`, or its deprecated name `timeout=` with a DeprecationWarning; a
    ConfigError unless it is a positive number of seconds."""
    if timeout is not None:
        if lifetime is not None:
            raise cfg.ConfigError(["lifetime and timeout (its deprecated name) are both given"])
        warnings.warn("start(timeout=) is deprecated: call it start(lifetime=), the seconds "
                      "until the sandbox is stopped (exec(timeout=) is one command's deadline)",
                      DeprecationWarning, stacklevel=stacklevel)
        lifetime = timeout
    if lifetime is None:
        return None
    if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or not lifetime > 0:
        raise cfg.ConfigError([f"lifetime must be a positive number of seconds, got {lifetime!r}"])
    return float(lifetime)


def _seconds(label: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise cfg.ConfigError([f"{label} must be a positive number of seconds, got {value!r}"])
    return float(value)


def start_options_check(options: Mapping[str, Any]) -> None:
    """Options that are config-file fields but mean nothing to `start`: refused, so that
    nothing a caller passes is silently ignored."""
    if "command" in options:
        raise cfg.ConfigError([
            "command: start() runs no command (command is the config-file field for what "
            "`shuru run` runs); run it with exec() or spawn() once the sandbox is up"])


class _ClassOrInstance:
    """A method with two meanings, as the issues spell them: on a sandbox,
    `sb.connect(guest_port)` connects to a port in it; on the class,
    `AsyncSandbox.connect(name)` is `AsyncSandbox.attach(name)` (a detached sandbox)."""

    def __init__(self, method: Callable):
        self._method = method
        self.__doc__ = method.__doc__
        self.__name__ = method.__name__

    def __get__(self, obj, owner=None):
        if obj is None:
            return owner.attach
        return self._method.__get__(obj, owner)


class AsyncSandbox:
    """A disposable Linux VM. Use `await AsyncSandbox.start(...)` or `async with`."""

    def __init__(self, config: cfg.SandboxConfig | None = None, *,
                 on_console: Callable[[bytes], None] | None = None):
        self.config = config or cfg.SandboxConfig()
        self.state = State.CREATED
        self._on_console = on_console
        self._machine = None
        self._channel: Channel | None = None
        self._timeout_task: asyncio.Task | None = None
        self._image = None  # the guest image the disk stands on (None with custom boot files)
        self._parent: checkpoints.Checkpoint | None = None
        self._layer: snapshots.Layer | None = None  # the disk layer saved states belong to
        self._spec_used: MachineSpec | None = None
        self._disk_size = self.config.disk_size
        self._net = None  # guestnet.NetworkSession with allow_net
        self._ports = None  # ports.PortForwards: listeners bound before boot
        self._name: str | None = None  # a detached sandbox's name
        self._remote: dict | None = None  # a detached sandbox's info from its supervisor
        self._started = 0.0
        self._mounts: dict = {}  # guest path -> mounts.ActiveMount
        self.files = Files(self._live_channel, lambda: self.config.workdir)

    # ---- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def start(cls, *, config: str | os.PathLike | None = None,
                    lifetime: float | None = None,
                    on_console: Callable[[bytes], None] | None = None,
                    timeout: float | None = None, detach: bool = False,
                    name: str | None = None, idle_timeout: float | None = None,
                    **options: Any) -> "AsyncSandbox":
        """Start a sandbox. Options are the config-file fields (cpus, memory, disk_size, env,
        workdir, kernel, rootfs, initrd, accel, `from_`: a checkpoint to start from, `cold=True`
        to boot instead of restoring saved machine state, and the network: `allow_net=True`,
        `network={"allow": [...], "resolve": {...}}`, `secrets={NAME: {"from": HOST_ENV_VAR,
        "hosts": [...]}}`), and forwards `ports=["8080:8000"]` (HOST:GUEST, or GUEST for a
        free host port; see `expose`), host folders `mounts={"./src": "/app"}` (read-only:
        the guest writes into a layer of its own, see `mount_changes`; `"/app:rw"` writes
        through to the host, only with `allow_host_writes=True` and only inside the current
        directory); `config` names a config file; `lifetime` stops the
        sandbox that many seconds after it started (`timeout`, its old name, still works but
        warns: it read too much like `exec(timeout=)`, a deadline for one command). `command`
        is refused: a sandbox runs what `exec` and `spawn` give it.

        `detach=True` starts the sandbox in a supervisor process of its own, so it outlives
        the caller, under `name` (a fresh one if None); reach it from any process of the same
        user with `attach(name)`. The supervisor enforces `lifetime` and `idle_timeout`
        (seconds without exec, file or stream activity) even when no client is connected.
        `name` without `detach` gives the same named, attachable sandbox, bound to this
        process: its supervisor stops it when this process ends (kill -9 included), as a
        plain sandbox's VM dies with its owner."""
        lifetime = start_lifetime(lifetime, timeout, stacklevel=3)
        start_options_check(options)
        idle_timeout = _seconds("idle_timeout", idle_timeout)
        if not isinstance(detach, bool):
            raise cfg.ConfigError([f"detach must be True or False, got {detach!r}"])
        if not detach and idle_timeout is not None:
            raise cfg.ConfigError([
                "idle_timeout is for detached sandboxes: pass detach=True (a plain sandbox "
                "lives as long as its owner)"])
        resolved = resolve_config(options, config)
        if detach or name is not None:
            return await cls._start_detached(resolved, name, lifetime, idle_timeout,
                                             bound=not detach)
        sandbox = cls(resolved, on_console=on_console)
        await sandbox._boot()
        if lifetime is not None:
            sandbox._timeout_task = asyncio.create_task(sandbox._expire(lifetime))
        return sandbox

    @classmethod
    async def _start_detached(cls, config: cfg.SandboxConfig, name: str | None,
                              lifetime: float | None, idle_timeout: float | None,
                              bound: bool = False):
        from . import registry, remote
        from .supervisor import config_to_json

        name = registry.check_name(name) if name is not None else registry.new_name()
        await remote.spawn({"name": name, "config": config_to_json(config),
                            "lifetime": lifetime, "idle_timeout": idle_timeout,
                            "owner_pid": os.getpid(), "bound_to_owner": bound})
        return await cls.attach(name)

    @classmethod
    async def attach(cls, name: str) -> "AsyncSandbox":
        """A detached sandbox by name, from any process of the user who started it: the
        whole API (exec, spawn, files, watch, connect, checkpoint, pause, stop...). Several
        clients may be attached at once. SandboxNotFoundError if none has that name,
        AccessError if it belongs to another user."""
        from . import registry, remote
        from .ports import PortForwards
        from .supervisor import config_from_json

        registry.check_name(name)
        info, channel = await remote.open_channel(name)
        sandbox = cls(config_from_json(info["config"]))
        sandbox._name = name
        sandbox._remote = info
        sandbox._channel = channel
        sandbox._started = info.get("started") or time.time()
        sandbox._ports = PortForwards()  # for connect(): streams through the relay
        sandbox._ports.attach(channel)
        sandbox.state = State.PAUSED if info.get("state") == "paused" else State.RUNNING
        return sandbox

    @staticmethod
    async def list() -> list[dict]:
        """The user's detached sandboxes: {name, id, state (running, paused, or dead: its
        supervisor crashed, see `shuru prune`), started, from, cpus, memory, ports,
        owner_pid, supervisor_pid, ...}."""
        from . import registry

        return await asyncio.to_thread(registry.list_records)

    async def _request(self, op: str, **args):
        from . import remote

        return await remote.request(self.name, op, **args)

    def _spec(self) -> MachineSpec:
        c = self.config
        fmt, base_mb, disk_size = "raw", 0, c.disk_size
        if c.from_:
            # The checkpoint decides the image: its disk only makes sense with its kernel.
            cp = checkpoints.load(c.from_)
            checkpoints.chain(cp)  # every layer below must be intact too
            self._image = checkpoints.base_image(cp)
            self._parent = cp
            kernel = Path(c.kernel) if c.kernel else self._image.kernel
            initrd = c.initrd or self._image.initrd
            rootfs, fmt, base_mb = cp.disk, "qcow2", cp.virtual_size_mb
            disk_size = max(disk_size, base_mb)
            if not (c.kernel or c.initrd):
                self._layer = snapshots.Layer.of_checkpoint(cp)
        elif c.kernel and c.rootfs:
            kernel, rootfs, initrd = Path(c.kernel), Path(c.rootfs), c.initrd
        else:
            self._image = current_image(arch=normalize_arch(c.arch) if c.arch else None)
            kernel = Path(c.kernel) if c.kernel else self._image.kernel
            rootfs = Path(c.rootfs) if c.rootfs else self._image.rootfs
            initrd = c.initrd or self._image.initrd
            if not (c.kernel or c.rootfs or c.initrd):
                self._layer = snapshots.Layer.of_image(self._image)
        self._disk_size = disk_size
        return MachineSpec(kernel=kernel, initrd=Path(initrd) if initrd else None,
                           rootfs=rootfs, cpus=c.cpus, memory=c.memory,
                           disk_size=disk_size, accel=c.accel,
                           verbose_console=c.console, rootfs_format=fmt,
                           rootfs_size_mb=base_mb, arch=self._guest_arch())

    def _guest_arch(self) -> str | None:
        """The image decides the architecture (a checkpoint's too); `arch` must agree."""
        want = normalize_arch(self.config.arch) if self.config.arch else None
        if self._image is None:
            return want
        have = image_arch(self._image)
        if want and want != have:
            raise cfg.ConfigError([f"arch {want!r} does not match the {have} image the "
                                   f"sandbox starts from ({self.config.from_ or self._image.id});"
                                   f" leave arch unset: a checkpoint runs on its own image"])
        return have

    async def _boot(self) -> None:
        self._require(State.CREATED)
        self.state = State.STARTING
        try:
            if self.config.allow_net:
                from .guestnet import NetworkSession

                self._net = NetworkSession(self.config.network, self.config.secrets)
            from .ports import PortForwards

            self._ports = PortForwards()
            await self._ports.bind_all(self.config.ports)  # a port in use fails before boot
            from . import mounts

            # Checked before boot: a missing folder or a refused :rw fails at once.
            mount_specs = mounts.check_host(
                [mounts.parse_spec(text) for text in self.config.mounts],
                allow_host_writes=self.config.allow_host_writes)
            backend = default_backend(shuru_home())
            # In a thread: a checkpoint's disk is hashed when it changed since last time.
            spec = self._spec_used = await asyncio.to_thread(self._spec)
            self._machine, self._channel = await faststart.start(
                backend, spec, self._layer, cold=self.config.cold, on_console=self._on_console)
            if self._net:
                await self._net.attach(self._channel, Files(lambda: self._channel))
            self._ports.attach(self._channel)
            for spec in mount_specs:
                self._mounts[spec.guest] = await mounts.mount(self._channel, spec)
            self._machine.exited.add_done_callback(self._on_machine_exit)
            self._started = time.time()
            self.state = State.RUNNING
        except BaseException:
            self.state = State.FAILED
            await self._teardown()
            raise

    def _on_machine_exit(self, _fut) -> None:
        if self.state in (State.RUNNING, State.PAUSED):
            self.state = State.FAILED

    async def _expire(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.stop()

    async def checkpoint(self, name: str, *, overwrite: bool = False) -> checkpoints.Checkpoint:
        """Sync the guest's filesystems, stop the VM and keep its disk as checkpoint `name`.
        Start sandboxes from it with `start(from_=name)`; the sandbox is stopped after. Then
        the checkpoint's machine state is saved for this sandbox's machine size (unless it was
        started `cold`), so the starts from it restore from the very first one."""
        checkpoints.check_name(name)
        if self._remote is not None:
            self._require(State.RUNNING)
            self.state = State.STOPPING
            try:
                from . import registry

                saved = await self._request("checkpoint", name=name, overwrite=overwrite)
                await asyncio.to_thread(registry.slot(self.name).wait_gone, 60)
            finally:
                await self._channel.close()
                self.state = State.STOPPED
            return checkpoints.load(saved)
        channel = self._live_channel()
        if self._image is None:
            raise checkpoints.CheckpointError(
                "only sandboxes started from the guest image or a checkpoint can be "
                "checkpointed (this one was booted from custom --kernel/--rootfs files)")
        if (checkpoints.checkpoints_dir() / name).exists() and not overwrite:
            raise checkpoints.CheckpointError(f"a checkpoint named {name!r} already exists",
                                              hint="pass overwrite=True to replace it")
        self.state = State.STOPPING
        try:
            # The agent syncs and powers off; QEMU then exits cleanly, which flushes the
            # overlay's own metadata. Only then is the file complete.
            await asyncio.wait_for(channel.shutdown(), 60)
            await asyncio.wait_for(asyncio.shield(self._machine.exited), 60)
            layer = (self._spec_used.rootfs, self._spec_used.rootfs_format)
            backing = getattr(self._machine, "backing", layer)
            cp = await asyncio.to_thread(
                checkpoints.save, self._machine.disk, name, image=self._image,
                parent=self._parent, virtual_size_mb=self._disk_size, overwrite=overwrite,
                rebase_onto=None if backing == layer else layer)
        except asyncio.TimeoutError:
            raise SandboxDiedError("the VM did not shut down for the checkpoint within 60 s",
                                   console_tail=self._machine.console_tail()) from None
        finally:
            try:
                await self._teardown()
            finally:
                self.state = State.STOPPED
        # Forks get the spec `_spec` gives `from_=name` with this sandbox's options; custom
        # boot files give them no layer to restore from.
        if not (self.config.cold or self.config.kernel or self.config.initrd):
            spec = dataclasses.replace(self._spec_used, rootfs=cp.disk, rootfs_format="qcow2",
                                       rootfs_size_mb=cp.virtual_size_mb,
                                       disk_size=cp.virtual_size_mb)
            await faststart.prepare(default_backend(shuru_home()), spec,
                                    snapshots.Layer.of_checkpoint(cp), self._on_console)
        return cp

    async def stop(self) -> None:
        """Stop the VM and discard its disk. Safe to call more than once."""
        if self.state in (State.STOPPED, State.STOPPING, State.CREATED):
            return
        self.state = State.STOPPING
        try:
            if self._remote is not None:
                from . import registry
                from .errors import SandboxNotFoundError

                try:
                    await self._request("stop")
                except (SandboxNotFoundError, SandboxDiedError):
                    pass  # already gone
                # Back once the supervisor has stopped the VM and let go of the name.
                await asyncio.to_thread(registry.slot(self.name).wait_gone, 60)
            await self._teardown()
        finally:
            self.state = State.STOPPED

    async def disconnect(self) -> None:
        """Close this connection to a detached sandbox and leave it running (the end of
        `async with` does the same for a detached sandbox); `stop()` ends it instead."""
        if self._remote is None:
            raise SandboxStateError("disconnect() is for detached sandboxes; a plain one "
                                    "lives as long as its owner: use stop()",
                                    state=self.state.value)
        if self.state in (State.STOPPED, State.STOPPING):
            return
        await self._teardown()
        self.state = State.STOPPED

    async def _teardown(self) -> None:
        if self._timeout_task and self._timeout_task is not asyncio.current_task():
            self._timeout_task.cancel()
        if self._ports:
            await self._ports.close()
        for active in self._mounts.values():
            await active.close()
        if self._net:
            await self._net.close()
        if self._channel:
            await self._channel.close()
        if self._machine:
            await self._machine.stop()

    async def __aenter__(self) -> "AsyncSandbox":
        if self.state == State.CREATED:
            await self._boot()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._remote is not None:
            await self.disconnect()
        else:
            await self.stop()

    def _require(self, *states: State) -> None:
        if self.state not in states:
            names = " or ".join(s.value for s in states)
            detail = ""
            if self.state == State.FAILED and self._machine is not None:
                tail = self._machine.console_tail(10)
                detail = f"; console tail:\n{tail}" if tail else ""
            raise SandboxStateError(f"the sandbox is {self.state.value}, it must be {names}{detail}",
                                    state=self.state.value, required=names)

    def _live_channel(self) -> Channel:
        # A detached sandbox paused by another client cannot be seen as paused here: its
        # calls wait until it is resumed, as its frames do in the VM's channel.
        self._require(State.RUNNING)
        assert self._channel is not None
        return self._channel

    # ---- processes ---------------------------------------------------------------------

    def _exec_options(self, cwd, env, user) -> dict:
        # Placeholders and CA variables first, so a caller's own env can still override them.
        if self._net:
            merged_env = self._net.guest_env  # a fresh dict each time
        else:
            merged_env = dict(self._remote.get("guest_env") or {}) if self._remote else {}
        merged_env.update(self.config.env)
        if env:
            merged_env.update({str(k): str(v) for k, v in env.items()})
        problems = []
        if cwd is not None:
            try:
                cwd = os.fspath(cwd)
            except TypeError:
                problems.append(f"cwd must be a guest path (str), got {type(cwd).__name__}")
            else:
                if not isinstance(cwd, str):
                    problems.append("cwd must be a guest path (str), got bytes")
        if user is not None and not isinstance(user, str):
            problems.append(f"user must be a user name (str), got {type(user).__name__}")
        if problems:
            raise cfg.ConfigError(problems)
        return {"cwd": cwd or self.config.workdir, "env": merged_env, "user": user}

    async def exec(self, command: str | Sequence[str], *, cwd: str | None = None,
                   env: Mapping[str, str] | None = None, user: str | None = None,
                   timeout: float | None = None, stdin: bytes | str | None = None,
                   shell: str = "sh", max_output: int = DEFAULT_MAX_OUTPUT) -> ExecResult:
        """Run a command to completion and return its output and exit code. A string runs
        through `shell -c`; a list is the argv. On `timeout` the process group is killed
        and ExecTimeoutError carries the partial output; the same when stdout or stderr
        passes `max_output` bytes (16 MiB by default), with ExecOutputLimitError."""
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise cfg.ConfigError([f"max_output must be a positive number of bytes, "
                                   f"not {max_output!r}"])
        channel = self._live_channel()
        if isinstance(stdin, str):
            stdin = stdin.encode()
        return await run_to_completion(channel.open_stream(), to_argv(command, shell),
                                       stdin=stdin, timeout=timeout, max_output=max_output,
                                       **self._exec_options(cwd, env, user))

    async def spawn(self, command: str | Sequence[str], *, cwd: str | None = None,
                    env: Mapping[str, str] | None = None, user: str | None = None,
                    tty: bool = False, rows: int = 24, cols: int = 80,
                    shell: str = "sh") -> Process:
        """Start a process and return at once; see `Process` for its output and stdin."""
        channel = self._live_channel()
        argv = to_argv(command, shell)
        stream = channel.open_stream()
        options = self._exec_options(cwd, env, user)
        if tty:
            options.update(tty=True, rows=rows, cols=cols)
        pid = await start_stream(stream, argv, **options)
        return Process(stream, pid, argv)

    async def watch(self, path: str, callback: Callable, *, recursive: bool = True) -> Watch:
        """Watch a guest directory; `callback(WatchEvent)` gets create/modify/delete/rename
        events (plain function or coroutine) until `await watch.stop()`."""
        return await start_watch(self._live_channel(), path, callback, recursive,
                                 cwd=self.config.workdir)

    def network_log(self) -> list[dict]:
        """The network audit log, oldest first: dns, connect, deny, inject and close events
        ({time, event, host, ip, port, reason?, secrets?, bytes_up?, bytes_down?}); secret
        names only, never values. Empty without allow_net."""
        if self._remote is not None:
            from . import remote

            return remote.request_blocking(self.name, "network_log")
        return self._net.log() if self._net else []

    # ---- pause, lifetimes, metrics -----------------------------------------------------

    async def pause(self) -> None:
        """Stop the VM's CPUs; its memory stays where it is (in host RAM: a paused sandbox
        costs its memory but no CPU). Processes, files and connections resume as they were
        with `resume()`; until then exec and the other calls are refused (SandboxStateError)
        here, and wait for the resume in other clients of a detached sandbox."""
        self._require(State.RUNNING)
        if self._remote is not None:
            await self._request("pause")
        else:
            await self._qmp("stop")
        self.state = State.PAUSED

    async def resume(self) -> None:
        """Run a paused sandbox's CPUs again."""
        self._require(State.PAUSED, State.RUNNING)
        if self._remote is not None:
            await self._request("resume")
        else:
            await self._qmp("cont")
        self.state = State.RUNNING

    async def _qmp(self, command: str) -> None:
        qmp = getattr(self._machine, "qmp", None)
        if qmp is None:
            raise SandboxStateError(f"this backend cannot {command} a VM's CPUs",
                                    state=self.state.value)
        await qmp.execute(command)

    async def set_timeout(self, lifetime: float | None = None, *,
                          idle_timeout: float | None = None) -> None:
        """Stop the sandbox `lifetime` seconds from now (instead of when it was due to), and,
        for a detached sandbox, after `idle_timeout` seconds without exec, file or stream
        activity (enforced by its supervisor, client or not)."""
        lifetime = _seconds("lifetime", lifetime)
        idle_timeout = _seconds("idle_timeout", idle_timeout)
        self._require(State.RUNNING, State.PAUSED)
        if self._remote is not None:
            await self._request("set_timeout", lifetime=lifetime, idle_timeout=idle_timeout)
            return
        if idle_timeout is not None:
            raise cfg.ConfigError(["idle_timeout is for detached sandboxes (start(detach=True))"])
        if lifetime is not None:
            if self._timeout_task:
                self._timeout_task.cancel()
            self._timeout_task = asyncio.create_task(self._expire(lifetime))

    async def metrics(self) -> dict:
        """What the sandbox costs now: {uptime (s), cpu_seconds (the VM process's user +
        system time), memory: {rss, pss} (bytes of host memory the VM process holds; pss
        shares pages with clones of one saved state fairly), guest_memory: {total, available,
        used} (the guest's own /proc/meminfo), disk (bytes its disk layer takes on the host),
        network: {up, down} (bytes through the proxy), state}."""
        if self._remote is not None:
            self._require(State.RUNNING, State.PAUSED)
            return await self._request("metrics")
        self._require(State.RUNNING, State.PAUSED)
        proc = getattr(self._machine, "proc", None)
        usage = await asyncio.to_thread(metrics_mod.process_usage, proc.pid) if proc else {}
        guest = None
        if self.state == State.RUNNING:  # a paused guest cannot answer
            with contextlib.suppress(ShuruError):
                result = await self.exec(["cat", "/proc/meminfo"], timeout=30)
                guest = metrics_mod.guest_memory(result.stdout)
        return {
            "state": self.state.value,
            "uptime": metrics_mod.uptime(self._started),
            "cpu_seconds": usage.get("cpu_seconds"),
            "memory": {"rss": usage.get("rss"), "pss": usage.get("pss")},
            "guest_memory": guest,
            "disk": metrics_mod.disk_bytes(getattr(self._machine, "disk", None)),
            "network": metrics_mod.network_bytes(self.network_log()),
        }

    # ---- ports -------------------------------------------------------------------------

    async def expose(self, guest_port: int, host_port: int | None = None):
        """Forward 127.0.0.1:`host_port` on the host (a free port when None) to
        127.0.0.1:`guest_port` in the sandbox; returns the host `Address` (host, port).
        No network device is involved. PortError if the host port is in use. A detached
        sandbox's listener lives in its supervisor, so it outlives this client."""
        self._live_channel()
        if self._remote is not None:
            from .ports import Address

            host, port = await self._request("expose", guest_port=guest_port,
                                             host_port=host_port)
            return Address(host, port)
        return await self._ports.expose(guest_port, host_port)

    async def unexpose(self, guest_port: int, host_port: int | None = None) -> None:
        """Stop forwarding to `guest_port` (only from `host_port` if given): the listener
        and the connections it accepted are closed."""
        self._live_channel()
        if self._remote is not None:
            await self._request("unexpose", guest_port=guest_port, host_port=host_port)
            return
        await self._ports.unexpose(guest_port, host_port)

    @_ClassOrInstance
    async def connect(self, guest_port: int):
        """Connect to 127.0.0.1:`guest_port` in the sandbox without a host listener:
        an asyncio (StreamReader, StreamWriter) pair (the sync `Sandbox` returns a socket).
        PortError at once if nothing listens there. (On the class, `AsyncSandbox.connect(
        name)` is `attach(name)`.)"""
        return await asyncio.open_connection(sock=await self._connect_socket(guest_port))

    async def _connect_socket(self, guest_port: int):
        self._live_channel()
        return await self._ports.connect(guest_port)

    @property
    def ports(self) -> list:
        """The forwards listening now: `Forward(host, host_port, guest_port)`s."""
        if self._remote is not None and self.state in (State.RUNNING, State.PAUSED):
            from . import remote
            from .ports import Forward

            return [Forward(*f) for f in remote.request_blocking(self.name, "ports")]
        return self._ports.forwards if self._ports else []

    # ---- host folders ------------------------------------------------------------------

    async def mount_changes(self, guest_path: str):
        """What the sandbox changed under the read-only mount at `guest_path`: a `Changes`
        list of `Change(path, kind, type, size)` (kind added, modified or deleted), read
        from the mount's writable layer; `await changes.apply(host_dir)` copies them onto
        a host directory (the mounted folder itself by default)."""
        from .mounts import MountError, changes

        self._live_channel()
        try:
            key = cfg_guest_path(guest_path)
            active = self._mounts[key]
        except (KeyError, ValueError, TypeError):
            raise MountError(f"{guest_path!r} is not a host folder mount of this sandbox "
                             f"(mounts: {', '.join(self._mounts) or 'none'})") from None
        return await changes(self, active)

    @property
    def mounts(self) -> list:
        """The host folders mounted now: `MountSpec(host, guest, mode)`s."""
        return [active.spec for active in self._mounts.values()]

    @property
    def name(self) -> str | None:
        """A named sandbox's name (detached or bound to its owner; None for a plain one)."""
        return self._name

    @property
    def accel(self) -> str | None:
        """The accelerator the VM runs on ("kvm" or "tcg"), once started."""
        if self._remote is not None:
            return self._remote.get("accel")
        return self._machine.accel.name if self._machine else None

    @property
    def restored(self) -> bool:
        """Whether this sandbox was restored from saved machine state (rather than booted)."""
        if self._remote is not None:
            return bool(self._remote.get("restored"))
        return getattr(self._machine, "restored_from", None) is not None

    def console_tail(self, lines: int = 40) -> str:
        if self._remote is not None:
            from . import remote

            with contextlib.suppress(ShuruError):
                return remote.request_blocking(self.name, "console_tail", lines=lines)
            return ""
        return self._machine.console_tail(lines) if self._machine else ""


__all__ = ["AsyncSandbox", "State", "ShuruError"]
