"""PID 1 duties inside the VM: prepare the machine synchronously, then serve the channel.

Order matters and is kept deliberately short, since every fork+exec costs ~60 ms under TCG:
mount the API filesystems, set the hostname, bring up loopback, grow the root filesystem to
the disk's size (the only exec, and only when the disk is larger), find the agent's
virtio-serial port, serve it, and power off when the host asks for shutdown. Orphans are
reaped by the agent's loop (it waits on any child).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import time

PORT_NAME = "org.shuru.agent"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8

MOUNTS = [
    # (target, fstype, flags, options)
    ("/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"),
    ("/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    ("/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"),
    ("/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
]


def log(*parts) -> None:
    print("shuru-init:", *parts, file=sys.stderr, flush=True)


def mount_all() -> None:
    for target, fstype, flags, options in MOUNTS:
        if os.path.ismount(target):
            continue
        os.makedirs(target, exist_ok=True)
        rc = _libc.mount(fstype.encode(), target.encode(), fstype.encode(), flags,
                         options.encode() or None)
        if rc != 0:
            log(f"mount {fstype} on {target} failed: {os.strerror(ctypes.get_errno())}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        try:
            os.symlink(target, f"/dev/{name}")
        except FileExistsError:
            pass


def set_hostname(name: str = "shuru") -> None:
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write(name)


def loopback_up() -> None:
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def cmdline_arg(name: str, default: str | None = None) -> str | None:
    with open("/proc/cmdline") as f:
        for arg in f.read().split():
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return default


def root_device() -> str:
    root = cmdline_arg("root", "/dev/vda")
    return root if root.startswith("/dev/") else "/dev/vda"


def grow_root(device: str) -> None:
    """Grow ext4 online to the block device's size: the image ships small, and the per-run
    overlay's virtual size is what the user asked for with --disk-size."""
    name = os.path.basename(device)
    try:
        with open(f"/sys/class/block/{name}/size") as f:
            dev_bytes = int(f.read()) * 512
    except OSError:
        return
    st = os.statvfs("/")
    fs_bytes = st.f_blocks * st.f_frsize
    if dev_bytes <= fs_bytes + 64 * 1024 * 1024:
        return
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, 1)
            os.execv("/sbin/resize2fs", ["resize2fs", device])
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        log(f"resize2fs {device} failed with status {os.waitstatus_to_exitcode(status)}")


def find_port(timeout: float = 10.0) -> str:
    """The agent's virtio-serial port. Its /dev name depends on probe order, and there is no
    udev for /dev/virtio-ports/NAME links, so match the name sysfs gives each port."""
    deadline = time.monotonic() + timeout
    while True:
        base = "/sys/class/virtio-ports"
        try:
            entries = os.listdir(base)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            try:
                with open(f"{base}/{entry}/name") as f:
                    if f.read().strip() == PORT_NAME:
                        return f"/dev/{entry}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"no virtio-serial port named {PORT_NAME}")
        time.sleep(0.02)  # device probing is asynchronous; this is boot-time polling only


def serve_vsock(port: int) -> None:
    """Where there is no virtio-serial port (Virtualization.framework; QEMU where the host
    has vhost-vsock) the host reaches the agent over vsock. One agent serves one host
    connection at a time, across connections as across a port's reopenings: a new one after
    the host went away, and after a restore (the kernel resets the connections a saved
    machine had)."""
    from . import wire
    from .agent import Agent

    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/usr/sbin/modprobe", ["modprobe", "vmw_vsock_virtio_transport"])
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    listener.bind((socket.VMADDR_CID_ANY, port))
    listener.listen(1)

    class VsockAgent(Agent):
        parked = False  # saved after `park`: the next host is a clone's, which sends `resume`

        def greet(self) -> None:
            self.forget_fd(self.fd)
            os.close(self.fd)
            conn, _ = listener.accept()
            self.fd = conn.detach()
            os.set_blocking(self.fd, False)
            os.set_inheritable(self.fd, False)
            if self.parked:  # the clone's host speaks first; `resume` answers with hello
                self.connected = True
                self.decoder = wire.FrameDecoder()
            else:
                super().greet()

        def park(self, *args, **kwargs) -> None:
            super().park(*args, **kwargs)
            self.parked = True

        def resume(self, *args, **kwargs) -> None:
            self.parked = False
            super().resume(*args, **kwargs)

        def read_channel(self) -> None:
            try:
                super().read_channel()
            except ConnectionResetError:  # what a restore's transport reset looks like
                self.on_disconnect()

    agent = VsockAgent(os.open("/dev/null", os.O_RDONLY), reconnectable=True)
    agent.serve()


def power_off() -> None:
    os.sync()
    try:
        with open("/proc/sysrq-trigger", "w") as f:
            f.write("o")
    except OSError:
        pass
    # If the trigger is unavailable, leaving PID 1 panics the kernel; with panic=-1 and
    # QEMU's -no-reboot that also ends the VM.
    os._exit(0)


def main() -> int:
    from .agent import Agent

    mount_all()
    set_hostname()
    try:
        loopback_up()
    except OSError as e:
        log(f"loopback: {e}")
    os.chdir("/root" if os.path.isdir("/root") else "/")
    grow_root(root_device())
    channel = cmdline_arg("shuru.agent", "virtio-serial")
    try:
        if channel.startswith("vsock:"):
            serve_vsock(int(channel.split(":", 1)[1]))
        else:
            fd = os.open(find_port(), os.O_RDWR | os.O_NOCTTY)
            Agent(fd, reconnectable=True).serve()
    finally:
        power_off()
    return 0
