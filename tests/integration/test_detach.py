"""Detached sandboxes end to end: started by one process, used from others, outliving their
creator, bounded by lifetimes, paused, refused to another uid, pruned after a crash.

One long-lived sandbox (`web`, started by a separate Python process that the tests later kill
with SIGKILL) serves most tests; the lifetime, idle and prune tests need sandboxes of their
own, so they start small ones."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shuru import AccessError, AsyncSandbox, Sandbox, SandboxStateError, ShuruError
from shuru.named import registry
from shuru.named.remote import raise_reply

from .conftest import shuru
from .test_run import _children_named, _wait_gone

pytestmark = pytest.mark.usefixtures("image")
SIZE = {"cpus": 1, "memory": 512}

CREATOR = """
import asyncio, sys
from shuru import AsyncSandbox

async def main():
    await AsyncSandbox.start(name="web", detach=True, cpus=1, memory=512)
    plain = await AsyncSandbox.start(cpus=1, memory=512)
    bound = await AsyncSandbox.start(name="bound", cpus=1, memory=512)  # named, not detached
    print("up", flush=True)
    sys.stdin.read()  # held until the test kills us

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def rundir():
    """A private runtime root for the module, in this process and in every child."""
    path = Path(tempfile.mkdtemp(prefix="shuru-detach-"))
    path.chmod(0o700)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHURU_RUNTIME_DIR", str(path))
        yield path
        subprocess.run([sys.executable, "-m", "shuru.cli", "stop", "--all"],
                       capture_output=True, timeout=120)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def creator(rundir):
    """A Python process that started `web` detached and a plain sandbox, still alive."""
    proc = subprocess.Popen([sys.executable, "-c", CREATOR], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    assert line == b"up\n", proc.stderr.read().decode()
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _record(name: str) -> dict | None:
    return next((r for r in registry.list_records() if r["name"] == name), None)


def test_attach_from_the_cli_and_a_second_process(creator):
    record = _record("web")
    assert record["state"] == "running" and record["owner_pid"] == creator.pid
    assert sorted(r["name"] for r in asyncio.run(AsyncSandbox.list())) == ["bound", "web"]
    assert record in Sandbox.list() and record["detached"] is True
    assert (record["cpus"], record["memory"]) == (1, 512)
    r = shuru("exec", "web", "--", "sh", "-c", "echo $((6 * 7)) > /tmp/answer; cat /tmp/answer")
    assert (r.returncode, r.stdout) == (0, b"42\n"), r.stderr
    assert shuru("exec", "web", "--", "sh", "-c", "exit 7").returncode == 7
    # A second Python process, with the spelling (connect on the class).
    code = ("from shuru import Sandbox\n"
            "with Sandbox.connect('web') as sb:\n"
            "    print(sb.files.read('/tmp/answer').decode().strip(), sb.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert out.stdout == b"42 web\n", out.stderr
    # The `with` only disconnected: web still runs.
    assert _record("web")["state"] == "running"


def test_a_name_in_use_is_refused(creator):
    with pytest.raises(ShuruError, match="'web' is already running"):
        asyncio.run(AsyncSandbox.start(name="web", detach=True, **SIZE))
    r = shuru("run", "--name", "web", "--", "true")
    assert r.returncode == 2 and b"--name is for detached sandboxes: add --detach" in r.stderr


def test_several_clients_at_once(creator):
    async def go():
        a = await AsyncSandbox.attach("web")
        b = await AsyncSandbox.connect("web")
        proc = await a.spawn(["sh", "-c", "read line; echo got $line"])
        # b runs its own commands while a's process waits for input
        results = await asyncio.gather(*(b.exec(f"echo {i}") for i in range(5)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]
        await proc.write("hello\n")
        await proc.close_stdin()
        assert await proc.wait() == 0
        await a.disconnect()
        assert (await b.exec("echo still")).stdout == "still\n"
        await b.disconnect()

    asyncio.run(go())


def test_pause_and_resume_keep_a_running_process_and_its_memory(creator):
    async def go():
        sb = await AsyncSandbox.attach("web")
        proc = await sb.spawn(["sh", "-c", "v=kept-$$; read line; echo $v $line"])
        pid = proc.pid
        await sb.pause()
        assert _record("web")["state"] == "paused"
        assert b"paused" in shuru("ps").stdout
        with pytest.raises(SandboxStateError):
            await sb.exec("true")
        stats = await sb.metrics()
        assert stats["state"] == "paused" and stats["memory"]["rss"] > 0
        await sb.resume()
        assert _record("web")["state"] == "running"
        await proc.write("back\n")
        chunks = [c.text async for c in proc]
        assert "".join(chunks) == f"kept-{pid} back\n"
        await sb.disconnect()

    asyncio.run(go())


def test_metrics_and_ps_stats(creator):
    with Sandbox.attach("web") as sb:
        m = sb.metrics()
    assert m["cpu_seconds"] > 0 and m["memory"]["rss"] > 0 and m["memory"]["pss"] > 0
    assert m["guest_memory"]["total"] > 256 * 1024 * 1024
    assert m["disk"] > 0 and m["uptime"] > 0 and m["network"] == {"up": 0, "down": 0}
    rows = json.loads(shuru("ps", "--json", "--stats").stdout)
    web = next(r for r in rows if r["name"] == "web")
    assert web["stats"]["memory"]["rss"] > 0


def test_a_second_uid_is_refused(creator, rundir, tmp_path):
    """Another user cannot reach the runtime directory at all; and should the socket itself
    be reachable (a hard link in a public directory, its mode opened up), the supervisor
    refuses the peer by its uid."""
    sock = registry.slot("web").sock
    public = Path(tempfile.mkdtemp(prefix="shuru-public-"))
    public.chmod(0o755)
    link = public / "web.sock"
    os.link(sock, link)
    mode = sock.stat().st_mode & 0o777
    read, write = os.pipe()
    try:
        os.chmod(sock, 0o666)
        pid = os.fork()
        if pid == 0:  # the other user
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                out = {}
                try:
                    Sandbox.attach("web")
                    out["attach"] = "allowed"
                except ShuruError as e:
                    out["attach"] = type(e).__name__ + ": " + str(e)
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(30)
                        s.connect(str(link))
                        s.sendall(b'{"op": "info"}\n')
                        out["direct"] = json.loads(s.makefile().readline())
                except Exception as e:
                    out["direct"] = repr(e)
                os.write(write, json.dumps(out).encode())
            except BaseException as e:
                os.write(write, json.dumps({"child": repr(e)}).encode())
            finally:
                os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.waitpid(pid, 0)
    finally:
        os.chmod(sock, mode)
        shutil.rmtree(public, ignore_errors=True)
    out = json.loads(data)
    assert out["attach"].startswith("HostError") and "belongs to uid 0" in out["attach"]
    with pytest.raises(AccessError, match="belongs to uid 0, and you are uid 65534"):
        raise_reply(out["direct"], "web")
    assert _record("web")["state"] == "running"


def test_shell_is_an_interactive_terminal(creator, rundir):
    import shlex

    from .conftest import SHURU
    from .test_interactive import Tmux

    env = " ".join(f"{k}={shlex.quote(os.environ[k])}"
                   for k in ("SHURU_RUNTIME_DIR", "SHURU_HOME") if k in os.environ)
    term = Tmux(f"env {env} {SHURU} shell web; echo shell-exited-$?; sleep 600")
    try:
        term.wait_for_prompt()
        term.send("tty; echo $((6 * 7))", "Enter")
        screen = term.wait_for("42")
        assert "/dev/pts/" in screen
        term.send("exit 3", "Enter")
        term.wait_for("shell-exited-3")
    finally:
        term.kill()
    assert _record("web")["state"] == "running"  # leaving the shell leaves the sandbox


def test_sigkill_of_the_creator_leaves_the_detached_sandbox_running(creator):
    plain_qemu = _children_named(creator.pid, "qemu-system")
    assert len(plain_qemu) == 1  # the plain sandbox's VM is the creator's child
    # A named sandbox that is not detached can be attached to from elsewhere...
    bound = _record("bound")
    assert bound["detached"] is False and bound["owner_pid"] == creator.pid
    r = shuru("exec", "bound", "--", "echo", "reached")
    assert (r.returncode, r.stdout) == (0, b"reached\n"), r.stderr
    creator.send_signal(signal.SIGKILL)
    creator.wait()
    _wait_gone(plain_qemu[0], timeout=30)  # the plain one died with its owner
    # ...but it is bound to its owner too: its supervisor stops it and lets go of the name.
    _wait_gone(bound["qemu_pid"], timeout=60)
    assert registry.slot("bound").wait_gone(60) and _record("bound") is None
    r = shuru("exec", "web", "--", "cat", "/tmp/answer")
    assert (r.returncode, r.stdout) == (0, b"42\n"), r.stderr
    assert _record("web")["state"] == "running"


def test_stop_ends_it_for_every_client(creator):
    async def go():
        sb = await AsyncSandbox.attach("web")
        r = shuru("stop", "web")
        assert r.returncode == 0 and r.stdout == b"stopped web\n", r.stderr
        with pytest.raises(ShuruError):
            await sb.exec("true")
        await sb.disconnect()

    asyncio.run(go())
    assert _record("web") is None
    assert not registry.slot("web").sock.exists()
    assert shuru("exec", "web", "--", "true").returncode == 125


def test_lifetime_set_timeout_and_idle_expiry(rundir):
    async def go():
        long = await AsyncSandbox.start(name="long", detach=True, lifetime=3600, **SIZE)
        idle = await AsyncSandbox.start(name="idle", detach=True, idle_timeout=4, **SIZE)
        # A silent process keeps `idle` busy past its idle timeout; once it ends, the
        # supervisor stops the sandbox, with this client still connected.
        r = await idle.exec("sleep 6; echo done")
        assert r.stdout == "done\n"
        await long.set_timeout(2)
        await long.disconnect()
        for name in ("idle", "long"):
            assert await asyncio.to_thread(registry.slot(name).wait_gone, 120), name
        with pytest.raises(ShuruError):
            await idle.exec("true")

    asyncio.run(go())
    assert _record("idle") is None and _record("long") is None


def test_prune_after_a_killed_supervisor(rundir):
    with Sandbox.start(name="doomed", detach=True, **SIZE) as sb:
        assert sb.exec("echo ok").stdout == "ok\n"
    record = _record("doomed")
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    _wait_gone(record["qemu_pid"], timeout=30)  # QEMU dies with its supervisor
    assert _record("doomed")["state"] == "dead"
    assert registry.slot("doomed").sock.exists()
    r = shuru("prune")
    assert (r.returncode, r.stdout) == (0, b"pruned doomed\n"), r.stderr
    assert _record("doomed") is None
    assert not registry.slot("doomed").sock.exists()
    assert not any(rundir.glob("sb-*"))  # and the QEMU's run directory went too


def test_run_detach_with_a_command_then_checkpoint_it(rundir):
    r = shuru("run", "--detach", "--name", "bg", "--cpus", "1", "--memory", "512", "--",
              "sh", "-c", "echo from-bg > /root/bg; exec sleep 1000")
    assert (r.returncode, r.stdout) == (0, b"bg\n"), r.stderr
    # The command runs in the background: wait for its file in the guest.
    r = shuru("exec", "bg", "--", "sh", "-c", "while [ ! -s /root/bg ]; do sleep 0.1; done; "
              "cat /root/bg; pgrep -x sleep >/dev/null && echo sleeping")
    assert r.stdout == b"from-bg\nsleeping\n", r.stderr
    from shuru import checkpoints

    with Sandbox.attach("bg") as sb:
        cp = sb.checkpoint("detached-bg", overwrite=True)
    try:
        assert cp.name == "detached-bg" and checkpoints.load("detached-bg").disk.exists()
        assert _record("bg") is None  # a checkpoint stops the sandbox, as it does any
    finally:
        checkpoints.delete("detached-bg")


def test_a_plain_sandbox_pauses_reports_metrics_and_takes_a_new_lifetime(rundir):
    async def go():
        sb = await AsyncSandbox.start(**SIZE)
        try:
            proc = await sb.spawn(["sh", "-c", "read line; echo got $line"])
            await sb.pause()
            with pytest.raises(SandboxStateError, match="paused"):
                await sb.exec("true")
            paused = await sb.metrics()
            assert paused["state"] == "paused" and paused["guest_memory"] is None
            await sb.resume()
            await proc.write("it\n")
            assert [c.text async for c in proc] == ["got it\n"]
            m = await sb.metrics()
            assert m["guest_memory"]["used"] > 0 and m["cpu_seconds"] > 0
            with pytest.raises(ShuruError, match="idle_timeout is for detached"):
                await sb.set_timeout(idle_timeout=5)
            await sb.set_timeout(1)
            await asyncio.wait_for(asyncio.shield(sb._machine.exited), 60)
        finally:
            await sb.stop()

    asyncio.run(go())


def test_detach_refuses_flags_that_need_the_terminal(rundir):
    r = shuru("run", "--detach", "--verbose", "--", "true")
    assert r.returncode == 2 and b"--verbose shows what happens" in r.stderr
