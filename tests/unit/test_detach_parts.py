"""The pure and file-level parts of detached sandboxes, without a VM: the registry's names,
claims, records and prune; the supervisor's peer check, answers and config round trip; the
metrics parsers; the SDK's option checks."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from shuru import AccessError, AsyncSandbox, ConfigError, SandboxNotFoundError, ShuruError
from shuru import config as cfg
from shuru import metrics
from shuru.named import registry, remote, supervisor


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "rt"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("SHURU_RUNTIME_DIR", str(path))
    return path


@pytest.mark.parametrize("name", ["web", "a.b-c_d", "x" * 63])
def test_good_names(name):
    assert registry.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "../x", "a/b", "x" * 64, 5, None, "a b"])
def test_bad_names_are_config_errors(name):
    with pytest.raises(ConfigError, match="name"):
        registry.check_name(name)


def test_a_claimed_name_cannot_be_claimed_again_and_is_free_after_release(root):
    claim = registry.claim("web")
    assert registry.slot("web").alive()
    with pytest.raises(ShuruError, match="already running"):
        registry.claim("web")
    claim.slot.write({"name": "web", "state": "running"})
    assert registry.list_records() == [{"name": "web", "state": "running"}]
    claim.release()
    assert not registry.slot("web").alive()
    assert registry.list_records() == []
    assert list((root / "named").iterdir()) == []


def test_a_record_without_its_lock_holder_is_dead_and_pruned(root):
    claim = registry.claim("gone")
    claim.slot.write({"name": "gone", "state": "running"})
    claim.slot.sock.write_bytes(b"")
    os.close(claim._fd)  # the supervisor died: the kernel dropped its lock
    claim._fd = -1
    assert registry.list_records() == [{"name": "gone", "state": "dead"}]
    live = registry.claim("live")
    live.slot.write({"name": "live", "state": "running"})
    assert registry.prune() == ["gone"]
    assert [r["name"] for r in registry.list_records()] == ["live"]
    assert sorted(p.name for p in (root / "named").iterdir()) == ["live.json", "live.lock"]
    live.release()


def test_a_dead_predecessors_slot_is_taken_over(root):
    old = registry.claim("web")
    old.slot.write({"name": "web", "id": "old"})
    os.close(old._fd)
    new = registry.claim("web")
    assert new.slot.read() is None  # the dead one's record is gone
    new.release()


def test_the_peer_check():
    assert supervisor.refusal(1000, 1000) is None
    message = supervisor.refusal(1001, 1000)
    assert "belongs to uid 1000" in message and "you are uid 1001" in message


def test_peer_uid_of_a_socketpair_is_ours():
    import socket

    a, b = socket.socketpair()
    with a, b:
        assert supervisor.peer_uid(a) == os.getuid()


def test_supervisor_answers_become_the_errors_they_name():
    with pytest.raises(AccessError, match="denied"):
        remote.raise_reply({"ok": False, "kind": "AccessError", "error": "denied"}, "web")
    with pytest.raises(ShuruError, match="odd") as info:
        remote.raise_reply({"ok": False, "kind": "ValueError", "error": "odd"}, "web")
    assert type(info.value) is ShuruError  # never a foreign class
    assert remote.raise_reply({"ok": True, "value": 3}, "web") == 3
    with pytest.raises(ShuruError, match="bad answer"):
        remote.raise_reply([1], "web")
    reply = supervisor.error_reply(ConfigError(["cpus: bad"]))
    assert reply["kind"] == "ConfigError" and "cpus: bad" in reply["error"]


def test_config_round_trip():
    config = cfg.SandboxConfig(cpus=1, memory=512, env={"A": "b"}, ports=("8080:80",),
                               network={"allow": ["x.com"]}, from_="cp")
    import json

    data = json.loads(json.dumps(supervisor.config_to_json(config)))
    assert supervisor.config_from_json(data) == config


def test_attaching_to_no_sandbox_says_so(root):
    with pytest.raises(SandboxNotFoundError, match="no sandbox named 'web'"):
        asyncio.run(AsyncSandbox.attach("web"))
    with pytest.raises(SandboxNotFoundError):
        asyncio.run(AsyncSandbox.connect("web"))  # the class-level spelling


@pytest.mark.parametrize("options, field", [
    ({"name": "../x"}, "name"), ({"idle_timeout": 5}, "idle_timeout"),
    ({"detach": True, "idle_timeout": -1}, "idle_timeout"), ({"detach": "yes"}, "detach"),
    ({"detach": True, "name": "../x"}, "name"),
])
def test_detach_options_are_checked_before_anything_starts(root, options, field):
    with pytest.raises(ConfigError, match=field):
        asyncio.run(AsyncSandbox.start(**options))


def test_cpu_seconds_counts_after_the_command_name():
    stat = "42 (qemu (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0"
    assert metrics.cpu_seconds(stat, 100) == 4.0
    assert metrics.cpu_seconds("garbage", 100) is None


def test_memory_parsers_skip_what_does_not_parse():
    text = "Rss:  100 kB\nPss: 50 kB\nJunk\nMemTotal: x kB\n"
    assert metrics.memory_kib(text, ("Rss", "Pss", "MemTotal")) == {"Rss": 100, "Pss": 50}
    guest = metrics.guest_memory("MemTotal: 1000 kB\nMemAvailable: 400 kB\n")
    assert guest == {"total": 1024000, "available": 409600, "used": 614400}
    assert metrics.guest_memory("")["used"] is None


def test_network_bytes_from_the_audit_log():
    log = [{"event": "close", "bytes_up": 10, "bytes_down": 5}, {"event": "dns"},
           {"event": "close", "bytes_up": "x"}]
    assert metrics.network_bytes(log) == {"up": 10, "down": 5}


def test_our_own_process_usage_is_readable():
    usage = metrics.process_usage(os.getpid())
    assert usage["rss"] > 0 and usage["pss"] > 0 and usage["cpu_seconds"] >= 0


def test_a_start_that_fails_in_the_supervisor_raises_its_error_here(root, tmp_path):
    """The supervisor's start-up error comes back as the same ShuruError, and it leaves
    nothing behind in the registry."""
    from shuru import BootError

    missing = tmp_path / "no-kernel"
    rootfs = tmp_path / "rootfs.img"
    rootfs.write_bytes(b"")
    with pytest.raises(BootError, match="no-kernel: no such file"):
        asyncio.run(AsyncSandbox.start(detach=True, name="broken", kernel=str(missing),
                                       rootfs=str(rootfs)))
    assert registry.list_records() == []
    assert list((root / "named").iterdir()) == []


def test_a_bound_sandbox_needs_a_live_owner():
    from shuru.named.supervisor import owner_pidfd

    fd = owner_pidfd(os.getpid())
    os.close(fd)
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process now
    with pytest.raises(ShuruError, match="has ended"):
        owner_pidfd(child.pid)
    with pytest.raises(ShuruError, match="owner's pid"):
        owner_pidfd(None)
