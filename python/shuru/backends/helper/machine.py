"""The helper backend: VMs through `shuru-helper`, the Swift program that owns
Virtualization.framework on macOS (driver `vz`) and, for tests on Linux, runs the guest agent
as a host process instead of a VM (driver `process`).

Owns finding and launching the helper, `HelperClient` (the protocol engine: requests matched to
replies by id, events, and descriptors received with SCM_RIGHTS), and `HelperMachine` (one VM's
life: create, start, connect to the agent's port, stop). The agent's socket arrives as a file
descriptor, so the agent channel's bytes never pass through the helper. The helper dies with its
owner — a parent-death signal where the kernel has one, and on every platform it stops the VM and
exits when its control socket closes. Every wait has a timeout, and every failure names the binary.
The protocol itself is `protocol/HELPER.md`; its pure half is `protocol.py` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...errors import (
    BootError,
    ConfigError,
    HostError,
    ProtocolError,
    SandboxDiedError,
    ShuruError,
    StaleStateError,
)
from ...engine import Runstate, RunState
from ..rundir import RunDir, die_with_parent, disk_root
from ...sanitize import neutralise
from . import protocol as hp
from ..base import FAST_START, PAUSE, Capabilities, MachineSpec
from .disks import RawDisks

AGENT_PORT = 1024
DEFAULT_AGENT_COMMAND = (sys.executable, "-m", "shuru_guest", "--fd", "{fd}")
# A source checkout's own build, found when neither SHURU_HELPER nor PATH has a helper.
CHECKOUT_HELPER = Path(__file__).resolve().parents[4] / "helper/.build/debug/shuru-helper"
BUILD_HINT = "build it with `swift build` in helper/ (on macOS also sign it: see helper/README.md)"

READY_TIMEOUT = 10.0  # launch until the helper prints "ready"
REQUEST_TIMEOUT = 30.0  # any ordinary request
STATE_TIMEOUT = 300.0  # save_state / restore_state move the whole RAM
STOP_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0  # helper exit after its socket closed, before it is killed
BOOT_TIMEOUT = float(os.environ.get("SHURU_BOOT_TIMEOUT", "180"))
MAX_QUEUED_FDS = 4  # descriptors received but not yet claimed by a connect reply


@dataclass(frozen=True)
class Driver:
    """The helper's driver as its `hello` reply describes it."""

    name: str  # "vz" or "process": what the sandbox reports as its accelerator
    helper: str  # the helper's release
    save_state: bool = False  # can save and restore machine state
    pause: bool = False  # can pause and resume

    @classmethod
    def from_hello(cls, reply: dict) -> "Driver":
        caps = reply.get("capabilities")
        caps = caps if isinstance(caps, dict) else {}
        return cls(str(reply.get("driver", "?")), str(reply.get("helper", "?")),
                   save_state=caps.get("save_state") is True, pause=caps.get("pause") is True)

    def capabilities(self) -> Capabilities:
        return Capabilities(backend=f"helper ({self.name} driver)", checkpoint=True, fast_start=self.save_state, pause=self.pause)


def find_helper(environ=os.environ) -> Path:
    """The helper binary: $SHURU_HELPER, else `shuru-helper` on PATH, else this checkout's build."""
    explicit = environ.get("SHURU_HELPER")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HostError(f"shuru-helper not found at {path} (from SHURU_HELPER)", hint=BUILD_HINT)
        if not os.access(path, os.X_OK):
            raise HostError(f"shuru-helper at {path} is not executable (from SHURU_HELPER)",
                            hint=f"chmod +x {path}")
        return path
    on_path = shutil.which("shuru-helper", path=environ.get("PATH"))
    if on_path:
        return Path(on_path)
    if CHECKOUT_HELPER.is_file():
        return CHECKOUT_HELPER
    raise HostError("shuru-helper not found: SHURU_HELPER is not set, there is no shuru-helper "
                    f"on PATH, and no {CHECKOUT_HELPER}", hint=BUILD_HINT)


