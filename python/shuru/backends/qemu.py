"""The Linux backend: one QEMU process per sandbox, direct kernel boot, microvm.

Owns the QEMU command line (`build_argv`, `kernel_cmdline`: pure), the per-run qcow2 overlay
over the read-only base disk, and the process's life. QEMU connects to three Unix sockets we
listen on (agent channel, QMP, serial console), so there is nothing to poll for. QEMU runs in
its own session with PDEATHSIG=SIGKILL: it dies with its owner even when the owner is killed
with SIGKILL, and a terminal's Ctrl-C never reaches it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import accel as accel_mod
from ..errors import BootError, HostError
from ..qmp import QMP
from ..runtime import RunDir, die_with_parent
from .base import Capabilities, MachineSpec

AGENT_PORT = "org.shuru.agent"
# Measured under TCG (see QEMU-NOTES): each of these shaves boot time; tsc_early_khz is what
# keeps microvm from hanging in timer calibration, so it is added whenever we know the rate.
FAST_FLAGS = (
    "no_timer_check i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on "
    "cryptomgr.notests rcupdate.rcu_expedited=1 mitigations=off tsc=reliable panic=-1"
)
CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class RunPaths:
    overlay: Path
    agent_sock: Path
    qmp_sock: Path
    console_sock: Path

    @classmethod
    def inside(cls, root: Path) -> "RunPaths":
        return cls(root / "disk.qcow2", root / "agent.sock", root / "qmp.sock",
                   root / "console.sock")


def host_tsc_khz(cpuinfo: str) -> int | None:
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            try:
                return int(float(line.split(":", 1)[1]) * 1000)
            except ValueError:
                return None
    return None


def kernel_cmdline(*, verbose: bool, tsc_khz: int | None) -> str:
    parts = ["console=ttyS0", "root=/dev/vda", "rw", "rootfstype=ext4"]
    if not verbose:
        parts.append("quiet")
    parts.append(FAST_FLAGS)
    if tsc_khz:
        parts.append(f"tsc_early_khz={tsc_khz}")
    return " ".join(parts)


def build_argv(qemu: str, spec: MachineSpec, accel: accel_mod.Accel, paths: RunPaths,
               cmdline: str, name: str = "shuru") -> list[str]:
    """The full QEMU command line for one sandbox."""
    argv = [
        qemu, "-name", name, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-M", "microvm", "-accel", accel.qemu_arg, "-cpu", accel.cpu,
        "-smp", str(spec.cpus), "-m", f"{spec.memory}M",
        "-kernel", str(spec.kernel),
    ]
    if spec.initrd:
        argv += ["-initrd", str(spec.initrd)]
    argv += [
        "-append", cmdline,
        "-drive", f"id=root,file={paths.overlay},format=qcow2,if=none,cache=unsafe,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-rng-device",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,path={paths.agent_sock}",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
        "-chardev", f"socket,id=con,path={paths.console_sock}",
        "-serial", "chardev:con",
        "-chardev", f"socket,id=qmp,path={paths.qmp_sock}",
        "-mon", "chardev=qmp,mode=control",
    ]
    return argv


def find_qemu(arch: str | None = None) -> str:
    arch = arch or os.uname().machine
    name = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64",
            "arm64": "qemu-system-aarch64"}.get(arch, f"qemu-system-{arch}")
    path = os.environ.get("SHURU_QEMU") or shutil.which(name)
    if not path:
        raise HostError(f"{name} is not installed",
                        hint="install it with: apt-get install qemu-system-x86 qemu-utils")
    return path


def find_qemu_img() -> str:
    path = shutil.which("qemu-img")
    if not path:
        raise HostError("qemu-img is not installed", hint="install it with: apt-get install qemu-utils")
    return path


async def create_overlay(base: Path, overlay: Path, size_mb: int, *, base_format: str = "raw",
                         base_size_mb: int = 0) -> None:
    base_size = max(base.stat().st_size if base_format == "raw" else 0,
                    base_size_mb * 1024 * 1024)
    if size_mb * 1024 * 1024 < base_size:
        raise BootError(f"disk_size {size_mb} MiB is smaller than the disk it starts from "
                        f"({-(-base_size // (1024 * 1024))} MiB)")
    proc = await asyncio.create_subprocess_exec(
        find_qemu_img(), "create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base),
        str(overlay), f"{size_mb}M",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise HostError(f"qemu-img could not create {overlay}: {err.decode(errors='replace').strip()}")


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


class QemuMachine:
    def __init__(self, rundir: RunDir, proc: asyncio.subprocess.Process, qmp: QMP,
                 agent, console_reader: asyncio.StreamReader, accel: accel_mod.Accel,
                 on_console: Callable[[bytes], None] | None, listeners: list[_Listener]):
        self.rundir = rundir
        self.proc = proc
        self.qmp = qmp
        self.agent = agent
        self.accel = accel
        self._listeners = listeners
        self._console = deque(maxlen=256)  # recent console chunks, for error messages
        self._on_console = on_console
        self._console_task = asyncio.create_task(self._pump_console(console_reader))
        self.exited = asyncio.ensure_future(proc.wait())
        self._stopped = False

    async def _pump_console(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await reader.read(65536):
                self._console.append(chunk)
                if self._on_console:
                    self._on_console(chunk)

    def console_tail(self, lines: int = 40) -> str:
        text = b"".join(self._console).decode("utf-8", "replace").replace("\r\n", "\n")
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])

    def qemu_errors(self) -> str:
        try:
            return (self.rundir / "qemu.log").read_text(errors="replace").strip()
        except OSError:
            return ""

    @property
    def disk(self) -> Path:
        """The sandbox's own disk overlay (valid until `stop`)."""
        return self.rundir / "disk.qcow2"

    async def stop(self) -> None:
        """Kill QEMU and remove the run directory (the overlay goes with it)."""
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
        self.rundir.close()


