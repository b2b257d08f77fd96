"""The SDK through the real Swift helper binary on Linux: `shuru-helper --driver process` runs
the guest agent as a host process, so `AsyncSandbox` here goes through a real Unix socket, the
helper protocol and real descriptor passing (the agent's socket reaches Python by SCM_RIGHTS),
with no VM. Plus the helper's failure modes: missing, another protocol version, silent, dying
early, and crashing mid-run — each a clear error naming the binary, never a hang.

The helper is built once per session with `swift build`. Without a Swift toolchain these tests
fail rather than skip: a skipped seam test is a hidden failure (scripts/setup installs Swift
where it can; on this project's Linux machines it lives in /opt/swift).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from shuru import AsyncSandbox, ShuruWarning
from shuru import checkpoints as ck
from shuru.backends.helper import machine as helper_mod
from shuru.errors import (BootError, HostError, ProtocolError, SandboxDiedError, ShuruError,
                          UnsupportedError)
from shuru.image.store import FORMAT as IMAGE_FORMAT, sha256_file

ROOT = Path(__file__).resolve().parents[2]
HELPER_DIR = ROOT / "helper"


def find_swift() -> str | None:
    return shutil.which("swift") or next(
        (p for p in ("/opt/swift/usr/bin/swift",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="session")
def helper_binary() -> Path:
    swift = find_swift()
    if swift is None:
        pytest.fail("no Swift toolchain (swift on PATH or /opt/swift/usr/bin/swift): the helper's "
                    "contract tests build helper/ with `swift build` and cannot run without it",
                    pytrace=False)
    build = subprocess.run([swift, "build", "--product", "shuru-helper"], cwd=HELPER_DIR,
                           capture_output=True, text=True, timeout=900)
    if build.returncode != 0:
        pytest.fail(f"swift build failed in {HELPER_DIR}:\n{build.stdout}\n{build.stderr}",
                    pytrace=False)
    binary = HELPER_DIR / ".build/debug/shuru-helper"
    assert binary.is_file(), f"swift build succeeded but {binary} is missing"
    return binary


@pytest.fixture
def boot_files(tmp_path) -> dict:
    """Boot files the process driver ignores but the sandbox's config requires."""
    kernel, rootfs = tmp_path / "vmlinuz", tmp_path / "rootfs.img"
    kernel.write_bytes(b"not a kernel")
    rootfs.write_bytes(b"not a disk")
    return {"kernel": str(kernel), "rootfs": str(rootfs)}


@pytest.fixture
def helper_env(monkeypatch, helper_binary, tmp_path):
    monkeypatch.setenv("SHURU_BACKEND", "helper")
    monkeypatch.setenv("SHURU_HELPER", str(helper_binary))
    monkeypatch.delenv("SHURU_HELPER_AGENT_COMMAND", raising=False)
    runtime = Path(f"/tmp/shuru-helper-test-{os.getpid()}-{tmp_path.name[-10:]}")
    monkeypatch.setenv("SHURU_RUNTIME_DIR", str(runtime))
    yield runtime
    shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture
async def sandbox(helper_env, boot_files):
    sb = await AsyncSandbox.start(**boot_files)
    yield sb
    await sb.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def wait_until(check, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return check()


# ---- the SDK through the helper ------------------------------------------------------------


async def test_exec_output_and_exit_codes(sandbox):
    assert sandbox.accel == "process"
    r = await sandbox.exec("echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3)
    missing = await sandbox.exec(["definitely-not-a-command"])
    assert missing.exit_code == 127
    assert "definitely-not-a-command: command not found" in missing.stderr


async def test_exec_stdin_env_and_large_output(sandbox):
    r = await sandbox.exec(["sh", "-c", 'echo "$GREETING"; wc -c'], env={"GREETING": "hi"},
                           stdin=b"x" * 100_000)
    assert r.stdout.split() == ["hi", "100000"]
    big = await sandbox.exec("head -c 3000000 /dev/zero")
    assert len(big.stdout_bytes) == 3_000_000


async def test_spawn_streams_stdin_and_stdout(sandbox):
    proc = await sandbox.spawn(["sh", "-c", "while read line; do echo got:$line; done"])
    await proc.write("one\n")
    await proc.write("two\n")
    await proc.close_stdin()
    chunks = [chunk.text async for chunk in proc]
    assert "".join(chunks) == "got:one\ngot:two\n"
    assert await proc.wait(timeout=10) == 0


async def test_signals_reach_the_process(sandbox):
    proc = await sandbox.spawn(["sleep", "30"])
    await proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=10) == 128 + signal.SIGTERM


async def test_files_round_trip(sandbox, tmp_path):
    path = str(tmp_path / "through-the-helper.txt")
    assert await sandbox.files.write(path, "héllo") == 6
    assert await sandbox.files.read_text(path) == "héllo"
    assert (tmp_path / "through-the-helper.txt").read_text() == "héllo"


async def test_stop_ends_helper_agent_and_run_dir(helper_env, boot_files):
    sb = await AsyncSandbox.start(**boot_files)
    helper_pid = sb._machine.pid
    agent_pid = sb._channel.guest_hello["pid"]
    rundir = sb._machine.rundir.path
    assert alive(helper_pid) and alive(agent_pid) and rundir.is_dir()
    await sb.stop()
    assert await wait_until(lambda: not alive(helper_pid) and not alive(agent_pid))
    assert not rundir.exists()
    await sb.stop()  # again: nothing to do


async def test_console_lines_arrive_as_events(helper_env, boot_files, monkeypatch):
    # The process driver's "console" is the agent's stderr; a wrapper writes a line to it.
    monkeypatch.setenv("SHURU_HELPER_AGENT_COMMAND", json.dumps([
        "sh", "-c", 'echo "console: booting agent" >&2; exec "$0" -m shuru_guest --fd {fd}',
        sys.executable]))
    seen: list[bytes] = []
    sb = await AsyncSandbox.start(on_console=seen.append, **boot_files)
    try:
        assert await wait_until(lambda: b"console: booting agent\n" in seen)
        assert "console: booting agent" in sb.console_tail()
    finally:
        await sb.stop()


# ---- the backend contract on the helper: checkpoints, from_=, pause, fast start ---------------

ROOTFS_HEAD = b"image-rootfs:"


@pytest.fixture
def helper_home(helper_env, tmp_path, monkeypatch) -> Path:
    """A data dir with a guest image (files the process driver never boots, but a raw
    rootfs whose bytes can be followed into layers and checkpoints)."""
    home = tmp_path / "home"
    image = home / "images" / "img0"
    image.mkdir(parents=True)
    (image / "vmlinuz").write_bytes(b"not a kernel")
    (image / "initrd.img").write_bytes(b"not an initrd")
    rootfs = image / "rootfs.img"
    rootfs.write_bytes(ROOTFS_HEAD + bytes(1 << 20))
    manifest = {"format": IMAGE_FORMAT, "image_id": "img0", "files": {
        name: {"sha256": sha256_file(image / name), "size": (image / name).stat().st_size}
        for name in ("vmlinuz", "initrd.img", "rootfs.img")}}
    (image / "manifest.json").write_text(json.dumps(manifest))
    (home / "images" / "current").symlink_to("img0")
    monkeypatch.setenv("SHURU_HOME", str(home))
    return home


async def test_checkpoint_and_from_keep_raw_disks_on_the_helper(helper_home):
    """Before the contract, checkpoint() here shut the agent down and then failed with an
    AttributeError (no `disk`), the sandbox gone; now the layer is kept as a raw disk."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShuruWarning)  # no machine-state attempts either
        sb = await AsyncSandbox.start(disk_size=256)
        layer = sb._machine.layer
        assert layer.read_bytes()[:len(ROOTFS_HEAD)] == ROOTFS_HEAD  # a clone of the image
        assert layer.stat().st_size == 256 << 20
        with open(layer, "r+b") as f:  # what a guest would have written (no VM here)
            f.seek(2 << 20)
            f.write(b"written-in-the-sandbox")
        cp = await sb.checkpoint("ready")
        assert sb.state.value == "stopped" and not layer.exists()
        assert cp.manifest["disk"]["format"] == "raw" and cp.disk == cp.path / "disk.img"
        assert ck.load("ready").disk_format == "raw"  # re-read, and re-hashed
        async with await AsyncSandbox.start(from_="ready") as fork:
            assert fork.accel == "process" and not fork.restored
            data = fork._machine.layer.read_bytes()
            assert data[:len(ROOTFS_HEAD)] == ROOTFS_HEAD
            assert data[2 << 20:(2 << 20) + 22] == b"written-in-the-sandbox"
            assert (await fork.exec("echo forked")).stdout == "forked\n"
            child = await fork.checkpoint("child")
        assert child.parent == "ready" and child.disk_format == "raw"
        assert child.disk.read_bytes()[2 << 20:(2 << 20) + 22] == b"written-in-the-sandbox"
    assert sorted(p.name for p in (helper_home / "checkpoints").iterdir()) == ["child", "ready"]


async def test_a_qcow2_checkpoint_is_refused_by_the_helper_before_anything_starts(helper_home,
                                                                                   helper_env):
    """A checkpoint made by QEMU (an old manifest without a format: qcow2) used to be copied
    as if it were a raw disk; now it is refused, naming the format and the backend."""
    path = helper_home / "checkpoints" / "from-qemu"
    path.mkdir(parents=True)
    disk = path / "disk.qcow2"
    disk.write_bytes(b"QFI\xfb" + bytes(4092))
    image = helper_home / "images" / "img0"
    (path / "manifest.json").write_text(json.dumps({
        "format": ck.FORMAT, "name": "from-qemu", "parent": None, "image_id": "img0",
        "image_rootfs_sha256": sha256_file(image / "rootfs.img"), "virtual_size_mb": 256,
        "disk": {"size": disk.stat().st_size, "sha256": sha256_file(disk)}}))
    assert ck.load("from-qemu").disk_format == "qcow2"
    with pytest.raises(UnsupportedError, match="qcow2 disk.*helper \\(process driver\\)") as err:
        await AsyncSandbox.start(from_="from-qemu")
    assert err.value.backend == "helper (process driver)"
    leftovers = [p for p in helper_env.iterdir() if p.is_dir()] if helper_env.exists() else []
    assert leftovers == []  # no helper was launched, no run dir made


async def test_fast_start_falls_back_to_a_cold_start_on_the_process_driver(helper_home, tmp_path):
    """The process driver's hello says save_state: false, so a start (not `cold`) boots
    without trying to save or restore a state; forcing fast start is a clear error that
    changes nothing."""
    from shuru.backends.base import MachineSpec
    from shuru.backends.helper.machine import HelperBackend

    with warnings.catch_warnings():
        warnings.simplefilter("error", ShuruWarning)
        sb = await AsyncSandbox.start()
    try:
        assert not sb.restored
        assert not (helper_home / "images" / "img0" / "states").exists()
        with pytest.raises(UnsupportedError, match="fast_start"):
            await sb._machine.save_state(tmp_path)
        assert list(tmp_path.glob("state*")) == []
        assert (await sb.exec("echo still-running")).stdout == "still-running\n"
    finally:
        await sb.stop()
    backend = HelperBackend(helper_home, driver="process")
    caps = await backend.probe()
    assert (caps.fast_start, caps.pause, caps.checkpoint) == (False, True, True)
    image = helper_home / "images" / "img0"
    spec = MachineSpec(kernel=image / "vmlinuz", initrd=None, rootfs=image / "rootfs.img",
                       cpus=1, memory=256, disk_size=256)
    work = tmp_path / "template"
    work.mkdir()
    with pytest.raises(UnsupportedError, match="helper \\(process driver\\) backend cannot"):
        await backend.start_template(spec, work)
    assert list(work.iterdir()) == []


async def test_pause_resume_and_metrics_through_the_helper(sandbox):
    """pause/resume were QMP-only (a SandboxStateError here); the helper's driver pauses."""
    await sandbox.pause()
    assert sandbox.state.value == "paused"
    late = asyncio.ensure_future(_exec_raw(sandbox))
    done, _ = await asyncio.wait({late}, timeout=0.5)
    assert not done  # the agent is stopped: nothing runs
    metrics = await sandbox.metrics()
    assert metrics["state"] == "paused" and metrics["memory"]["rss"] and metrics["disk"]
    await sandbox.resume()
    assert (await asyncio.wait_for(late, 30)) == "late\n"
    assert (await sandbox.exec("echo after")).stdout == "after\n"


async def _exec_raw(sandbox) -> str:
    """exec on the paused sandbox's channel (the SDK refuses exec while paused)."""
    from shuru.process import run_to_completion

    r = await run_to_completion(sandbox._channel.open_stream(), ["echo", "late"], stdin=None,
                                timeout=60, cwd="/", env={}, user=None)
    return r.stdout


# A helper whose driver saves machine state, as VZ on macOS 14+ does: a Python stand-in that
# speaks the real protocol. Its "guest" is the agent as a process; a restored guest is a
# fresh agent (a process cannot be restored), which is what fast start's `resume` expects
# of a clone. The state file holds the machine identity it was saved with, and a restore
# into another identity is refused (EINVAL), as VZ refuses it.
VZ_LIKE = """
    import json, os, signal, subprocess
    machine_id, agent, host_end = os.urandom(16), None, None
    log = open(os.environ["FAKE_VZ_LOG"], "a")
    def reply(rid, **fields):
        send({"id": rid, "ok": True, **fields})
    while True:
        try:
            msg = recv()
        except Exception:
            break  # the client hung up
        op, rid = msg["op"], msg["id"]
        given = msg.get("config", {}).get("machine_id")
        log.write(json.dumps({"op": op, "machine_id": given.hex() if given else None}) + "\\n")
        log.flush()
        if op == "hello":
            reply(rid, version=1, helper="fake-vz", driver="vz",
                  capabilities={"save_state": True, "pause": True})
        elif op == "create":
            machine_id = given or machine_id
            reply(rid, machine_id=machine_id)
        elif op in ("start", "resume") and agent is None:
            host_end, guest = socket.socketpair()
            agent = subprocess.Popen([sys.executable, "-m", "shuru_guest", "--fd",
                                      str(guest.fileno())], pass_fds=[guest.fileno()])
            guest.close()
            reply(rid)
        elif op in ("pause", "resume"):
            agent.send_signal(signal.SIGSTOP if op == "pause" else signal.SIGCONT)
            reply(rid)
        elif op == "save_state":
            with open(msg["path"], "wb") as f:
                f.write(b"vz-state:" + machine_id)
            reply(rid)
        elif op == "restore_state":
            with open(msg["path"], "rb") as f:
                if f.read() == b"vz-state:" + machine_id:
                    reply(rid)
                else:
                    send({"id": rid, "ok": False, "error": {
                        "code": "EINVAL", "message": "another machine identity saved this"}})
        elif op == "connect":
            import msgpack, struct
            payload = msgpack.packb({"id": rid, "ok": True})
            socket.send_fds(conn, [struct.pack(">I", len(payload)) + payload], [host_end.fileno()])
            host_end.close()
        elif op == "stop":
            if agent is not None:
                agent.kill()
                agent.wait()
            reply(rid)
    if agent is not None and agent.poll() is None:
        agent.kill()
"""


async def test_fast_start_saves_and_restores_through_the_helper(helper_home, tmp_path,
                                                                  monkeypatch):
    """With a driver whose hello says save_state: true, the first start saves a template
    (pause, save_state, its machine identity kept) and restores a clone from it (create with
    that identity, restore_state, resume); the next start restores at once."""
    log = tmp_path / "ops.jsonl"
    monkeypatch.setenv("FAKE_VZ_LOG", str(log))
    monkeypatch.setenv("SHURU_HELPER", str(fake_helper(tmp_path, VZ_LIKE)))
    with pytest.warns(ShuruWarning, match="no saved machine state yet"):
        sb = await AsyncSandbox.start()
    try:
        assert sb.restored and sb.accel == "vz"
        state = sb._machine.restored_from
        assert sorted(p.name for p in state.iterdir()) == [
            "disk.img", "machine_id", "manifest.json", "state.vzsave"]
        assert (state / "disk.img").read_bytes()[:len(ROOTFS_HEAD)] == ROOTFS_HEAD
        assert (await sb.exec("echo restored")).stdout == "restored\n"
    finally:
        await sb.stop()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ShuruWarning)
        again = await AsyncSandbox.start()
    try:
        assert again.restored and again._machine.restored_from == state
        assert again._machine.layer != state / "disk.img"  # a clone's own disk
    finally:
        await again.stop()
    ops = [json.loads(line) for line in log.read_text().splitlines()]
    saved_id = (state / "machine_id").read_bytes().hex()
    creates = [op["machine_id"] for op in ops if op["op"] == "create"]
    assert creates[0] is None and creates[1:] == [saved_id, saved_id]  # template, 2 clones
    names = [op["op"] for op in ops if op["op"] not in ("hello", "connect")]
    names = names[names.index("create"):]  # after the probe (hello, stop)
    assert names[:5] == ["create", "start", "pause", "save_state", "stop"]
    assert names[5:8] == ["create", "restore_state", "resume"]