def agent_command(environ=os.environ) -> list[str]:
    """The process driver's agent argv: $SHURU_HELPER_AGENT_COMMAND (a JSON list), else the
    guest agent of this Python run as a host process."""
    raw = environ.get("SHURU_HELPER_AGENT_COMMAND")
    if not raw:
        return list(DEFAULT_AGENT_COMMAND)
    try:
        command = json.loads(raw)
    except ValueError as e:
        raise ConfigError([f"SHURU_HELPER_AGENT_COMMAND is not JSON: {e}"]) from None
    if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
        raise ConfigError(["SHURU_HELPER_AGENT_COMMAND must be a JSON list of strings"])
    return command


def kernel_cmdline(*, verbose: bool, agent_port: int) -> str:
    """The guest's command line under VZ: console on hvc0, agent on a vsock port."""
    parts = ["console=hvc0", "root=/dev/vda", "rw", "rootfstype=ext4"]
    if not verbose:
        parts.append("quiet")
    parts += ["panic=-1", f"shuru.agent=vsock:{agent_port}"]
    return " ".join(parts)


def machine_config(spec: MachineSpec, *, disk: Path, driver: str, environ=os.environ,
                   cmdline: str | None = None, machine_id: bytes | None = None) -> dict:
    """The `create.config` for a spec (pure). No network device: the guest reaches the network
    only through the agent channel. A restore passes the template's `cmdline` and
    `machine_id` (VZ restores a state only into the machine identity that saved it)."""
    config = {
        "kernel": str(spec.kernel),
        "initrd": str(spec.initrd) if spec.initrd else None,
        "disk": str(disk),
        "cpus": spec.cpus,
        "memory_mb": spec.memory,
        "cmdline": cmdline or kernel_cmdline(verbose=spec.verbose_console, agent_port=AGENT_PORT),
        "network": "none",
        "agent_port": AGENT_PORT,
        "console": True,
    }
    if machine_id is not None:
        config["machine_id"] = machine_id
    if driver == "process":
        config["agent_command"] = agent_command(environ)
    return config


class HelperClient:
    """The protocol engine for one helper connection, in the manner of qemu.qmp: requests get
    ids and futures, events go to a callback, and descriptors are queued in arrival order —
    each arrives with the first byte of the `connect` reply it belongs to, so a reply that
    expects one takes the oldest queued descriptor. Its run state is `engine.RunState`'s, as
    for the agent channel and QMP: RUNNING from the connection on, CLOSED once any protocol
    breach or the connection ending failed every pending request with the same error."""

    def __init__(self, sock: socket.socket, *, name: str, on_event: Callable[[dict], None]):
        self._sock = sock
        self._name = name  # the binary, for messages
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self.run = RunState(f"the control connection to {name}")
        self.run.enter(Runstate.RUNNING)
        self._wants_fd: set[int] = set()
        self._fds: deque[int] = deque()
        self._splitter = hp.FrameSplitter()
        self.closed: asyncio.Future = self._loop.create_future()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def connect(cls, path: Path, *, name: str, on_event: Callable[[dict], None],
                      timeout: float = REQUEST_TIMEOUT) -> "HelperClient":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, str(path)), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            sock.close()
            why = e.strerror if isinstance(e, OSError) else f"no answer within {timeout:.0f} s"
            raise BootError(f"cannot connect to {name} at {path}: {why}") from None
        return cls(sock, name=name, on_event=on_event)

    # ---- receiving -----------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(self._sock, 256 * 1024, MAX_QUEUED_FDS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self._lose(SandboxDiedError(f"the control connection to {self._name} broke: "
                                               f"{e.strerror}"))
        for fd in fds:
            os.set_inheritable(fd, False)
            self._fds.append(fd)
        if flags & getattr(socket, "MSG_CTRUNC", 0) or len(self._fds) > MAX_QUEUED_FDS:
            return self._lose(ProtocolError(f"{self._name} sent more descriptors than were asked for"))
        if not data:
            return self._lose(SandboxDiedError(f"{self._name} closed its control connection"))
        try:
            for msg in self._splitter.feed(data):
                kind = hp.validate_incoming(msg)
                if kind == "event":
                    self._on_event(msg)
                else:
                    self._deliver(msg)
        except hp.WireError as e:
            self._lose(ProtocolError(f"{self._name} broke the helper protocol: {e}"))

    def _deliver(self, reply: dict) -> None:
        rid = reply["id"]
        fd = None
        if rid in self._wants_fd:
            self._wants_fd.discard(rid)
            if reply["ok"]:
                if not self._fds:
                    raise hp.WireError(f"the reply to request {rid} (connect) carried no descriptor")
                fd = self._fds.popleft()
        fut = self.run.take(rid)
        if fut is None:  # nobody waits any more (timed out): drop what it brought
            if fd is not None:
                os.close(fd)
            return
        fut.set_result((reply, fd))

    def _lose(self, error: ShuruError) -> None:
        if not self.run.fail(error):  # every pending request fails with it
            return
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        while self._fds:
            os.close(self._fds.popleft())
        if not self.closed.done():
            self.closed.set_result(str(error))

    # ---- requests ------------------------------------------------------------------------

    async def request(self, op: str, *, timeout: float = REQUEST_TIMEOUT, wants_fd: bool = False,
                      **fields) -> tuple[dict, int | None]:
        """Send one request; return its reply and, for `wants_fd`, the descriptor it carried.
        Error replies are returned too (`reply["ok"]` is false); a lost connection or a helper
        that does not answer in time raises SandboxDiedError."""
        self.run.require(Runstate.RUNNING)
        rid = next(self._ids)
        fut = self.run.expect(rid)
        if wants_fd:
            self._wants_fd.add(rid)
        try:
            await asyncio.wait_for(self._loop.sock_sendall(self._sock, hp.request(rid, op, **fields)),
                                   timeout)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            # A helper that stops answering is as good as dead: fail everything now rather
            # than let each later call wait out its own timeout.
            self._lose(SandboxDiedError(f"{self._name} did not answer {op!r} within {timeout:.0f} s"))
            raise self.run.closed_error() from None
        except OSError as e:
            self._lose(SandboxDiedError(f"the control connection to {self._name} broke: {e.strerror}"))
            raise self.run.closed_error() from None
        finally:
            self.run.forget(rid)

    @property
    def usable(self) -> bool:
        return self.run.is_open

    def close(self) -> None:
        self._lose(SandboxDiedError(f"the connection to {self._name} was closed"))


