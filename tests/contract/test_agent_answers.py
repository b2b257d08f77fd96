"""A hostile guest that answers each request with the wrong message: every SDK call fails
with ProtocolError at once, instead of waiting forever, skipping the message, or taking a
value of the wrong shape for a real one. A scripted guest on a socketpair plays the agent."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from shuru.channel import Channel
from shuru.errors import ProtocolError
from shuru.files import Files, start_watch
from shuru.mounts import MountSpec, mount
from shuru.ports import open_stream
from shuru.process import run_to_completion
from shuru_guest import wire

TIMEOUT = 10  # generous: a right answer takes milliseconds; the old code waited forever

STARTED = lambda s: [wire.message("started", s, pid=7)]  # noqa: E731


class ScriptedGuest:
    """Says hello, then answers each request the host opens a stream with with the frames
    `script[kind](stream id)` gives (kind: the request's type, or an fs request's op)."""

    def __init__(self, sock: socket.socket, script: dict):
        self.sock = sock
        self.script = script
        sock.setblocking(False)
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, wire.message("hello", version=wire.VERSION, pid=1))
        decoder = wire.FrameDecoder()
        while data := await loop.sock_recv(self.sock, 65536):
            for msg in decoder.feed(data):
                kind = msg.get("op") if msg["t"] == "fs" else msg["t"]
                answer = self.script.get(kind)
                if answer is not None:
                    await loop.sock_sendall(self.sock, b"".join(answer(msg["s"])))


@pytest.fixture
async def guest():
    host, other = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=host)
    channel = Channel(reader, writer)
    guests = []

    async def play(script: dict) -> Channel:
        guests.append(ScriptedGuest(other, script))
        await asyncio.wait_for(channel.handshake(), TIMEOUT)
        return channel

    yield play
    await channel.close()
    other.close()
    for g in guests:
        g.task.cancel()
        with contextlib.suppress(BaseException):
            await g.task


async def _exec(channel: Channel):
    return await run_to_completion(channel.open_stream(), ["true"], stdin=None, timeout=None)


async def test_exec_answered_with_a_result_is_a_protocol_error(guest):
    # The old code took any answer but `started` as the command's own failure (ExecError).
    channel = await guest({"exec": lambda s: [wire.message("result", s, value=None)]})
    with pytest.raises(ProtocolError, match="answered exec of 'true' with 'result'"):
        await asyncio.wait_for(_exec(channel), TIMEOUT)


async def test_a_result_on_a_running_process_is_a_protocol_error(guest):
    # The old code skipped it and waited for an exit that never came.
    channel = await guest({"exec": lambda s: [*STARTED(s), wire.message("result", s, value=1)]})
    with pytest.raises(ProtocolError, match="running process"):
        await asyncio.wait_for(_exec(channel), TIMEOUT)


async def test_an_exit_with_neither_code_nor_signal_is_a_protocol_error(guest):
    # The old code reported it as exit code 0: success the process never claimed.
    channel = await guest({"exec": lambda s: [
        *STARTED(s), wire.message("exit", s, code=None, signal=None)]})
    with pytest.raises(ProtocolError, match="exactly one"):
        await asyncio.wait_for(_exec(channel), TIMEOUT)


def _files(channel: Channel) -> Files:
    return Files(lambda: channel)


ENTRY = {"name": "a", "path": "/a", "type": "file", "size": 1, "mode": 0o644, "mtime": 0,
         "uid": 0, "gid": 0}

# (the call, what the guest answers it with); each one the old code waited on forever or took
WRONG = {
    "stat answered started": (lambda f: f.stat("/a"), {"stat": STARTED}),
    "exists answered a string": (
        lambda f: f.exists("/a"), {"exists": lambda s: [wire.message("result", s, value="no")]}),
    "mkdir answered a value": (
        lambda f: f.mkdir("/d"), {"mkdir": lambda s: [wire.message("result", s, value=5)]}),
    "read answered exit": (
        lambda f: f.read("/a"), {"read": lambda s: [wire.message("exit", s, code=0, signal=None)]}),
    "read's result without a size": (
        lambda f: f.read("/a"), {"read": lambda s: [wire.message("eof", s, fd=1),
                                                     wire.message("result", s, value=None)]}),
    "list answered started": (lambda f: f.list("/d"), {"list": STARTED}),
    "list's result without a count": (
        lambda f: f.list("/d"), {"list": lambda s: [wire.message("eof", s, fd=1),
                                                     wire.message("result", s, value="all")]}),
    "write answered started": (lambda f: f.write("/a", b"x"), {"write": STARTED}),
}


@pytest.mark.parametrize("name", sorted(WRONG))
async def test_a_file_op_answered_wrongly_is_a_protocol_error(guest, name):
    call, script = WRONG[name]
    channel = await guest(script)
    with pytest.raises(ProtocolError):
        await asyncio.wait_for(call(_files(channel)), TIMEOUT)


async def test_a_watch_answered_wrongly_is_a_protocol_error(guest):
    channel = await guest({"watch": STARTED})
    with pytest.raises(ProtocolError, match="answered watch of /d with 'started'"):
        await asyncio.wait_for(start_watch(channel, "/d", lambda e: None), TIMEOUT)


async def test_a_watch_event_of_an_unknown_kind_ends_the_watch(guest):
    # The old code handed the callback whatever kind the guest named.
    channel = await guest({"watch": lambda s: [
        wire.message("result", s, value=None),
        wire.message("event", s, kind="explode", path="/d/x")]})
    seen = []
    watch = await asyncio.wait_for(start_watch(channel, "/d", seen.append), TIMEOUT)
    with pytest.raises(ProtocolError, match="kind 'explode'"):
        await watch.wait(TIMEOUT)
    assert seen == []


@pytest.mark.parametrize("answer", [
    lambda s: [wire.message("started", s, pid=1)],
    lambda s: [wire.message("result", s, value={"upper": 5})],
], ids=["started", "upper not a path"])
async def test_a_mount_answered_wrongly_is_a_protocol_error(guest, tmp_path, answer):
    channel = await guest({"mount": answer})
    spec = MountSpec(str(tmp_path), "/app", "ro")
    with pytest.raises(ProtocolError, match="mount"):
        await asyncio.wait_for(mount(channel, spec), TIMEOUT)


async def test_a_port_connection_answered_wrongly_is_a_protocol_error(guest):
    # The old code ignored the answer and the connection waited for one forever.
    channel = await guest({"tcp_connect": STARTED})
    stream = await open_stream(channel, 8000)
    await asyncio.wait_for(stream.answered.wait(), TIMEOUT)
    assert not stream.connected and isinstance(stream.bad, ProtocolError)
    assert "answered tcp_connect with 'started'" in str(stream.bad)
    assert channel.is_open  # one bad connection does not end the others
