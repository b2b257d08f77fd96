"""The QEMU command line and kernel command line, built without starting anything."""

from pathlib import Path

from shuru.backends.qemu.accel import Accel
from shuru.backends.base import MachineSpec
import pytest

from shuru.backends.qemu.machine import (AGENT_VSOCK_PORT, RunPaths, build_argv, choose_channel,
                                         cmdline_channel, host_tsc_khz, kernel_cmdline,
                                         new_guest_cid)
from shuru.errors import HostError

SPEC = MachineSpec(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"),
                   rootfs=Path("/img/rootfs.img"), cpus=3, memory=1536, disk_size=4096)
TCG = Accel("tcg", "max", "test")


def _argv(spec=SPEC, accel=TCG):
    return build_argv("qemu-system-x86_64", spec, accel, RunPaths.inside(Path("/run/x")), "CMDLINE")


def _opt(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_isolated_direct_kernel_boot():
    argv = _argv()
    assert {"-nodefaults", "-no-user-config", "-no-reboot"} <= set(argv)
    assert _opt(argv, "-kernel") == ["/img/vmlinuz"]
    assert _opt(argv, "-initrd") == ["/img/initrd.img"]
    assert _opt(argv, "-append") == ["CMDLINE"]
    assert _opt(argv, "-smp") == ["3"] and _opt(argv, "-m") == ["1536M"]
    assert _opt(argv, "-accel") == ["tcg,thread=single"] and _opt(argv, "-cpu") == ["max"]


def test_no_network_device_and_no_user_nic():
    argv = " ".join(_argv())
    assert "-netdev" not in argv and "-nic" not in argv and "virtio-net" not in argv


def test_disk_is_the_overlay_never_the_base():
    drives = _opt(_argv(), "-drive")
    assert len(drives) == 1
    assert "file=/run/x/disk.qcow2" in drives[0] and "format=qcow2" in drives[0]
    assert "rootfs.img" not in " ".join(_argv()).replace("-kernel", "")


def test_control_sockets_are_clients_of_our_listeners():
    chardevs = _opt(_argv(), "-chardev")
    paths = {c.split("path=")[1] for c in chardevs}
    assert paths == {"/run/x/agent.sock", "/run/x/qmp.sock", "/run/x/console.sock"}
    assert all("server" not in c for c in chardevs)
    assert any("name=org.shuru.agent" in d for d in _opt(_argv(), "-device"))


def test_kvm_uses_host_cpu_without_arch_capabilities():
    argv = _argv(accel=Accel("kvm", "host,-arch-capabilities", "test"))
    assert _opt(argv, "-accel") == ["kvm"]
    assert _opt(argv, "-cpu") == ["host,-arch-capabilities"]


def test_no_initrd():
    spec = MachineSpec(kernel=Path("/k"), initrd=None, rootfs=Path("/r"), cpus=1, memory=512,
                       disk_size=1024)
    assert "-initrd" not in _argv(spec)


def test_kernel_cmdline():
    quiet = kernel_cmdline(verbose=False, tsc_khz=2596134)
    assert "quiet" in quiet.split() and "tsc_early_khz=2596134" in quiet.split()
    assert "root=/dev/vda" in quiet.split() and "panic=-1" in quiet.split()
    loud = kernel_cmdline(verbose=True, tsc_khz=None)
    assert "quiet" not in loud.split() and "tsc_early_khz" not in loud


def test_host_tsc_khz():
    assert host_tsc_khz("processor\t: 0\ncpu MHz\t\t: 2596.134\n") == 2596134
    assert host_tsc_khz("nothing here") is None


def test_vsock_channel_replaces_the_serial_port():
    argv = build_argv("qemu-system-x86_64", SPEC, TCG, RunPaths.inside(Path("/run/x")),
                      "CMDLINE", guest_cid=1234)
    devices = _opt(argv, "-device")
    assert "vhost-vsock-device,guest-cid=1234" in devices
    assert not any("virtserialport" in d or "virtio-serial" in d for d in devices)
    paths = {c.split("path=")[1] for c in _opt(argv, "-chardev")}
    assert paths == {"/run/x/qmp.sock", "/run/x/console.sock"}


def test_kernel_cmdline_names_the_channel_and_a_saved_one_is_read_back():
    vsock = kernel_cmdline(verbose=False, tsc_khz=None, channel="vsock")
    assert f"shuru.agent=vsock:{AGENT_VSOCK_PORT}" in vsock.split()
    assert cmdline_channel(vsock) == "vsock"
    serial = kernel_cmdline(verbose=False, tsc_khz=None)
    assert "shuru.agent" not in serial and cmdline_channel(serial) == "virtio-serial"


def test_channel_choice(monkeypatch):
    monkeypatch.setattr("os.access", lambda path, mode: False)
    assert choose_channel({}) == "virtio-serial"
    assert choose_channel({"SHURU_QEMU_CHANNEL": "virtio-serial"}) == "virtio-serial"
    with pytest.raises(HostError, match="/dev/vhost-vsock"):
        choose_channel({"SHURU_QEMU_CHANNEL": "vsock"})
    with pytest.raises(HostError, match="SHURU_QEMU_CHANNEL='serial'"):
        choose_channel({"SHURU_QEMU_CHANNEL": "serial"})
    monkeypatch.setattr("os.access", lambda path, mode: path == "/dev/vhost-vsock")
    assert choose_channel({}) == "virtio-serial"  # opt-in until the KVM tier has passed
    assert choose_channel({"SHURU_QEMU_CHANNEL": "vsock"}) == "vsock"


def test_guest_cids_avoid_the_reserved_ones():
    assert all(3 <= new_guest_cid() < 2**32 - 1 for _ in range(1000))
