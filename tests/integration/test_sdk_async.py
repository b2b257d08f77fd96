"""The async SDK against real VMs: every test runs twice, on a sandbox that booted cold and
on one restored from saved machine state (module-scoped: one start of each for all tests)."""

import asyncio
import os
import signal

import pytest
import pytest_asyncio

from shuru import (AsyncSandbox, ExecTimeoutError, GuestFileError, GuestFileNotFoundError,
                   SandboxStateError, State)

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["cold", "restored"])
async def sb(request):
    cold = request.param == "cold"
    sandbox = await AsyncSandbox.start(cpus=2, memory=1024, env={"SANDBOX_WIDE": "1"}, cold=cold)
    assert sandbox.restored is not cold
    yield sandbox
    await sandbox.stop()


async def test_exec_string_and_argv(sb):
    r = await sb.exec("echo $SANDBOX_WIDE $0; exit 3")
    assert (r.stdout, r.exit_code) == ("1 sh\n", 3)
    r = await sb.exec(["printf", "%s|", "a b", "c"])
    assert r.stdout == "a b|c|" and r.stdout_bytes == b"a b|c|"


async def test_exec_options(sb):
    r = await sb.exec("pwd; id -un; echo $X", cwd="/tmp", env={"X": "y"}, user="nobody")
    assert r.stdout.split() == ["/tmp", "nobody", "y"]
    r = await sb.exec("cat | tr a-z A-Z", stdin="shout")
    assert r.stdout == "SHOUT"
    r = await sb.exec("echo $0", shell="bash")
    assert r.stdout.strip() == "bash"


async def test_exec_timeout_kills_the_group_and_keeps_partial_output(sb):
    with pytest.raises(ExecTimeoutError) as e:
        await sb.exec("echo before; sleep 600 & sleep 600", timeout=2)
    assert e.value.stdout == b"before\n"
    r = await sb.exec("pgrep -c -x sleep || true")
    assert r.stdout.strip() == "0"


async def test_command_not_found(sb):
    r = await sb.exec(["nope-not-here"])
    assert r.exit_code == 127 and "command not found" in r.stderr


async def test_spawn_stream_stdin_signal(sb):
    proc = await sb.spawn(["sh", "-c", "echo ready; while read l; do echo got:$l; done"])
    assert proc.pid > 1
    seen = ""
    async for chunk in proc:
        seen += chunk.text
        if seen == "ready\n":
            await proc.write("one\n")
        elif "got:one" in seen:
            await proc.signal(signal.SIGTERM)
    assert seen == "ready\ngot:one\n"
    assert await proc.wait() == 128 + signal.SIGTERM


async def test_spawn_close_stdin_and_callbacks(sb):
    out, exits = [], []
    proc = await sb.spawn("wc -c")
    proc.on("stdout", out.append).on("exit", exits.append)
    await proc.write(b"x" * 100_000)
    await proc.close_stdin()
    assert await proc.wait() == 0
    await asyncio.sleep(0)
    assert b"".join(out).strip() == b"100000" and exits == [0]


async def test_concurrent_execs_and_spawns(sb):
    async def spawned(i):
        p = await sb.spawn(["sh", "-c", f"for n in 1 2 3; do echo {i}-$n; done"])
        text = "".join([c.text async for c in p])
        return text, await p.wait()

    execs = [sb.exec(f"echo {i}; exit {i % 4}") for i in range(20)]
    spawns = [spawned(i) for i in range(5)]
    results = await asyncio.gather(*execs, *spawns)
    for i, r in enumerate(results[:20]):
        assert (r.stdout, r.exit_code) == (f"{i}\n", i % 4)
    for i, (text, code) in enumerate(results[20:]):
        assert (text, code) == (f"{i}-1\n{i}-2\n{i}-3\n", 0)