class HelperMachine:
    """One VM through one helper process: everything from launch to clean-up (`Machine`,
    see backends/base.py)."""

    def __init__(self, binary: Path, rundir: RunDir, on_console: Callable[[bytes], None] | None):
        self.binary = binary
        self.rundir = rundir
        self.agent: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.driver: Driver | None = None  # from the hello reply
        self.capabilities = Driver("?", "?").capabilities()  # until the hello reply says
        self.cmdline = ""
        self.layer = rundir.disk_dir / "disk.img"
        self.backing: tuple[Path, str] = (self.layer, RawDisks.format)
        self.restored_from: Path | None = None
        self.machine_id: bytes | None = None  # from the create reply
        self.exited: asyncio.Future = asyncio.get_running_loop().create_future()
        self._on_console = on_console
        self._console: deque[str] = deque(maxlen=512)
        self._proc: asyncio.subprocess.Process | None = None
        self._client: HelperClient | None = None
        self._watch: asyncio.Task | None = None
        self._stopping = False
        self._stopped = False

    @property
    def accel(self) -> str:
        """The helper's driver: "vz" or "process"."""
        return self.driver.name if self.driver else "?"

    @property
    def pid(self) -> int | None:
        """The helper's process id."""
        return self._proc.pid if self._proc else None

    # ---- start ---------------------------------------------------------------------------

    async def launch(self, driver: str) -> None:
        """Start the helper and connect to it once it says it is ready."""
        sock_path = self.rundir / "helper.sock"
        with open(self.rundir / "helper.log", "wb") as log:
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    str(self.binary), "--socket", str(sock_path), "--driver", driver,
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                    start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
            except OSError as e:
                raise HostError(f"cannot run {self.binary}: {e.strerror}", hint=BUILD_HINT) from None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), READY_TIMEOUT)
        except asyncio.TimeoutError:
            raise BootError(f"{self.binary} did not report ready within {READY_TIMEOUT:.0f} s"
                            f"{self._log_suffix()}") from None
        if line != b"ready\n":
            status = await self._exit_status()
            raise BootError(f"{self.binary} {status} before it was ready{self._log_suffix()}")
        self._client = await HelperClient.connect(sock_path, name=str(self.binary),
                                                  on_event=self._on_event)
        self._watch = asyncio.create_task(self._watch_helper())

    async def greet(self) -> Driver:
        """Say hello; the reply names the driver and what it can do."""
        reply = await self._call("hello", "say hello", version=hp.VERSION)
        if reply.get("version") != hp.VERSION:
            raise self._version_error(reply.get("version"))
        self.driver = Driver.from_hello(reply)
        self.capabilities = self.driver.capabilities()
        return self.driver

    async def boot(self, spec: MachineSpec, *, base: tuple[Path, str, int] | None = None,
                   layer: Path | None = None, restore: Path | None = None,
                   cmdline: str | None = None) -> None:
        """Greet, make the VM's layer (over `base`, else the spec's rootfs; at `layer`, else
        in the run dir), create, start — or, with `restore` (a state dir), restore it with
        the template's machine identity and command line and resume it — and connect to the
        guest agent."""
        driver = await self.greet()
        if restore is not None:
            self.capabilities.require(FAST_START)
        base_path, base_format, base_mb = base or (spec.rootfs, spec.rootfs_format,
                                                   spec.rootfs_size_mb)
        if layer is not None:
            self.layer = layer
        self.backing = (base_path, base_format)
        await RawDisks(self.capabilities.backend).create_layer(
            base_path, base_format, self.layer, size_mb=spec.disk_size, base_size_mb=base_mb)
        machine_id = _machine_id(restore) if restore is not None else None
        self.cmdline = cmdline or kernel_cmdline(verbose=spec.verbose_console,
                                                 agent_port=AGENT_PORT)
        created = await self._call("create", "create the VM",
                                   config=machine_config(spec, disk=self.layer,
                                                         driver=driver.name,
                                                         cmdline=self.cmdline,
                                                         machine_id=machine_id))
        self.machine_id = created.get("machine_id")
        if restore is not None:
            await self._call("restore_state", "restore the machine state",
                             path=str(restore / STATE_FILE))
            await self._call("resume", "resume the restored VM")
            self.restored_from = restore
        else:
            await self._call("start", "start the VM")
        fd = await self._connect_agent()
        try:
            sock = socket.socket(fileno=fd)
            self.agent = await asyncio.open_connection(sock=sock, limit=1 << 20)
        except OSError as e:
            os.close(fd)
            raise BootError(f"the agent connection from {self.binary} is unusable: {e.strerror}") from None

    async def pause(self) -> None:
        self.capabilities.require(PAUSE)
        await self._call("pause", "pause the VM")

    async def resume(self) -> None:
        self.capabilities.require(PAUSE)
        await self._call("resume", "resume the VM")

    async def console_drained(self, timeout: float = 2.0) -> None:
        """Console lines arrive as events on the control connection, in order, before the
        VM's `stopped` event: there is nothing left to wait for."""
        return None

    async def save_state(self, workdir: Path) -> None:
        """Pause the template VM, save its memory and devices to `workdir` (VZ
        `saveMachineStateTo`), keep its machine identity beside them (a restore needs it),
        and end it. Its layer is already in `workdir` (`HelperBackend.start_template`)."""
        self.capabilities.require(FAST_START)
        await self._call("pause", "pause the VM to save it")
        await self._call("save_state", "save the machine state", path=str(workdir / STATE_FILE))
        (workdir / MACHINE_ID_FILE).write_bytes(self.machine_id or b"")
        await self.stop()

    async def _connect_agent(self) -> int:
        """The agent's socket. Under VZ the guest is still booting at first, so a refused
        connection is retried (with backoff) until the boot timeout or the VM stopping."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOOT_TIMEOUT
        delay = 0.02
        while True:
            reply, fd = await self._client.request("connect", wants_fd=True, port=AGENT_PORT)
            if reply["ok"]:
                return fd
            code = reply["error"]["code"]
            if code != "ECONNREFUSED" or self.exited.done() or loop.time() + delay > deadline:
                raise self._refused("connect to the guest agent", reply["error"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _call(self, op: str, doing: str, **fields) -> dict:
        timeout = STATE_TIMEOUT if op in ("save_state", "restore_state") else REQUEST_TIMEOUT
        reply, _ = await self._client.request(op, timeout=timeout, **fields)
        if not reply["ok"]:
            raise self._refused(doing, reply["error"])
        return reply

    # ---- errors --------------------------------------------------------------------------

    def _version_error(self, theirs) -> ProtocolError:
        return ProtocolError(
            f"{self.binary} speaks helper protocol version {theirs}, this shuru speaks version "
            f"{hp.VERSION}", hint=f"install the shuru-helper of this shuru release, or {BUILD_HINT}")

    def _refused(self, doing: str, error: dict) -> ShuruError:
        code, message = error["code"], error["message"]
        if code == "EVERSION":
            return self._version_error(error.get("version", "?"))
        if code in ("EENTITLEMENT", "EUNSUPPORTED"):
            return HostError(f"{self.binary} cannot {doing}: {message}",
                             hint="see helper/README.md for signing the helper"
                             if code == "EENTITLEMENT" else None)
        return BootError(f"{self.binary} could not {doing}: {message} [{code}]",
                         console_tail=self.console_tail())

    def _log_suffix(self) -> str:
        text = self._log_tail()
        return f"; its log:\n{text}" if text else " (its log is empty)"

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.rundir / "helper.log").read_text(errors="replace").strip()
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def _exit_status(self) -> str:
        try:
            code = await asyncio.wait_for(self._proc.wait(), EXIT_TIMEOUT)
        except asyncio.TimeoutError:
            return "stopped talking"
        if code < 0:
            return f"was killed by signal {-code}"
        return f"exited with status {code}"

    # ---- events and death ----------------------------------------------------------------

    def _on_event(self, msg: dict) -> None:
        if msg["event"] == "console":
            self._console.append(msg["line"])
            if self._on_console:
                # A failing user callback must not take the protocol engine down with it.
                with contextlib.suppress(Exception):
                    self._on_console((msg["line"] + "\n").encode())
        elif msg["event"] == "state":
            if msg["state"] in ("stopped", "error") and not self._stopping:
                why = msg.get("message") or "the guest powered off"
                self._end(f"the VM stopped ({msg['state']}): {why}")

    async def _watch_helper(self) -> None:
        """The helper going away ends the VM: note why (naming the binary) where the console
        tail will show it, then close the agent channel so every pending call fails now."""
        proc_done = asyncio.ensure_future(self._proc.wait())
        await asyncio.wait({proc_done, self._client.closed}, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping:
            proc_done.cancel()
            return
        status = await self._exit_status()
        log = self._log_tail(5)
        self._console.append(f"[shuru] {self.binary} {status}" + (f"; its log: {log}" if log else ""))
        self._end(f"{self.binary} {status}")

    def _end(self, reason: str) -> None:
        if not self.exited.done():
            self.exited.set_result(reason)
        if self.agent is not None:
            with contextlib.suppress(Exception):
                self.agent[1].close()

    def console_tail(self, lines: int = 40) -> str:
        return neutralise("\n".join(list(self._console)[-lines:]))  # guest text: see sanitize

    # ---- stop ----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the VM, let the helper exit (kill it if it does not), remove the run dir."""
        if self._stopped:
            return
        self._stopped = self._stopping = True
        responsive = self._client is not None and self._client.usable
        if responsive:
            with contextlib.suppress(ShuruError):
                await self._client.request("stop", timeout=STOP_TIMEOUT)
        if self._client is not None:
            self._client.close()  # the helper exits when its control socket closes
        if self.agent is not None:
            with contextlib.suppress(Exception):
                self.agent[1].close()
        if self._proc is not None and self._proc.returncode is None:
            # A helper that is answering exits by itself once its socket closes; one that
            # never connected, stopped answering or broke the protocol is killed at once.
            patience = EXIT_TIMEOUT if responsive else 0
            try:
                await asyncio.wait_for(self._proc.wait(), patience)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                await self._proc.wait()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        if not self.exited.done():
            self.exited.set_result("stopped")
        self.rundir.close()


