"""The OpenAI Agents SDK on real shuru VMs: a `SandboxAgent`, driven by the SDK's own
scripted model, runs commands, writes files and reads them back through the SDK's tools in a
VM the runner creates with `ShuruSandboxClient` and deletes after; the workspace it leaves is
persisted as a tar snapshot, and a new VM started from that snapshot is hydrated with it.
Three VMs in all: one for the agent run, one for the restored session (which also checks the
SDK's file calls, an exposed port and an interactive PTY process), and one for a later run
that resumes that session from its serialised state."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import urllib.request

import pytest
from agents import Runner
from agents.items import ToolCallOutputItem
from agents.run import RunConfig
from agents.sandbox import Manifest, SandboxAgent, SandboxRunConfig
from agents.sandbox.entries import File
from agents.sandbox.errors import (WorkspaceArchiveWriteError, WorkspaceReadNotFoundError,
                                   WorkspaceStartError)
from agents.sandbox.snapshot import LocalSnapshot, LocalSnapshotSpec
from agents.testing import ScriptedModel, assistant_message, function_call

from shuru.integrations.openai_agents import (ShuruSandboxClient, ShuruSandboxClientOptions,
                                              ShuruSandboxSessionState)

pytestmark = [pytest.mark.usefixtures("image")]

SCRIPT = "print(sum(range(10)))\n"


def exec_command(cmd: str, call_id: str) -> object:
    return function_call("exec_command", {"cmd": cmd, "yield_time_ms": 60_000},
                         call_id=call_id)


async def test_an_agent_works_in_a_vm_and_its_workspace_survives_into_a_new_one(
        tmp_path, runtime_dir):
    model = ScriptedModel([
        [exec_command("pwd && head -1 /etc/os-release && cat brief.txt", "c1")],
        [exec_command(f"mkdir -p src && printf '{SCRIPT.strip()}\\n' > src/sum.py "
                      "&& echo wrote", "c2")],
        [exec_command("cat src/sum.py && python3 src/sum.py && echo exit=$?", "c3")],
        [assistant_message("done")],
    ])
    agent = SandboxAgent(name="worker", instructions="Work in the sandbox.", model=model)
    snapshots = tmp_path / "snapshots"
    client = ShuruSandboxClient()
    run_config = RunConfig(
        sandbox=SandboxRunConfig(
            client=client, options=ShuruSandboxClientOptions(memory=1024),
            manifest=Manifest(entries={"brief.txt": File(content=b"the brief\n")}),
            snapshot=LocalSnapshotSpec(base_path=snapshots)),
        tracing_disabled=True)

    result = await Runner.run(agent, "Write and run a script.", run_config=run_config)

    assert result.final_output == "done"
    model.assert_complete()
    outputs = [str(item.output) for item in result.new_items
               if isinstance(item, ToolCallOutputItem)]
    assert len(outputs) == 3, outputs
    # The commands ran in the VM, in the workspace, where the manifest put the brief.
    assert "/workspace" in outputs[0] and "Debian" in outputs[0], outputs[0]
    assert "the brief" in outputs[0], outputs[0]
    assert "wrote" in outputs[1], outputs[1]
    assert SCRIPT.strip() in outputs[2] and "45" in outputs[2] and "exit=0" in outputs[2]
    assert not client._live, "the runner's session must have stopped its VM"

    # The runner persisted the workspace when the session stopped: one portable tar.
    (archive,) = snapshots.glob("*.tar")
    # A new session (a new VM) from that snapshot is hydrated with the same workspace.
    session = await client.create(
        snapshot=LocalSnapshot(id=archive.stem, base_path=snapshots),
        options=ShuruSandboxClientOptions(memory=1024, exposed_ports=(8000,)))
    async with session:
        state = session.state
        assert isinstance(state, ShuruSandboxSessionState)
        sandbox = session._inner.sandbox
        assert (await sandbox.files.read_text("/workspace/src/sum.py")) == SCRIPT
        ran = await session.exec("python3 src/sum.py && cat brief.txt")
        assert ran.exit_code == 0 and ran.stdout == b"45\nthe brief\n", ran.stderr

        # The SDK's own file calls, with paths relative to the workspace.
        await session.write("notes/out.txt", _bytes(b"written by the SDK\n"))
        assert (await session.read("notes/out.txt")).read() == b"written by the SDK\n"
        assert (await sandbox.files.read("/workspace/notes/out.txt")) == b"written by the SDK\n"
        with pytest.raises(WorkspaceReadNotFoundError):
            await session.read("missing.txt")
        await session.exec("head -c 3000000 /dev/zero > zeros.bin")
        assert await session.read_bounded("zeros.bin", max_bytes=10) == bytes(10)
        with pytest.raises(WorkspaceReadNotFoundError):
            await session.read_bounded("missing.txt", max_bytes=10)
        # ... and as another user of the guest, with that user's permissions.
        assert (await session.exec("id -un", user="nobody")).stdout == b"nobody\n"
        assert (await session.read("brief.txt", user="nobody")).read() == b"the brief\n"
        with pytest.raises(WorkspaceArchiveWriteError):
            await session.write("by-nobody.txt", _bytes(b"refused"), user="nobody")
        await session.exec("mkdir -m 777 shared")
        await session.write("shared/n.txt", _bytes(b"mine\n"), user="nobody")
        owner = await session.exec("stat -c %U:%s shared/n.txt")
        assert owner.stdout == b"nobody:5\n", owner.stdout

        # persist_workspace gives workspace-relative members, without the skipped paths.
        await session.write("cache/big.bin", _bytes(b"x" * 1000))
        await session.write("keep-me.txt", _bytes(b"kept"))
        session.register_persist_workspace_skip_path("cache")
        session.register_persist_workspace_skip_path("keep-*")  # a name, not a pattern
        persisted = await session.persist_workspace()
        with tarfile.open(fileobj=persisted, mode="r:") as tar:
            names = {name.removeprefix("./") for name in tar.getnames()}
        assert {"src/sum.py", "brief.txt", "notes/out.txt", "shared/n.txt",
                "keep-me.txt"} <= names, names
        assert not any(name.startswith("cache") for name in names), names

        # An exposed port reaches a server in the guest from the host's loopback.
        server = await sandbox.spawn("python3 -m http.server 8000 --bind 127.0.0.1",
                                     cwd="/workspace")
        ready = await session.exec(
            "for i in $(seq 300); do python3 -c \"import socket; "
            "socket.create_connection(('127.0.0.1', 8000))\" 2>/dev/null && exit 0; "
            "sleep 0.2; done; exit 1")
        assert ready.exit_code == 0
        endpoint = await session.resolve_exposed_port(8000)
        assert endpoint.host == "127.0.0.1"
        body = await asyncio.to_thread(_fetch, endpoint.url_for("http") + "brief.txt")
        assert body == b"the brief\n"
        await server.kill()

        # An interactive process on a PTY: it waits for input, then answers it.
        update = await session.pty_exec_start("read x; echo got-$x", tty=True,
                                              yield_time_s=0.3)
        assert update.process_id is not None and update.exit_code is None
        answer = update.output
        update = await session.pty_write_stdin(session_id=update.process_id, chars="hi\n",
                                               yield_time_s=5)
        answer += update.output
        for _ in range(60):  # polls of at least 5 s each: a generous bound, not a timing
            if update.exit_code is not None:
                break
            update = await session.pty_write_stdin(session_id=update.process_id or 0,
                                                   chars="")
            answer += update.output
        assert update.exit_code == 0 and b"got-hi" in answer, answer

        # resume() of a session whose VM still runs here reattaches to that VM.
        reattached = await client.resume(state)
        assert reattached._inner is session._inner and await reattached.running()

        # The state round-trips through JSON, for a resume() in another process.
        payload = json.loads(json.dumps(client.serialize_session_state(state)))
    await client.delete(session)  # closing persisted the workspace into the snapshot again
    assert not await session._inner.running()
    assert not client._live

    # A later run resumes that state: a new VM, hydrated from the session's snapshot.
    resumed_state = client.deserialize_session_state(payload)
    assert isinstance(resumed_state, ShuruSandboxSessionState)
    assert resumed_state.options.exposed_ports == (8000,) and resumed_state.type == "shuru"
    model = ScriptedModel([[exec_command("cat notes/out.txt src/sum.py", "c4")],
                           [assistant_message("resumed")]])
    agent = SandboxAgent(name="worker", instructions="Work in the sandbox.", model=model)
    result = await Runner.run(
        agent, "Show the notes.", run_config=RunConfig(
            sandbox=SandboxRunConfig(client=client, session_state=resumed_state),
            tracing_disabled=True))
    assert result.final_output == "resumed"
    (output,) = [str(item.output) for item in result.new_items
                 if isinstance(item, ToolCallOutputItem)]
    assert "written by the SDK" in output and SCRIPT.strip() in output, output
    assert not client._live
    assert not list(runtime_dir.iterdir()), "a VM was left behind"


def _bytes(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


async def test_a_session_that_fails_to_start_leaves_no_vm(runtime_dir):
    client = ShuruSandboxClient()
    # The VM boots, then the workspace cannot be made (nothing can be created under /proc).
    session = await client.create(manifest=Manifest(root="/proc/workspace"),
                                  options=ShuruSandboxClientOptions(memory=1024))
    with pytest.raises(WorkspaceStartError) as caught:
        await session.start()
    assert "/proc/workspace" in str(caught.value.__cause__)
    assert not await session.running() and not client._live
    assert not list(runtime_dir.iterdir()), "a VM was left behind"
