"""The Linux backend: one QEMU process per sandbox, direct kernel boot, microvm.

Owns the QEMU command line (`build_argv`, `kernel_cmdline`: pure), the per-run qcow2 overlay
over the read-only base disk, the process's life, and QEMU's half of fast start: a template
VM whose RAM lives in a file (`share=on`) is saved with `x-ignore-shared` (only device state
goes to the state file; the RAM file is the memory), and a clone maps that file privately
(`share=off`: pages are shared between clones until written) and loads the device state
with `-incoming defer`. QEMU connects to three Unix sockets we
listen on (agent channel, QMP, serial console), so there is nothing to poll for.

The agent channel is a virtio-serial port, or with `SHURU_QEMU_CHANNEL=vsock` (where
/dev/vhost-vsock is usable) a `vhost-vsock` device with a random guest CID, the agent
listening on `AGENT_VSOCK_PORT`. Only that path
polls: the host connects until the guest's agent listens (`_VsockRelay`). QEMU runs in
its own session with PDEATHSIG=SIGKILL: it dies with its owner even when the owner is killed
with SIGKILL, and a terminal's Ctrl-C never reaches it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import shlex
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import accel as accel_mod
from ...errors import BootError, HostError
from .qmp import QMP
from ..rundir import RunDir, die_with_parent, disk_root
from ...sanitize import neutralise
from ..base import Capabilities, MachineSpec
from .disks import Qcow2Disks

AGENT_PORT = "org.shuru.agent"
# Measured under TCG (see QEMU-NOTES): each of these shaves boot time; tsc_early_khz is what
# keeps microvm from hanging in timer calibration, so it is added whenever we know the rate.
FAST_FLAGS = (
    "no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on "
    "cryptomgr.notests rcupdate.rcu_expedited=1 mitigations=off tsc=reliable panic=-1"
)
CONNECT_TIMEOUT = 30.0
# The port the agent listens on in vsock mode (the same as under VZ, see backends.helper).
AGENT_VSOCK_PORT = 1024
CHANNELS = ("virtio-serial", "vsock")
# How often the host retries connecting to a vsock agent that does not listen yet (boot).
VSOCK_RETRY = 0.05
MIGRATION_TIMEOUT = 120.0


@dataclass(frozen=True)
class RunPaths:
    overlay: Path
    agent_sock: Path
    qmp_sock: Path
    console_sock: Path

    @classmethod
    def inside(cls, root: Path, overlay: Path | None = None) -> "RunPaths":
        return cls(overlay or root / "disk.qcow2", root / "agent.sock", root / "qmp.sock",
                   root / "console.sock")


@dataclass(frozen=True)
class RamFile:
    """Guest RAM backed by a file: `shared` for a template (its writes land in the file,
    which becomes the saved memory), private for a clone (copy-on-write over the file)."""

    path: Path
    shared: bool


def host_tsc_khz(cpuinfo: str) -> int | None:
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            try:
                return int(float(line.split(":", 1)[1]) * 1000)
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class Board:
    """What differs between guest architectures on the QEMU command line."""

    machine: str  # -M
    console: str  # the kernel's name for the serial port QEMU's -serial drives
    fast_flags: str  # kernel arguments that shave boot time on this board


# x86: microvm (virtio-mmio, no PCI, no firmware). arm64: `virt` (the board Debian's arm64
# kernel runs on under QEMU), with the same virtio-mmio devices (virt has 32 transports) and a
# PL011 UART as ttyAMA0.
BOARDS = {
    "amd64": Board("microvm", "ttyS0", FAST_FLAGS),
    "arm64": Board("virt", "ttyAMA0",
                   "cryptomgr.notests rcupdate.rcu_expedited=1 mitigations=off panic=-1"),
}


def board(arch: str | None) -> Board:
    """The board for a guest architecture (Debian's name; None: the host's)."""
    from ...image.store import host_arch

    return BOARDS[arch or host_arch()]


def kernel_cmdline(*, verbose: bool, tsc_khz: int | None, arch: str | None = None,
                   channel: str = "virtio-serial") -> str:
    b = board(arch)
    parts = [f"console={b.console}", "root=/dev/vda", "rw", "rootfstype=ext4"]
    if not verbose:
        parts.append("quiet")
    parts.append(b.fast_flags)
    if tsc_khz and b.machine == "microvm":
        parts.append(f"tsc_early_khz={tsc_khz}")
    if channel == "vsock":
        parts.append(f"shuru.agent=vsock:{AGENT_VSOCK_PORT}")
    return " ".join(parts)


def cmdline_channel(cmdline: str) -> str:
    """The agent channel a kernel command line sets up (a saved state keeps its own)."""
    return "vsock" if "shuru.agent=vsock:" in cmdline else "virtio-serial"


def choose_channel(environ=os.environ) -> str:
    """virtio-serial unless SHURU_QEMU_CHANNEL=vsock asks for vsock (the kernel relays it, no
    QEMU chardev in the path). vsock stays opt-in until the KVM tier has passed on a real
    host: many hosts have /dev/vhost-vsock without ever having run this path."""
    forced = environ.get("SHURU_QEMU_CHANNEL", "")
    if not forced:
        return "virtio-serial"
    if forced not in CHANNELS:
        raise HostError(f"SHURU_QEMU_CHANNEL={forced!r}: expected one of {', '.join(CHANNELS)}")
    if forced == "vsock" and not os.access("/dev/vhost-vsock", os.R_OK | os.W_OK):
        raise HostError("SHURU_QEMU_CHANNEL=vsock: /dev/vhost-vsock is missing or not "
                        "readable and writable", hint="modprobe vhost_vsock")
    return forced


def new_guest_cid() -> int:
    """A guest CID for vhost-vsock: unique among this host's VMs, so random over the range
    (0-2 are reserved, 2**32-1 is VMADDR_CID_ANY); a collision fails QEMU's start, which
    `_launch` retries with another."""
    return 3 + secrets.randbelow(2**31)


def build_argv(qemu: str, spec: MachineSpec, accel: accel_mod.Accel, paths: RunPaths,
               cmdline: str, name: str = "shuru", *, ram: RamFile | None = None,
               incoming: bool = False, guest_cid: int | None = None) -> list[str]:
    """The full QEMU command line for one sandbox (a template with `ram` shared, a clone
    with `ram` private and `incoming`); `guest_cid` puts the agent on vsock."""
    model = board(spec.arch).machine
    machine = model if ram is None else f"{model},memory-backend=ram"
    argv = [
        qemu, "-name", name, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-M", machine, "-accel", accel.qemu_arg, "-cpu", accel.cpu,
        "-smp", str(spec.cpus), "-m", f"{spec.memory}M",
        "-kernel", str(spec.kernel),
    ]
    if ram is not None:
        argv += ["-object", f"memory-backend-file,id=ram,size={spec.memory}M,"
                            f"mem-path={ram.path},share={'on' if ram.shared else 'off'}"]
    if spec.initrd:
        argv += ["-initrd", str(spec.initrd)]
    argv += [
        "-append", cmdline,
        "-drive", f"id=root,file={paths.overlay},format=qcow2,if=none,cache=unsafe,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-rng-device",
    ]
    if guest_cid is None:
        argv += [
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,path={paths.agent_sock}",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
        ]
    else:
        argv += ["-device", f"vhost-vsock-device,guest-cid={guest_cid}"]
    argv += [
        "-chardev", f"socket,id=con,path={paths.console_sock}",
        "-serial", "chardev:con",
        "-chardev", f"socket,id=qmp,path={paths.qmp_sock}",
        "-mon", "chardev=qmp,mode=control",
    ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def find_qemu(arch: str | None = None) -> str:
    arch = arch or os.uname().machine
    name = {"x86_64": "qemu-system-x86_64", "amd64": "qemu-system-x86_64",
            "aarch64": "qemu-system-aarch64", "arm64": "qemu-system-aarch64"}.get(arch, f"qemu-system-{arch}")
    path = os.environ.get("SHURU_QEMU") or shutil.which(name)
    if not path:
        raise HostError(f"{name} is not installed",
                        hint=f"install it with: apt-get install "
                             f"{'qemu-system-arm' if 'aarch64' in name else 'qemu-system-x86'} "
                             f"qemu-utils")
    return path


@functools.lru_cache(maxsize=8)
def _version_of(path: str, _mtime: float) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"


def qemu_version(qemu: str) -> str:
    """QEMU's own version line (a saved machine state only loads into the QEMU that made
    it); cached per binary and its mtime, so an upgrade is noticed."""
    try:
        return _version_of(qemu, os.stat(qemu).st_mtime)
    except (OSError, subprocess.SubprocessError) as e:
        raise HostError(f"cannot run {qemu} --version: {e}") from None


class _Listener:
    """A Unix socket that QEMU connects to once; `accepted` resolves to (reader, writer)."""

    def __init__(self):
        self.accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, path: Path) -> None:
        async def on_connect(reader, writer):
            if self.accepted.done():
                writer.close()  # only QEMU, once
            else:
                self.accepted.set_result((reader, writer))

        self.server = await asyncio.start_unix_server(on_connect, path=str(path), limit=1 << 20)

    def close(self) -> None:
        if self.server:
            self.server.close()


class _VsockRelay:
    """The host's end of a vsock agent channel as asyncio streams, ready before the guest is:
    one end of a socketpair goes to the Channel, the other is spliced to the guest's port
    once its agent listens. Until the guest has sent a byte, a connection that ends is
    retried and what the host sent is replayed: a restored clone's kernel resets the
    connections it inherited (vsock's transport reset), and one made just before that reset
    only looks like an agent that went away."""

    def __init__(self, cid: int, port: int):
        self.cid, self.port = cid, port
        self._task: asyncio.Task | None = None
        self._socks: list[socket.socket] = []

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ours, theirs = socket.socketpair()
        self._socks += [ours, theirs]
        theirs.setblocking(False)
        streams = await asyncio.open_unix_connection(sock=ours, limit=1 << 20)
        self._task = asyncio.create_task(self._run(theirs))
        return streams

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (self.cid, self.port))
                return sock
            except OSError:  # reset: nobody listens yet; timed out: no guest driver yet
                sock.close()
            await asyncio.sleep(VSOCK_RETRY)

    async def _run(self, host: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._replay: bytearray | None = bytearray()  # host bytes sent before the guest's first
        guest = to_guest = None
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                guest = await self._connect()
                try:
                    await loop.sock_sendall(guest, bytes(self._replay))
                    to_guest = asyncio.create_task(self._host_to_guest(host, guest))
                    first = await loop.sock_recv(guest, 1 << 18)
                except OSError:
                    first = b""
                if first:
                    self._replay = None
                    await loop.sock_sendall(host, first)
                    break
                if to_guest:
                    to_guest.cancel()
                    with contextlib.suppress(BaseException):
                        await to_guest
                guest.close()
            while data := await loop.sock_recv(guest, 1 << 18):
                await loop.sock_sendall(host, data)
        if to_guest:
            to_guest.cancel()
        with contextlib.suppress(OSError):
            host.shutdown(socket.SHUT_RDWR)  # the Channel sees the guest's end
        if guest is not None:
            guest.close()

    async def _host_to_guest(self, host: socket.socket, guest: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while data := await loop.sock_recv(host, 1 << 18):
                if self._replay is not None:
                    self._replay += data
                await loop.sock_sendall(guest, data)
            guest.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        for sock in self._socks:
            sock.close()


# How much of the console is kept for error messages: a panic and its trace fit easily.
CONSOLE_KEEP = 64 * 1024

class ConsoleBuffer:
    """The last `CONSOLE_KEEP` bytes of a console, however they arrived: a serial port
    under emulation often arrives a byte or a few at a time, so a count of chunks would
    keep too few lines to show why a VM died."""

    def __init__(self, keep: int = CONSOLE_KEEP):
        self.keep = keep
        self._data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self.keep:  # trim in batches, not on every byte
            del self._data[:-self.keep]

    def bytes(self) -> bytes:
        return bytes(self._data[-self.keep:])


class QemuMachine:
    """`Machine` for QEMU (see backends/base.py for the contract)."""

    def __init__(self, rundir: RunDir, proc: asyncio.subprocess.Process, qmp: QMP,
                 agent, console_reader: asyncio.StreamReader, accel: accel_mod.Accel,
                 on_console: Callable[[bytes], None] | None, listeners: list[_Listener],
                 *, disk: Path, backing: tuple[Path, str], cmdline: str,
                 capabilities: Capabilities, relay: _VsockRelay | None = None):
        self.rundir = rundir
        self.layer = disk  # the VM's own overlay (in the run's disk dir unless a template's)
        self.backing = backing  # (path, format) the overlay stands on
        self.cmdline = cmdline
        self.capabilities = capabilities
        self.restored_from: Path | None = None  # the state dir, for a restored clone
        self.proc = proc
        self.qmp = qmp
        self.agent = agent
        self.accel_info = accel
        self._listeners = listeners
        self._relay = relay  # the vsock channel's, when the agent is on vsock
        self.channel = "vsock" if relay else "virtio-serial"
        self._console = ConsoleBuffer()  # the console's last bytes, for error messages
        self._on_console = on_console
        self._console_task = asyncio.create_task(self._pump_console(console_reader))
        self.exited = asyncio.ensure_future(proc.wait())
        self._stopped = False

    @property
    def accel(self) -> str:
        """"kvm" or "tcg"."""
        return self.accel_info.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    async def pause(self) -> None:
        await self.qmp.execute("stop")

    async def resume(self) -> None:
        await self.qmp.execute("cont")

    async def _pump_console(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                self._console.feed(chunk)
                if self._on_console:
                    self._on_console(chunk)

    async def console_drained(self, timeout: float = 2.0) -> None:
        """Wait (briefly) until the console has delivered everything QEMU wrote before it
        exited, so an error's console tail holds the last words."""
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(self._console_task), timeout)

    def console_tail(self, lines: int = 40) -> str:
        """The console's last `lines` lines; if the kernel panicked before them, from the
        panic line on (at most 100 lines), since that line says why the VM died. Control
        sequences are neutralised: it is guest text bound for a terminal."""
        text = neutralise(self._console.bytes().decode("utf-8", "backslashreplace"))
        all_lines = text.rstrip("\n").splitlines()
        start = max(0, len(all_lines) - lines)
        panic = next((i for i in range(len(all_lines) - 1, -1, -1)
                      if "Kernel panic" in all_lines[i]), None)
        if panic is not None and panic < start:
            start = max(panic, len(all_lines) - 100)
        return "\n".join(all_lines[start:])

    def qemu_errors(self) -> str:
        try:
            return (self.rundir / "qemu.log").read_text(errors="replace").strip()
        except OSError:
            return ""

    async def _migrate(self, start: Callable, what: str) -> None:
        """Run one migration (save or load) to its end over QMP, or raise BootError."""
        await self.qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": True},
            {"capability": "events", "state": True}]})
        finished = self.qmp.event_waiter(
            "MIGRATION", lambda d: d.get("status") in ("completed", "failed", "cancelled"))
        await start()
        done, _ = await asyncio.wait({finished, self.exited}, timeout=MIGRATION_TIMEOUT,
                                     return_when=asyncio.FIRST_COMPLETED)
        if finished not in done:
            finished.cancel()
            state = "QEMU exited" if self.exited in done else f"no end in {MIGRATION_TIMEOUT:.0f} s"
            raise BootError(f"{what} failed: {state}; {self.qemu_errors() or 'no output'}")
        status = finished.result().get("status")
        if status != "completed":
            info = await self.qmp.execute("query-migrate")
            detail = info.get("error-desc", status) if isinstance(info, dict) else status
            raise BootError(f"{what} failed: {detail}; {self.qemu_errors() or 'no output'}")

    async def save_state(self, workdir: Path) -> None:
        """Pause the VM for good and write its device state to `workdir`/state.bin; the RAM
        stays in the shared RAM file and the disk in the overlay there. The VM must never run
        again (its RAM file is now the saved memory), so QEMU is ended right after."""
        state = workdir / "state.bin"
        await self.qmp.execute("stop")
        uri = f"exec:cat > {shlex.quote(str(state))}"
        await self._migrate(lambda: self.qmp.execute("migrate", {"uri": uri}),
                            "saving the machine state")
        await self.stop()

    async def load_state(self, state: Path) -> None:
        """Load the device state into a VM started with `-incoming defer`, then run it."""
        await self._migrate(lambda: self.qmp.execute(
            "migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state))}"}),
            "restoring the machine state")
        await self.qmp.execute("cont")

    async def stop(self) -> None:
        """Kill QEMU and remove the run directories (the run's own overlay goes with them)."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            await self.exited
        await self.qmp.close()
        with contextlib.suppress(Exception):
            self.agent[1].close()
        self._console_task.cancel()
        with contextlib.suppress(BaseException):
            await self._console_task
        for listener in self._listeners:
            listener.close()
        if self._relay:
            self._relay.close()
        self.rundir.close()


class QemuBackend:
    """`Backend` for QEMU: every capability, qcow2 layers."""

    name = "qemu"
    disks = Qcow2Disks()
    state_files = ("disk.qcow2", "ram", "state.bin")
    capabilities = Capabilities(backend="qemu", checkpoint=True, fast_start=True, pause=True)

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    async def probe(self) -> Capabilities:
        return self.capabilities

    def machine_identity(self, spec: MachineSpec) -> dict:
        """What a saved machine state depends on besides the disk layer and the spec's
        sizes: this QEMU and the accelerator it runs on."""
        qemu = find_qemu(spec.arch)
        accel = self._accel(spec)
        return {"qemu": qemu_version(qemu), "accel": accel.name, "cpu": accel.cpu,
                "accel_arg": accel.qemu_arg, "machine": board(spec.arch).machine,
                "channel": choose_channel()}

    def _accel(self, spec: MachineSpec) -> accel_mod.Accel:
        from ...image.store import host_arch

        if spec.arch and spec.arch != host_arch():
            return accel_mod.foreign(spec.arch, host_arch(), spec.accel)
        return accel_mod.choose(spec.accel, find_qemu(), self.data_dir / "cache" / "accel.json")

    def cmdline(self, spec: MachineSpec) -> str:
        tsc = None
        if self._accel(spec).name == "tcg":
            with contextlib.suppress(OSError):
                tsc = host_tsc_khz(Path("/proc/cpuinfo").read_text())
        return kernel_cmdline(verbose=spec.verbose_console, tsc_khz=tsc, arch=spec.arch,
                              channel=choose_channel())

    async def start(self, spec: MachineSpec, *,
                    on_console: Callable[[bytes], None] | None = None) -> QemuMachine:
        """Boot a fresh VM on its own overlay over the spec's root disk."""
        return await self._launch(spec, on_console, cmdline=self.cmdline(spec))

    async def start_template(self, spec: MachineSpec, workdir: Path, *,
                             on_console: Callable[[bytes], None] | None = None) -> QemuMachine:
        """Boot a VM whose disk overlay and RAM are files in `workdir`, to be saved with
        `QemuMachine.save_state` (the files then belong to the saved state)."""
        return await self._launch(spec, on_console, cmdline=self.cmdline(spec),
                                  overlay=workdir / "disk.qcow2",
                                  ram=RamFile(workdir / "ram", shared=True))

    async def restore(self, spec: MachineSpec, state_dir: Path, *, cmdline: str,
                      on_console: Callable[[bytes], None] | None = None) -> QemuMachine:
        """Start a clone of a saved template: its own overlay over the template's disk,
        the template's RAM file mapped privately, the device state loaded from state.bin.
        Returns a running VM whose agent waits for `resume`."""
        machine = await self._launch(spec, on_console, cmdline=cmdline,
                                     base=(state_dir / "disk.qcow2", "qcow2", spec.disk_size),
                                     ram=RamFile(state_dir / "ram", shared=False),
                                     incoming=True)
        try:
            await machine.load_state(state_dir / "state.bin")
            machine.restored_from = state_dir
        except BaseException:
            await machine.stop()
            raise
        return machine

    async def _launch(self, spec: MachineSpec, on_console, *, cmdline: str,
                      overlay: Path | None = None, base: tuple[Path, str, int] | None = None,
                      ram: RamFile | None = None, incoming: bool = False) -> QemuMachine:
        qemu = find_qemu(spec.arch)
        spec.check_files()
        accel = self._accel(spec)
        base_path, base_format, base_size_mb = base or (spec.rootfs, spec.rootfs_format,
                                                       spec.rootfs_size_mb)
        self.disks.check_base(base_path, base_format)
        # The overlay grows with what the guest writes, so it goes on disk, not in the
        # runtime dir (usually a tmpfs: RAM). A template's overlay is given (its state dir).
        rundir = RunDir.create(disk_root=None if overlay else disk_root(self.data_dir))
        listeners: list[_Listener] = []
        proc = relay = None
        # The channel is the command line's: a restored clone keeps its template's.
        vsock = cmdline_channel(cmdline) == "vsock"
        try:
            paths = RunPaths.inside(rundir.path, overlay or rundir.disk_dir / "disk.qcow2")
            await self.disks.create_layer(base_path, base_format, paths.overlay,
                                          size_mb=spec.disk_size, base_size_mb=base_size_mb)
            socks: tuple[Path, ...] = (paths.qmp_sock, paths.console_sock)
            if not vsock:
                socks = (paths.agent_sock, *socks)
            for attempt in range(3):
                for listener in listeners:  # a failed attempt's QEMU may have connected
                    listener.close()
                listeners = [_Listener() for _ in socks]
                for listener, path in zip(listeners, socks):
                    await listener.listen(path)
                cid = new_guest_cid() if vsock else None
                argv = build_argv(qemu, spec, accel, paths, cmdline,
                                  name=f"shuru-{rundir.path.name}", ram=ram, incoming=incoming,
                                  guest_cid=cid)
                with open(rundir / "qemu.log", "wb") as log:
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
                    )
                connected = asyncio.gather(*(l.accepted for l in listeners))
                exited = asyncio.ensure_future(proc.wait())
                done, _ = await asyncio.wait({connected, exited}, timeout=CONNECT_TIMEOUT,
                                             return_when=asyncio.FIRST_COMPLETED)
                if connected in done:
                    break
                connected.cancel()
                log_text = (rundir / "qemu.log").read_text(errors="replace").strip()
                # Another VM on this host holds the random CID: draw again.
                if vsock and exited in done and "guest cid" in log_text.lower() and attempt < 2:
                    continue
                raise BootError(f"QEMU did not start: {log_text or 'no output'}",
                                hint=f"command: {' '.join(argv)}")
            exited.cancel()
            *agent, (qmp_r, qmp_w), (con_r, con_w) = connected.result()
            assert proc is not None  # the loop either broke with a started QEMU or raised
            if vsock:
                assert cid is not None
                relay = _VsockRelay(cid, AGENT_VSOCK_PORT)
                agent = [await relay.open()]
            qmp = QMP(qmp_r, qmp_w)
            await qmp.start()
            return QemuMachine(rundir, proc, qmp, agent[0], con_r, accel, on_console, listeners,
                               disk=paths.overlay, backing=(base_path, base_format),
                               cmdline=cmdline, capabilities=self.capabilities,
                               relay=relay)
        except BaseException:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            for listener in listeners:
                listener.close()
            if relay:
                relay.close()
            rundir.close()
            raise