STATE_FILE = "state.vzsave"  # VZ's saved memory and devices
MACHINE_ID_FILE = "machine_id"  # the template's VZ machine identifier


def _machine_id(state_dir: Path) -> bytes:
    """The machine identity a saved state was made with (VZ restores only into it)."""
    try:
        return (state_dir / MACHINE_ID_FILE).read_bytes()
    except OSError as e:
        raise StaleStateError(f"the saved machine state at {state_dir} has no machine "
                              f"identity: {e.strerror}") from None


# What each helper binary's driver said it can do, keyed by (binary, its mtime, driver): a
# rebuilt helper is asked again.
_probed: dict[tuple[str, float, str], Driver] = {}


class HelperBackend:
    """The Backend for `shuru-helper`; `driver` is chosen by `select.py` ("vz" on macOS,
    "process" for tests elsewhere). What it can do is what the helper's `hello` reply says
    (`probe`): VZ on macOS 14+ on Apple silicon saves machine state; the process driver
    does not, so it always boots cold."""

    name = "helper"
    state_files = ("disk.img", STATE_FILE, MACHINE_ID_FILE)

    def __init__(self, data_dir: Path, driver: str = "vz"):
        self.data_dir = data_dir
        self.driver = driver
        self.disks = RawDisks(f"helper ({driver} driver)")

    def _key(self, binary: Path) -> tuple[str, float, str]:
        try:
            mtime = binary.stat().st_mtime
        except OSError:
            mtime = 0.0
        return (str(binary), mtime, self.driver)

    async def probe(self) -> Capabilities:
        """Ask the helper (once per binary) what its driver can do."""
        binary = find_helper()
        key = self._key(binary)
        if key not in _probed:
            rundir = RunDir.create()
            machine = HelperMachine(binary, rundir, None)
            try:
                await machine.launch(self.driver)
                _probed[key] = await machine.greet()
            finally:
                await machine.stop()
        return _probed[key].capabilities()

    def machine_identity(self, spec: MachineSpec) -> dict:
        """The helper's release and driver, and the host's OS release: VZ loads a state
        only on the kind of host that saved it. Read from `probe`'s answer."""
        driver = _probed.get(self._key(find_helper()))
        return {"helper": driver.helper if driver else "?", "driver": self.driver,
                "host": f"{platform.system()} {platform.release()} {platform.machine()}"}

    async def start(self, spec: MachineSpec, *,
                    on_console: Callable[[bytes], None] | None = None) -> HelperMachine:
        """Boot a VM on its own raw clone of the spec's root disk."""
        return await self._launch(spec, on_console)

    async def start_template(self, spec: MachineSpec, workdir: Path, *,
                             on_console: Callable[[bytes], None] | None = None) -> HelperMachine:
        """Boot a VM whose disk is `workdir`/disk.img, to be saved with `save_state`."""
        (await self.probe()).require(FAST_START)
        return await self._launch(spec, on_console, layer=workdir / "disk.img")

    async def restore(self, spec: MachineSpec, state_dir: Path, *, cmdline: str,
                      on_console: Callable[[bytes], None] | None = None) -> HelperMachine:
        """A clone of the saved template: a raw clone of its disk, restored with its machine
        identity, resumed; its agent waits for `resume`."""
        (await self.probe()).require(FAST_START)
        return await self._launch(spec, on_console, restore=state_dir, cmdline=cmdline,
                                  base=(state_dir / "disk.img", RawDisks.format, spec.disk_size))

    async def _launch(self, spec: MachineSpec, on_console, *, layer: Path | None = None,
                      restore: Path | None = None, cmdline: str | None = None,
                      base: tuple[Path, str, int] | None = None) -> HelperMachine:
        binary = find_helper()
        spec.check_files()
        # Refused before a helper runs: a checkpoint in another backend's format.
        self.disks.check_base(*(base or (spec.rootfs, spec.rootfs_format))[:2])
        # The VM's disk grows with what the guest writes: it goes under the data dir.
        rundir = RunDir.create(disk_root=disk_root(self.data_dir) if self.driver == "vz" else None)
        machine = HelperMachine(binary, rundir, on_console)
        try:
            await machine.launch(self.driver)
            await machine.boot(spec, base=base, layer=layer, restore=restore, cmdline=cmdline)
            _probed[self._key(binary)] = machine.driver
        except SandboxDiedError as e:
            await machine.stop()
            raise BootError(f"the VM did not start: {e}", console_tail=machine.console_tail()) from e
        except BaseException:
            await machine.stop()
            raise
        return machine