class QemuBackend:
    capabilities = Capabilities(name="qemu", snapshot_memory=True, channel="virtio-serial")

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    async def start(self, spec: MachineSpec, *,
                    on_console: Callable[[bytes], None] | None = None) -> QemuMachine:
        qemu = find_qemu()
        spec.check_files()
        accel = accel_mod.choose(spec.accel, qemu, self.data_dir / "cache" / "accel.json")
        tsc = None
        if accel.name == "tcg":
            with contextlib.suppress(OSError):
                tsc = host_tsc_khz(Path("/proc/cpuinfo").read_text())
        rundir = RunDir.create()
        listeners: list[_Listener] = []
        proc = None
        try:
            paths = RunPaths.inside(rundir.path)
            await create_overlay(spec.rootfs, paths.overlay, spec.disk_size,
                                 base_format=spec.rootfs_format,
                                 base_size_mb=spec.rootfs_size_mb)
            listeners = [_Listener() for _ in range(3)]
            for listener, path in zip(listeners, (paths.agent_sock, paths.qmp_sock,
                                                  paths.console_sock)):
                await listener.listen(path)
            argv = build_argv(qemu, spec, accel, paths,
                              kernel_cmdline(verbose=spec.verbose_console, tsc_khz=tsc),
                              name=f"shuru-{rundir.path.name}")
            with open(rundir / "qemu.log", "wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
                )
            connected = asyncio.gather(*(l.accepted for l in listeners))
            exited = asyncio.ensure_future(proc.wait())
            done, _ = await asyncio.wait({connected, exited}, timeout=CONNECT_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            if connected not in done:
                connected.cancel()
                log_text = (rundir / "qemu.log").read_text(errors="replace").strip()
                raise BootError(f"QEMU did not start: {log_text or 'no output'}",
                                hint=f"command: {' '.join(argv)}")
            exited.cancel()
            (agent, (qmp_r, qmp_w), (con_r, con_w)) = connected.result()
            qmp = QMP(qmp_r, qmp_w)
            await qmp.start()
            return QemuMachine(rundir, proc, qmp, agent, con_r, accel, on_console, listeners)
        except BaseException:
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
            for listener in listeners:
                listener.close()
            rundir.close()
            raise