async def test_every_contract_operation_on_the_helper(helper_home, tmp_path):
    from tests.backend_contract import exercise
    from shuru.backends.base import MachineSpec
    from shuru.backends.helper.machine import HelperBackend

    image = helper_home / "images" / "img0"
    spec = MachineSpec(kernel=image / "vmlinuz", initrd=None, rootfs=image / "rootfs.img",
                       cpus=1, memory=256, disk_size=256)
    caps = await exercise(HelperBackend(helper_home, driver="process"), spec, tmp_path)
    assert not caps.fast_start  # the process driver: refused, as exercise() checked


# ---- failures ----------------------------------------------------------------------------


async def test_missing_helper_is_a_host_error_naming_the_path(helper_env, boot_files, monkeypatch):
    monkeypatch.setenv("SHURU_HELPER", "/nonexistent/shuru-helper")
    with pytest.raises(HostError, match="/nonexistent/shuru-helper"):
        await AsyncSandbox.start(**boot_files)


def fake_helper(tmp_path: Path, body: str) -> Path:
    """An executable Python script that stands in for shuru-helper: it listens on --socket,
    says ready, accepts one client, then runs `body` with `conn`, `recv()` and `send(msg)`."""
    script = tmp_path / "fake-helper"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import socket, struct, sys, time
        import msgpack
        path = sys.argv[sys.argv.index("--socket") + 1]
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)
        print("ready", flush=True)
        conn, _ = server.accept()
        def recv():
            header = conn.recv(4, socket.MSG_WAITALL)
            return msgpack.unpackb(conn.recv(struct.unpack(">I", header)[0], socket.MSG_WAITALL))
        def send(msg):
            payload = msgpack.packb(msg)
            conn.sendall(struct.pack(">I", len(payload)) + payload)
        """) + textwrap.dedent(body))
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("answer", [
    'send({"id": hello["id"], "ok": True, "version": 99, "helper": "9.9", "driver": "vz"})',
    'send({"id": hello["id"], "ok": False, "error": {"code": "EVERSION", "version": 99,'
    ' "message": "the client speaks version 1, this helper speaks version 99"}})',
], ids=["hello-with-version-99", "EVERSION-reply"])
async def test_other_protocol_version_names_binary_and_versions(helper_env, boot_files, tmp_path,
                                                               monkeypatch, answer):
    fake = fake_helper(tmp_path, f"""
        hello = recv()
        {answer}
        conn.recv(1)  # until the client hangs up
        """)
    monkeypatch.setenv("SHURU_HELPER", str(fake))
    with pytest.raises(ProtocolError) as info:
        await asyncio.wait_for(AsyncSandbox.start(**boot_files), 30)
    message = str(info.value)
    assert str(fake) in message and "version 99" in message and "version 1" in message


async def test_helper_dying_before_ready_shows_its_stderr(helper_env, boot_files, tmp_path,
                                                          monkeypatch):
    script = tmp_path / "broken-helper"
    script.write_text("#!/bin/sh\necho 'dyld: missing Virtualization.framework' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv("SHURU_HELPER", str(script))
    with pytest.raises(BootError) as info:
        await asyncio.wait_for(AsyncSandbox.start(**boot_files), 30)
    message = str(info.value)
    assert str(script) in message and "status 3" in message and "missing Virtualization" in message


async def test_silent_helper_times_out(helper_env, boot_files, tmp_path, monkeypatch):
    script = tmp_path / "silent-helper"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    monkeypatch.setenv("SHURU_HELPER", str(script))
    monkeypatch.setattr(helper_mod, "READY_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(BootError, match="did not report ready"):
        await asyncio.wait_for(AsyncSandbox.start(**boot_files), 30)
    assert time.monotonic() - started < 10


async def test_helper_that_never_answers_a_request_times_out(helper_env, boot_files, tmp_path,
                                                             monkeypatch):
    fake = fake_helper(tmp_path, "recv()\ntime.sleep(60)\n")
    monkeypatch.setenv("SHURU_HELPER", str(fake))
    monkeypatch.setattr(helper_mod, "REQUEST_TIMEOUT", 0.5)
    with pytest.raises(BootError, match="did not answer 'hello'"):
        await asyncio.wait_for(AsyncSandbox.start(**boot_files), 30)


async def test_helper_breaking_the_protocol_is_a_protocol_error(helper_env, boot_files, tmp_path,
                                                                monkeypatch):
    fake = fake_helper(tmp_path, 'recv()\nconn.sendall(b"\\x00\\x00\\x00\\x00")\nconn.recv(1)\n')
    monkeypatch.setenv("SHURU_HELPER", str(fake))
    with pytest.raises(ShuruError, match="broke the helper protocol"):
        await asyncio.wait_for(AsyncSandbox.start(**boot_files), 30)


async def test_helper_crash_mid_run_fails_calls_without_hanging(sandbox):
    proc = await sandbox.spawn(["sleep", "30"])
    agent_pid = sandbox._channel.guest_hello["pid"]
    os.kill(sandbox._machine.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(SandboxDiedError) as info:
        await asyncio.wait_for(proc.wait(), 30)
    assert time.monotonic() - started < 10
    assert str(sandbox._machine.binary) in str(info.value), "the error names the helper binary"
    assert "signal 9" in str(info.value)
    with pytest.raises(ShuruError):
        await asyncio.wait_for(sandbox.exec("true"), 30)
    # With the helper gone, the agent loses its channel and ends itself and its processes.
    assert await wait_until(lambda: not alive(agent_pid))


async def test_vm_config_refused_by_the_helper_is_a_boot_error(helper_env, boot_files, monkeypatch):
    monkeypatch.setenv("SHURU_HELPER_AGENT_COMMAND", '["/no/such/agent", "{fd}"]')
    with pytest.raises(ShuruError) as info:
        await asyncio.wait_for(AsyncSandbox.start(**boot_files), 60)
    assert "/no/such/agent" in str(info.value) or "status 127" in str(info.value)


# ---- the agent and files contract suites, again, through the helper ----------------------
#
# Every test of tests/contract/test_agent.py and test_files.py that uses the `agent` fixture
# runs once more here, with `agent` provided by the real helper instead of a direct
# socketpair: the same Channel, now over the descriptor the helper passed.

class HelperAgent:
    """The conftest `agent` fixture's shape (`channel`, `proc.pid`, `proc.kill()`), with the
    agent started by shuru-helper and its channel received over SCM_RIGHTS."""

    class _Proc:
        def __init__(self, pid: int):
            self.pid = pid

        def kill(self) -> None:
            os.kill(self.pid, signal.SIGKILL)

    def __init__(self, channel, machine):
        self.channel = channel
        self.machine = machine
        self.proc = self._Proc(channel.guest_hello["pid"])


@pytest.fixture
async def agent(helper_env, boot_files, tmp_path):
    from shuru.backends.base import MachineSpec
    from shuru.backends.helper.machine import HelperBackend
    from shuru.channel import Channel

    spec = MachineSpec(kernel=Path(boot_files["kernel"]), initrd=None,
                       rootfs=Path(boot_files["rootfs"]), cpus=1, memory=256, disk_size=256)
    machine = await HelperBackend(tmp_path, driver="process").start(spec)
    channel = Channel(*machine.agent, describe_death=machine.console_tail)
    try:
        await channel.handshake()
        yield HelperAgent(channel, machine)
    finally:
        await channel.close()
        await machine.stop()


def _suites_through_the_helper() -> dict:
    import inspect

    from tests.contract import test_agent, test_files

    tests = {"files": test_files.files}  # the files suite's own fixture, built on `agent`
    for suite in (test_agent, test_files):
        for name, fn in vars(suite).items():
            if name.startswith("test_") and {"agent", "files"} & set(inspect.signature(fn).parameters):
                tests[f"{name}__via_helper"] = fn
    return tests


globals().update(_suites_through_the_helper())
