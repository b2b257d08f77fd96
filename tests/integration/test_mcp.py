"""`shuru mcp` against real VMs: the real `shuru` console script started as a stdio
subprocess by the mcp package's own `Client`, as an MCP client (Claude Desktop, Cursor)
would start it. One session story (sandbox, exec, files, a long-running process, errors,
a checkpoint and a sandbox started from it, disconnect), and the server killed with
SIGKILL and with SIGTERM."""

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from shuru import checkpoints as ck

from .conftest import SHURU

pytestmark = pytest.mark.usefixtures("image")


def server() -> StdioServerParameters:
    # The client passes only a few safe variables by default; the server needs the data dir
    # and the private runtime root (the runtime_dir fixture) that this test inspects.
    return StdioServerParameters(command=SHURU, args=["mcp"], env=dict(os.environ))


def qemus(runtime_dir: Path) -> list[int]:
    """Pids of QEMU processes whose sockets live under runtime_dir (ours, nobody else's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and \
                any(str(runtime_dir).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


def wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if Path(f"/proc/{p}").exists()]) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


async def call(client: Client, tool: str, **args) -> dict:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def read_until(client: Client, process_id: str, want) -> tuple[str, dict]:
    """Read a process's output until want(text so far, last result) holds."""
    text = ""
    for _ in range(20):
        out = await call(client, "read_process_output", process_id=process_id, wait_seconds=30)
        text += out["stdout"]
        if want(text, out):
            return text, out
    raise AssertionError(f"never got what was wanted; output so far {text!r}, last {out!r}")


@pytest.fixture
def checkpoint_name():
    name = f"mcp-{uuid.uuid4().hex[:8]}"
    yield name
    if (ck.checkpoints_dir() / name).exists():
        ck.delete(name)