async def test_files(sb):
    await sb.files.write("/app/data/x.txt", "hello")
    assert await sb.files.read_text("/app/data/x.txt") == "hello"
    assert (await sb.exec("cat /app/data/x.txt")).stdout == "hello"
    await sb.files.mkdir("/app/empty/deep")
    assert [e.name for e in await sb.files.list("/app")] == ["data", "empty"]
    info = await sb.files.stat("/app/data/x.txt")
    assert (info.type, info.size) == ("file", 5)
    await sb.files.copy("/app/data", "/app/data2")
    await sb.files.rename("/app/data2/x.txt", "/app/data2/y.txt")
    await sb.files.chmod("/app/data2/y.txt", 0o600)
    assert (await sb.exec("stat -c %a /app/data2/y.txt")).stdout.strip() == "600"
    await sb.files.remove("/app/data2")
    assert not await sb.files.exists("/app/data2")
    with pytest.raises(GuestFileNotFoundError):
        await sb.files.read("/app/nothing")
    with pytest.raises(GuestFileNotFoundError, match="/root/app/relative"):
        await sb.files.read("app/relative")  # relative to the working directory (/root)
    with pytest.raises(GuestFileError) as e:
        await sb.files.read("/app")
    assert e.value.code == "EISDIR"


async def test_host_guest_copies(sb, tmp_path):
    src = tmp_path / "tree"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/blob").write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    (src / "top").write_text("t")
    await sb.files.upload(src, "/srv/tree")
    r = await sb.exec("find /srv/tree -type f | sort; sha256sum /srv/tree/a/b/blob")
    assert "/srv/tree/a/b/blob\n/srv/tree/top\n" in r.stdout
    await sb.files.download("/srv/tree", tmp_path / "back")
    assert (tmp_path / "back/a/b/blob").read_bytes() == (src / "a/b/blob").read_bytes()


async def test_watch_in_the_guest(sb):
    events = []
    seen = asyncio.Event()

    def on_event(e):
        events.append(e)
        seen.set()

    async def until(*want):
        while not set(want) <= {(e.kind, e.path) for e in events}:
            seen.clear()
            await asyncio.wait_for(seen.wait(), 20)

    await sb.files.mkdir("/watched")
    w = await sb.watch("/watched", on_event)
    # A file made in a directory that is itself new is reported, however fast it came.
    await sb.exec("mkdir -p /watched/new/sub && echo x > /watched/new/sub/early")
    await until(("create", "/watched/new/sub"), ("create", "/watched/new/sub/early"))
    # Once the new directory is watched, every change in it is reported as it happens.
    await sb.exec("echo x > /watched/new/sub/f && echo y >> /watched/new/sub/f && "
                  "mv /watched/new/sub/f /watched/g && rm /watched/g")
    await until(("create", "/watched/new/sub/f"), ("modify", "/watched/new/sub/f"),
                ("rename", "/watched/new/sub/f"), ("delete", "/watched/g"))
    await w.stop()


async def test_guest_facts(sb):
    r = await sb.exec("hostname; nproc; cat /proc/1/comm; mount | grep -c cgroup2")
    host, cpus, init, cg = r.stdout.split()
    assert (host, cpus, cg) == ("shuru", "2", "1")
    assert init.startswith("python") or init == "shuru-init"


async def test_calls_after_stop_are_state_errors():
    sandbox = await AsyncSandbox.start(cpus=1, memory=512)
    await sandbox.stop()
    await sandbox.stop()  # idempotent
    assert sandbox.state == State.STOPPED
    with pytest.raises(SandboxStateError, match="stopped"):
        await sandbox.exec("true")
    with pytest.raises(SandboxStateError):
        await sandbox.files.read("/etc/hostname")


async def test_a_guest_that_dies_fails_calls_fast():
    from shuru import SandboxDiedError
    sandbox = await AsyncSandbox.start(cpus=1, memory=512)
    try:
        proc = await sandbox.spawn("sleep 600")
        await sandbox.spawn("echo o > /proc/sysrq-trigger")  # power off at once
        with pytest.raises(SandboxDiedError):
            await proc.wait(timeout=60)
        with pytest.raises((SandboxDiedError, SandboxStateError)):
            await sandbox.exec("true")
    finally:
        await sandbox.stop()
