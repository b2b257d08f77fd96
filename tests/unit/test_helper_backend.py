"""The helper backend's pure parts: finding the binary, the agent command, the VM config it
sends, and the one place that picks a backend. No helper process, no socket."""

import sys
from pathlib import Path

import pytest

from shuru.backends.helper import machine as helper
from shuru.backends.helper import protocol as hp
from shuru.backends.base import MachineSpec
from shuru.backends.helper.disks import clone_disk
from shuru.backends.select import default_backend
from shuru.errors import ConfigError, HostError

SPEC = MachineSpec(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd"), rootfs=Path("/img/root"),
                   cpus=2, memory=1024, disk_size=4096)


def test_find_helper_prefers_the_environment(tmp_path):
    binary = tmp_path / "shuru-helper"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert helper.find_helper({"SHURU_HELPER": str(binary), "PATH": ""}) == binary


def test_find_helper_names_what_it_tried(tmp_path, monkeypatch):
    with pytest.raises(HostError, match="/nowhere/shuru-helper"):
        helper.find_helper({"SHURU_HELPER": "/nowhere/shuru-helper"})
    not_executable = tmp_path / "shuru-helper"
    not_executable.write_text("")
    with pytest.raises(HostError, match="not executable"):
        helper.find_helper({"SHURU_HELPER": str(not_executable)})
    monkeypatch.setattr(helper, "CHECKOUT_HELPER", tmp_path / "missing/shuru-helper")
    with pytest.raises(HostError) as info:
        helper.find_helper({"PATH": str(tmp_path / "empty")})
    assert "SHURU_HELPER is not set" in str(info.value) and "missing/shuru-helper" in str(info.value)
    assert "swift build" in str(info.value)


def test_find_helper_uses_path(tmp_path):
    binary = tmp_path / "shuru-helper"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert helper.find_helper({"PATH": str(tmp_path)}) == binary


def test_agent_command_default_and_override():
    assert helper.agent_command({}) == [sys.executable, "-m", "shuru_guest", "--fd", "{fd}"]
    assert helper.agent_command({"SHURU_HELPER_AGENT_COMMAND": '["agent", "{fd}"]'}) == ["agent", "{fd}"]
    for bad in ("not json", "[]", '["ok", 3]', '{"a": 1}'):
        with pytest.raises(ConfigError, match="SHURU_HELPER_AGENT_COMMAND"):
            helper.agent_command({"SHURU_HELPER_AGENT_COMMAND": bad})


def test_machine_config_is_a_valid_create_request():
    for driver in ("vz", "process"):
        config = helper.machine_config(SPEC, disk=Path("/run/disk.img"), driver=driver, environ={})
        hp.validate({"id": 1, "op": "create", "config": config}, "request")
        assert config["network"] == "none", "the guest gets no network device"
        assert config["cpus"] == 2 and config["memory_mb"] == 1024 and config["disk"] == "/run/disk.img"
        assert ("agent_command" in config) == (driver == "process")
    assert "quiet" in helper.kernel_cmdline(verbose=False, agent_port=1024)
    assert "quiet" not in helper.kernel_cmdline(verbose=True, agent_port=1024)
    assert "shuru.agent=vsock:1024" in helper.kernel_cmdline(verbose=False, agent_port=1024)


async def test_clone_disk_grows_to_size(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(b"x" * 4096)
    dest = tmp_path / "disk.img"
    await clone_disk(base, dest, 1)
    assert dest.stat().st_size == 1024 * 1024
    assert dest.read_bytes()[:4096] == b"x" * 4096
    assert base.stat().st_size == 4096


def test_backend_choice(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    assert type(default_backend(tmp_path, {})).__name__ == "QemuBackend"
    chosen = default_backend(tmp_path, {"SHURU_BACKEND": "helper"})
    assert type(chosen).__name__ == "HelperBackend" and chosen.driver == "process"
    with pytest.raises(HostError, match="'firecracker' is not a backend"):
        default_backend(tmp_path, {"SHURU_BACKEND": "firecracker"})
    monkeypatch.setattr(sys, "platform", "darwin")
    mac = default_backend(tmp_path, {})
    assert type(mac).__name__ == "HelperBackend" and mac.driver == "vz"
    assert mac.disks.format == "raw"
    with pytest.raises(HostError, match="Linux only"):
        default_backend(tmp_path, {"SHURU_BACKEND": "qemu"})


def test_protocol_version_matches_the_swift_helper():
    swift = (Path(__file__).parents[2] / "helper/Sources/ShuruHelperCore/HelperProtocol.swift").read_text()
    assert f"public static let version: Int64 = {hp.VERSION}" in swift


def test_states_match_the_swift_helper():
    swift = (Path(__file__).parents[2] / "helper/Sources/ShuruHelperCore/VMState.swift").read_text()
    enum = swift.split("public enum VMState: String, CaseIterable {")[1].split("}")[0]
    names = [n.strip() for line in enum.split("case ")[1:] for n in line.split(",")]
    assert tuple(names) == hp.STATES


def test_capabilities_are_what_the_hello_reply_says():
    """The helper's own answer decides fast start and pause, not the platform's name."""
    vz = helper.Driver.from_hello({"driver": "vz", "helper": "1.0",
                                   "capabilities": {"save_state": True, "pause": True}})
    caps = vz.capabilities()
    assert (caps.fast_start, caps.pause, caps.checkpoint) == (True, True, True)
    assert caps.backend == "helper (vz driver)"
    intel = helper.Driver.from_hello({"driver": "vz", "helper": "1.0",
                                      "capabilities": {"save_state": False, "pause": True}})
    assert not intel.capabilities().fast_start
    # A reply without (or with a malformed) capabilities map claims nothing.
    assert not helper.Driver.from_hello({"driver": "vz", "capabilities": "yes"}).capabilities().pause
