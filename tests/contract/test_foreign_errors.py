"""No foreign exception reaches a caller: every public method of AsyncSandbox, Process, files
and Watch, driven through the failure paths, returns or raises a ShuruError, and never hangs.

The failure paths: a guest agent that breaks the wire protocol (a frame that does not decode),
one that goes away (its end of the channel closes), one that keeps to the framing but answers
nonsense (wrong values, a process that never exits), a VM that dies under the sandbox, and,
through the real agent, host files that fail and requests too big for one frame. The sandbox
is an AsyncSandbox around a Channel to a peer on a socketpair, so no VM is needed."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from shuru import AsyncSandbox, ShuruError, State
from shuru.channel import Channel
from shuru_guest import wire

CALL_LIMIT = 20  # seconds; a call still running after this is reported as a hang


class FakeMachine:
    """What AsyncSandbox needs of a machine; `die()` is the VM going away."""

    accel = None
    restored_from = None

    def __init__(self):
        self.exited = asyncio.get_running_loop().create_future()

    def console_tail(self, lines: int = 40) -> str:
        return ""

    def die(self) -> None:
        if not self.exited.done():
            self.exited.set_result(137)

    async def stop(self) -> None:
        self.die()


def sandbox_on(channel: Channel) -> AsyncSandbox:
    """A running AsyncSandbox whose agent channel is `channel` and whose VM is a FakeMachine
    (what `_boot` would have set up)."""
    sandbox = AsyncSandbox()
    sandbox._machine = FakeMachine()
    sandbox._channel = channel
    sandbox.state = State.RUNNING
    sandbox._machine.exited.add_done_callback(sandbox._on_machine_exit)
    return sandbox


# What the nonsense peer answers to each fs op: well-framed, wrongly typed.
NONSENSE = {"stat": "not a map", "list": [{"name": 5}, 7], "walk": [1, "two"],
            "exists": {"maybe": True}}


class Peer:
    """A guest agent that says hello and then behaves as `mode` says: "nonsense" answers
    every request with well-framed nonsense (a process that never exits on its own, results
    of the wrong type; the first process it starts runs until it is signalled); once
    `trip()`ped, "garbage" answers anything with a frame that does
    not decode and "closed" closes its end of the channel."""

    def __init__(self, mode: str):
        self.mode = mode
        self.tripped = False
        self.kinds: dict[int, str] = {}  # stream id -> the request that opened it

    async def connect(self) -> Channel:
        host, guest = socket.socketpair()
        self.reader, self.writer = await asyncio.open_connection(sock=guest)
        self.task = asyncio.create_task(self.serve())
        reader, writer = await asyncio.open_connection(sock=host)
        self.channel = Channel(reader, writer)
        await self.channel.handshake()
        return self.channel

    def send(self, t: str, s: int, **fields) -> None:
        self.writer.write(wire.message(t, s, **fields))

    def trip(self) -> None:
        self.tripped = True

    async def serve(self) -> None:
        self.send("hello", 0, version=wire.VERSION)
        decoder = wire.FrameDecoder()
        try:
            while data := await self.reader.read(256 * 1024):
                for msg in decoder.feed(data):
                    self.answer(msg)
                await self.writer.drain()
        except (ConnectionError, wire.WireError):
            pass
        finally:
            self.writer.close()

    def answer(self, msg: dict) -> None:
        s, t = msg["s"], msg["t"]
        if s == wire.CONTROL:
            if t == "ping":
                self.send("pong", 0, id=msg["id"])
            elif t == "shutdown":
                self.send("shutdown", 0)
            return
        if self.tripped and self.mode == "garbage":
            self.writer.write(wire.HEADER.pack(5) + b"hello")  # five fixints: not one map
            return
        if self.tripped and self.mode == "closed":
            self.writer.close()
            return
        kind = self.kinds.setdefault(s, t)
        if t == "exec":
            self.send("started", s, pid=4242)
            if msg.get("stdin") is False:  # an exec without stdin: it "ran" and is done
                self.send("exit", s, code=0, signal=None)
        elif t == "fs":
            self.send("eof", s, fd=1)  # what ends a streamed listing, before the result
            self.send("result", s, value=NONSENSE.get(msg["op"], [None]))
        elif t == "read":
            self.send("data", s, fd=1, d=b"x")
            self.send("eof", s, fd=1)
            self.send("result", s, value=None)
        elif t == "watch":
            self.send("result", s, value=None)
            self.send("event", s, kind="nonsense", path="")
        elif t == "cancel":
            self.send("result", s, value=None)
        elif t == "eof" and kind == "exec" and s != min(self.kinds):
            self.send("exit", s, code=0, signal=None)  # exec with stdin: done once it is in
        elif t == "eof" and kind == "write":
            self.send("result", s, value={"size": "many"})
        elif t == "data" and kind == "write":
            self.send("credit", s, fd=0, n=len(msg["d"]))
        elif t == "signal" and kind == "exec":
            self.send("exit", s, code=None, signal=msg["sig"])

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def outcome(name: str, make) -> str | None:
    """None when `make()` returned or raised a ShuruError; else what went wrong."""
    task = asyncio.ensure_future(make())
    done, _ = await asyncio.wait({task}, timeout=CALL_LIMIT)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return f"{name}: hung for {CALL_LIMIT} s"
    error = task.exception()
    if error is None or isinstance(error, ShuruError):
        return None
    return f"{name}: {type(error).__module__}.{type(error).__qualname__}: {error}"


def sandbox_calls(sb: AsyncSandbox, tmp_path) -> list:
    host_file = tmp_path / "host.txt"
    host_file.write_text("hi")

    async def iterate_read():
        return [chunk async for chunk in sb.files.iter_read("/g/file")]

    async def sync(fn, *args):
        return fn(*args)

    return [
        ("exec", lambda: sb.exec("true")),
        ("exec with stdin and timeout", lambda: sb.exec("cat", stdin="x", timeout=5)),
        ("spawn", lambda: sb.spawn(["true"])),
        ("watch", lambda: sb.watch("/g", lambda event: None)),
        ("files.stat", lambda: sb.files.stat("/g/file")),
        ("files.exists", lambda: sb.files.exists("/g/file")),
        ("files.list", lambda: sb.files.list("/g")),
        ("files.mkdir", lambda: sb.files.mkdir("/g/d")),
        ("files.remove", lambda: sb.files.remove("/g/d")),
        ("files.rename", lambda: sb.files.rename("/g/a", "/g/b")),
        ("files.copy", lambda: sb.files.copy("/g/a", "/g/b")),
        ("files.chmod", lambda: sb.files.chmod("/g/a", 0o600)),
        ("files.read", lambda: sb.files.read("/g/file")),
        ("files.read_text", lambda: sb.files.read_text("/g/file")),
        ("files.iter_read", iterate_read),
        ("files.write", lambda: sb.files.write("/g/file", b"data")),
        ("files.upload", lambda: sb.files.upload(host_file, "/g/up")),
        ("files.download", lambda: sb.files.download("/g", tmp_path / "down")),
        ("checkpoint", lambda: sb.checkpoint("foreign-errors")),
        ("network_log", lambda: sync(sb.network_log)),
        ("console_tail", lambda: sync(sb.console_tail)),
    ]


def process_calls(proc) -> list:
    async def iterate():
        return [chunk async for chunk in proc]

    return [
        ("Process.write", lambda: proc.write(b"x")),
        ("Process.close_stdin", proc.close_stdin),
        ("Process.resize", lambda: proc.resize(30, 100)),
        ("Process.wait with a timeout", lambda: proc.wait(timeout=0.2)),
        ("Process.signal", proc.signal),
        ("Process.kill", proc.kill),
        ("Process.wait", proc.wait),
        ("Process iteration", iterate),
    ]


async def drive(sb: AsyncSandbox, proc, watch, tmp_path) -> list[str]:
    calls = process_calls(proc) + sandbox_calls(sb, tmp_path) + [("Watch.stop", watch.stop)]
    return [p for name, make in calls if (p := await outcome(name, make)) is not None]


@pytest.mark.parametrize("mode", ["garbage", "closed", "nonsense"])
async def test_a_misbehaving_agent_raises_only_shuru_errors(mode, tmp_path):
    peer = Peer(mode)
    sb = sandbox_on(await peer.connect())
    try:
        proc = await sb.spawn("sleep 600")
        watch = await sb.watch("/g", lambda event: None)
        peer.trip()
        problems = await drive(sb, proc, watch, tmp_path)
        assert not problems, "\n".join(problems)
    finally:
        await sb.stop()
        await peer.close()


async def test_a_dead_vm_raises_only_shuru_errors(tmp_path):
    peer = Peer("closed")
    sb = sandbox_on(await peer.connect())
    try:
        proc = await sb.spawn("sleep 600")
        watch = await sb.watch("/g", lambda event: None)
        sb._machine.die()
        peer.trip()
        await peer.close()
        assert sb.state == State.FAILED
        problems = await drive(sb, proc, watch, tmp_path)
        assert not problems, "\n".join(problems)
    finally:
        await sb.stop()


async def test_host_side_failures_and_oversized_requests_raise_only_shuru_errors(agent, tmp_path):
    sb = sandbox_on(agent.channel)
    (tmp_path / "a-file").write_text("x")
    big = ["echo"] + ["a" * 8192] * 16  # 128 KiB of argv: more than one frame
    calls = [
        # the host file fails while it is read
        ("upload of an unreadable host file", lambda: sb.files.upload("/proc/self/mem",
                                                                      str(tmp_path / "m"))),
        # the host destination cannot be made: a file stands where a directory must go
        ("download under a host file", lambda: sb.files.download(
            str(tmp_path / "a-file"), tmp_path / "a-file" / "sub" / "x")),
        ("exec of an argv bigger than a frame", lambda: sb.exec(big)),
        ("spawn of an argv bigger than a frame", lambda: sb.spawn(big)),
        ("files.write to a path bigger than a frame",
         lambda: sb.files.write("/" + "p" * 100_000, b"x")),
        ("files.stat of a path bigger than a frame",
         lambda: sb.files.stat("/" + "p" * 100_000)),
    ]
    problems = [p for name, make in calls if (p := await outcome(name, make)) is not None]
    assert not problems, "\n".join(problems)
    assert (await sb.exec("true")).exit_code == 0  # and the channel is still fine
    sb.state = State.STOPPED  # the agent fixture closes the channel