async def test_a_session_runs_commands_files_processes_and_stops_its_vms_on_disconnect(
        runtime_dir, checkpoint_name):
    async with Client(server()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"start_sandbox", "list_sandboxes", "stop_sandbox", "exec", "start_process",
                "read_process_output", "write_process_stdin", "signal_process", "read_file",
                "write_file", "list_files", "checkpoint_sandbox"} <= set(tools)
        assert tools["exec"].input_schema["required"] == ["sandbox_id", "command"]
        assert tools["exec"].description

        sid = (await call(client, "start_sandbox", cpus=1, memory_mb=1024))["sandbox_id"]
        assert [s["sandbox_id"] for s in (await call(client, "list_sandboxes"))["sandboxes"]] \
            == [sid]

        r = await call(client, "exec", sandbox_id=sid, command="echo out; echo err >&2; exit 3")
        assert (r["exit_code"], r["stdout"], r["stderr"]) == (3, "out\n", "err\n")
        r = await call(client, "exec", sandbox_id=sid, command=["pwd"], cwd="/tmp",
                       env={"X": "1"})
        assert r["stdout"] == "/tmp\n"
        # Output past the bound comes back cut in the middle, with a note saying so.
        r = await call(client, "exec", sandbox_id=sid,
                       command="head -c 100000 /dev/zero | tr '\\0' x; echo END")
        assert r["stdout"].startswith("xxx") and r["stdout"].endswith("END\n")
        assert len(r["stdout"]) < 40000 and "bytes cut" in r["stdout"] and r["notes"]
        r = await call(client, "exec", sandbox_id=sid, command="sleep 60", timeout_seconds=1)
        assert r["exit_code"] is None and "1" in r["error"]

        await call(client, "write_file", sandbox_id=sid, path="/work/app/run.sh",
                   content="#!/bin/sh\necho ran\n", mode="755")
        assert (await call(client, "read_file", sandbox_id=sid,
                           path="/work/app/run.sh"))["content"] == "#!/bin/sh\necho ran\n"
        entries = (await call(client, "list_files", sandbox_id=sid, path="/work/app"))["entries"]
        assert [(e["name"], e["type"], e["mode"]) for e in entries] == [("run.sh", "file", "0o755")]
        assert (await call(client, "exec", sandbox_id=sid,
                           command="/work/app/run.sh"))["stdout"] == "ran\n"

        # A long-running process: its output, its stdin, its end; another one signalled.
        pid = (await call(client, "start_process", sandbox_id=sid, command=(
            "echo ready; while read line; do echo \"got $line\"; done; echo bye; exit 7"
        )))["process_id"]
        await read_until(client, pid, lambda text, _: text == "ready\n")
        await call(client, "write_process_stdin", process_id=pid, data="hello\n")
        await read_until(client, pid, lambda text, _: text == "got hello\n")
        await call(client, "write_process_stdin", process_id=pid, data="", close=True)
        text, out = await read_until(client, pid, lambda _, out: not out["running"])
        assert "bye\n" in text and out["exit_code"] == 7
        sleeper = (await call(client, "start_process", sandbox_id=sid,
                              command="sleep 600"))["process_id"]
        await call(client, "signal_process", process_id=sleeper, signal="TERM")
        _, out = await read_until(client, sleeper, lambda _, out: not out["running"])
        assert out["exit_code"] == 128 + signal.SIGTERM

        # Output past one read's bound waits for the next read: none of it is lost.
        counter = (await call(client, "start_process", sandbox_id=sid,
                              command="seq 1 30000"))["process_id"]
        text, out = await read_until(
            client, counter, lambda text, out: not out["running"] and "notes" not in out)
        assert text == "".join(f"{i}\n" for i in range(1, 30001))  # 168,894 bytes

        # Errors are tool errors carrying shuru's message; the server goes on serving.
        missing = await client.call_tool("read_file", {"sandbox_id": sid, "path": "/nope"})
        assert missing.is_error and "/nope: No such file or directory" in missing.content[0].text
        unknown = await client.call_tool("exec", {"sandbox_id": "sb-99", "command": "true"})
        assert unknown.is_error and "no sandbox 'sb-99'" in unknown.content[0].text
        secret = await client.call_tool("start_sandbox", {"secrets": ["AWS_SECRET_ACCESS_KEY"]})
        assert secret.is_error and "not offered by this server" in secret.content[0].text
        bad = await client.call_tool("signal_process", {"process_id": pid, "signal": "BOGUS"})
        assert bad.is_error

        # A checkpoint stops its sandbox; a sandbox started from it has the files.
        await call(client, "checkpoint_sandbox", sandbox_id=sid, name=checkpoint_name)
        assert (await call(client, "list_sandboxes"))["sandboxes"] == []
        fork = (await call(client, "start_sandbox", from_checkpoint=checkpoint_name, cpus=1,
                           memory_mb=1024))["sandbox_id"]
        assert (await call(client, "exec", sandbox_id=fork,
                           command="/work/app/run.sh"))["stdout"] == "ran\n"
        running = qemus(runtime_dir)
        assert len(running) == 1
        # Disconnect with the fork still running.

    assert wait_gone(running) == []
    # The session stopped it itself (its run directory is gone, not left for a sweep).
    assert list(runtime_dir.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
async def test_a_killed_server_leaves_no_vm(runtime_dir, sig):
    async with Client(server()) as client:  # the client keeps the server's stdin open
        await call(client, "start_sandbox", cpus=1, memory_mb=1024)
        (qemu,) = qemus(runtime_dir)
        status = Path(f"/proc/{qemu}/status").read_text()
        server_pid = int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("PPid:")))
        assert "shuru" in Path(f"/proc/{server_pid}/cmdline").read_text()
        os.kill(server_pid, sig)
        assert wait_gone([qemu]) == []
        if sig == signal.SIGTERM:
            # Stopped by the server itself, not a VM that died with it: nothing left behind.
            assert wait_gone([server_pid]) == [] and list(runtime_dir.iterdir()) == []
        with pytest.raises(Exception):  # the connection is gone, and the client says so
            await client.call_tool("list_sandboxes", {})
