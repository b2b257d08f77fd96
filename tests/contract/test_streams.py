"""The host's stream layer against misbehaving peers and callbacks: every waiting call ends
(with its result, or with the error that ended the stream), `exec` output is capped, and
nothing a guest sends leaves unbounded state on the host. A fake guest on a socketpair plays
the hostile agent; the real agent (a host subprocess, `agent` fixture) runs ordinary
processes. No VM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct

import pytest

from tests.control import ping
from shuru.channel import Channel
from shuru.errors import ExecOutputLimitError, ExecTimeoutError, ProtocolError, SandboxDiedError
from shuru.files import Files, start_watch
from shuru.process import Process, run_to_completion, start_stream
from shuru_guest import wire


class Boom(Exception):
    pass


def boom(*_):
    raise Boom("the callback failed")


class FakeGuest:
    """The guest end of a socketpair: the test writes raw frames and reads the host's."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.decoder = wire.FrameDecoder()
        self.got: list[dict] = []

    async def send(self, t: str, s: int, **fields) -> None:
        await self.send_raw(wire.message(t, s, **fields))

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def expect(self, t: str, s: int, timeout: float = 10) -> dict:
        """The next frame from the host of type `t` on stream `s`; others are kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, msg in enumerate(self.got):
                if msg["t"] == t and msg["s"] == s:
                    return self.got.pop(i)
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20),
                                          deadline - loop.time())
            assert data, "host closed the channel"
            self.got += self.decoder.feed(data)


@pytest.fixture
async def pair():
    host, guest_sock = socket.socketpair()
    guest_sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=host)
    ch = Channel(reader, writer)
    guest = FakeGuest(guest_sock)
    await guest.send("hello", 0, version=wire.VERSION)
    await ch.handshake()
    yield ch, guest
    await ch.close()
    guest_sock.close()


async def until(predicate, timeout: float = 10) -> None:
    """Poll a condition the channel's reader or the agent brings about (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


async def fake_process(ch: Channel, guest: FakeGuest) -> Process:
    stream = ch.open_stream()
    starting = asyncio.create_task(start_stream(stream, ["prog"]))
    await guest.expect("exec", stream.id)
    await guest.send("started", stream.id, pid=4242)
    return Process(stream, await starting, ["prog"])


async def spawn(ch: Channel, argv) -> Process:
    stream = ch.open_stream()
    return Process(stream, await start_stream(stream, argv), argv)


async def drain(proc: Process) -> list:
    return [chunk async for chunk in proc]


# ---- frames naming other fds ----------------------------------------------------------------

@pytest.mark.parametrize("t, fields", [
    ("data", {"fd": 3, "d": b"x"}),
    ("data", {"fd": 0, "d": b"x"}),
    ("data", {"fd": 2**40, "d": b""}),
    ("eof", {"fd": 9}),
    ("credit", {"fd": 1, "n": 10}),
])
async def test_frames_on_other_fds_are_a_protocol_error_that_ends_every_waiter(pair, t, fields):
    ch, guest = pair
    proc = await fake_process(ch, guest)
    await guest.send("data", proc._stream.id, fd=1, d=b"before")
    await guest.send(t, proc._stream.id, **fields)
    with pytest.raises(ProtocolError, match=f"fd {fields['fd']}"):
        await proc.wait(timeout=10)
    with pytest.raises(ProtocolError):  # iteration still yields what came first, then ends
        chunks = []
        async with asyncio.timeout(10):
            async for chunk in proc:
                chunks.append(chunk)
    assert [c.data for c in chunks] == [b"before"]
    assert not ch.is_open


async def test_tiny_and_empty_frames_on_both_fds_stay_bounded(pair):
    # Frames that alternate between stdout and stderr cannot be merged with the one before
    # them, and empty ones take no window: the host must not keep one entry per frame.
    ch, guest = pair
    stream = ch.open_stream()
    n = 50_000
    frames = []
    for i in range(n):
        frames += [wire.message("data", stream.id, fd=1, d=bytes([i % 251])),
                   wire.message("data", stream.id, fd=2, d=bytes([i * 7 % 251])),
                   wire.message("data", stream.id, fd=1, d=b""),
                   wire.message("data", stream.id, fd=2, d=b"")]
    frames.append(wire.message("eof", stream.id, fd=1))
    await guest.send_raw(b"".join(frames))
    await until(lambda: stream.inflow(2).outstanding == n)
    assert stream.inbox.qsize() <= 4
    got = {1: bytearray(), 2: bytearray()}
    while (msg := await stream.recv())["t"] == "data":
        got[msg["fd"]] += msg["d"]
    assert msg["t"] == "eof"
    assert bytes(got[1]) == bytes(i % 251 for i in range(n))
    assert bytes(got[2]) == bytes(i * 7 % 251 for i in range(n))


async def test_pings_the_guest_never_answers_leave_nothing_behind(pair):
    ch, guest = pair
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ping(ch), 0.05)
    assert ch.run._pending == {}
    answered = asyncio.create_task(ping(ch))
    for _ in range(4):  # the three given up on, then this one
        sent = await guest.expect("ping", 0)
    await guest.send("pong", 0, id=sent["id"])
    await asyncio.wait_for(answered, 10)
    assert ch.run._pending == {}

# ---- calls that must end ------------------------------------------------------------------------

async def test_wait_and_iteration_end_when_the_guest_breaks_the_protocol(pair):
    ch, guest = pair
    proc = await fake_process(ch, guest)
    await guest.send_raw(struct.pack(">I", wire.MAX_FRAME + 1))  # an impossible frame
    with pytest.raises(ProtocolError, match="bad frame"):
        await proc.wait(timeout=10)
    with pytest.raises(ProtocolError, match="bad frame"):
        await asyncio.wait_for(drain(proc), 10)


async def test_stdout_callback_that_raises_ends_wait_and_kills_the_process(agent):
    ch = agent.channel
    proc = await spawn(ch, ["sh", "-c", "echo hi; exec sleep 1000"])
    proc.on("stdout", boom)
    with pytest.raises(Boom):
        await proc.wait(timeout=10)
    assert proc.exit_code is None
    # The host killed the process group and drained the stream until the agent's `exit`.
    await until(lambda: proc._stream.id not in ch.streams)
    assert (await run_to_completion(ch.open_stream(), ["true"], stdin=None,
                                    timeout=30)).exit_code == 0


async def test_iteration_ends_with_the_exception_of_a_callback(agent):
    proc = await spawn(agent.channel, ["sh", "-c", "echo out; echo err >&2; exec sleep 1000"])

    async def failing(data):
        await asyncio.sleep(0)
        raise Boom(data)

    proc.on("stderr", failing)
    seen = []
    with pytest.raises(Boom):
        async with asyncio.timeout(10):
            async for chunk in proc:
                seen.append(chunk.data)
    assert seen in ([], [b"out\n"])  # stdout may come before stderr's failure, or not
    with pytest.raises(Boom):
        await proc.wait(timeout=10)


async def test_exit_callbacks_have_run_when_wait_returns(agent):
    proc = await spawn(agent.channel, ["sh", "-c", "exit 5"])
    done = []

    async def slow_exit(code):
        for _ in range(20):
            await asyncio.sleep(0)  # a callback that takes a few turns of the loop
        done.append(code)

    proc.on("exit", slow_exit)
    assert await proc.wait(timeout=10) == 5
    assert done == [5]


async def test_an_exit_callback_that_raises_is_what_wait_raises(agent):
    proc = await spawn(agent.channel, ["sh", "-c", "echo x; exit 3"])
    proc.on("exit", boom)
    with pytest.raises(Boom):
        await proc.wait(timeout=10)
    with pytest.raises(Boom):
        await asyncio.wait_for(drain(proc), 10)
    assert proc.exit_code == 3  # it did exit; only the callback failed


async def test_wait_ends_when_the_agent_dies_while_nobody_reads(agent):
    proc = await spawn(agent.channel, ["yes"])
    try:
        # Nobody iterates, so the pump is stuck waiting for room in the iteration buffer.
        await until(lambda: proc._output.full, 30)
        agent.proc.kill()
        with pytest.raises(SandboxDiedError):
            await proc.wait(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


# ---- exec's output cap -------------------------------------------------------------------

async def run(ch: Channel, argv, **kw):
    stream = ch.open_stream()
    kw.setdefault("timeout", 30)
    return stream, await run_to_completion(stream, argv, stdin=kw.pop("stdin", None), **kw)


@pytest.mark.parametrize("fd", [1, 2])
async def test_exec_output_past_the_cap_kills_and_keeps_the_first_part(agent, fd):
    ch = agent.channel
    # Up to the cap is a result...
    _, r = await run(ch, ["sh", "-c", f"head -c 300000 /dev/zero >&{fd}"], max_output=300_000)
    assert r.exit_code == 0 and len(r.stdout_bytes if fd == 1 else r.stderr_bytes) == 300_000
    # ...one byte more is not.
    stream = ch.open_stream()
    command = "echo begin >&%d; echo other >&%d; exec yes" % (fd, 3 - fd)
    if fd == 2:
        command += " >&2"
    with pytest.raises(ExecOutputLimitError) as e:
        await run_to_completion(stream, ["sh", "-c", command], stdin=None, timeout=60,
                                max_output=300_000)
    name = {1: "stdout", 2: "stderr"}[fd]
    kept, other = (e.value.stdout, e.value.stderr) if fd == 1 else (e.value.stderr,
                                                                       e.value.stdout)
    assert (e.value.stream, e.value.limit) == (name, 300_000)
    assert len(kept) == 300_000 and kept.startswith(b"begin\ny\ny\n")
    assert other == b"other\n"
    assert f"more than 300000 bytes to {name}" in str(e.value) and "max_output" in str(e.value)
    # `yes` was killed; the host dropped the rest of its output until the agent's `exit`.
    await until(lambda: stream.id not in ch.streams)
    _, r = await run(ch, ["echo", "still fine"])
    assert r.stdout == "still fine\n"


@pytest.mark.parametrize("how", ["limit", "timeout"])
async def test_an_abandoned_exec_is_drained_so_the_guest_can_end_it(pair, how):
    # After the host gives up on a command, the guest still has its output to flush before
    # it can report `exit` and forget the stream: the host must keep granting credit for
    # what it drops, or that stream stays stuck in the guest for good.
    ch, guest = pair
    stream = ch.open_stream()
    limits = {"max_output": 1000, "timeout": None} if how == "limit" else {"timeout": 0.5}
    call = asyncio.create_task(run_to_completion(stream, ["prog"], stdin=None, **limits))
    await guest.expect("exec", stream.id)
    await guest.send("started", stream.id, pid=4242)
    credit, sent = wire.WINDOW, 0
    if how == "limit":
        await guest.send("data", stream.id, fd=1, d=b"x" * wire.CHUNK)
        credit, sent = credit - wire.CHUNK, wire.CHUNK
    with pytest.raises(ExecOutputLimitError if how == "limit" else ExecTimeoutError):
        await call
    kill = await guest.expect("signal", stream.id)
    assert (kill["sig"], kill.get("group")) == (signal.SIGKILL, True)
    while sent < 3 * wire.WINDOW:  # three windows more than the host ever granted at first
        while credit < wire.CHUNK:
            credit += (await guest.expect("credit", stream.id))["n"]
        await guest.send("data", stream.id, fd=2, d=b"y" * wire.CHUNK)
        credit, sent = credit - wire.CHUNK, sent + wire.CHUNK
    assert ch.streams.get(stream.id) is stream and stream.inbox.qsize() == 0
    await guest.send("eof", stream.id, fd=1)
    await guest.send("exit", stream.id, code=None, signal=9)
    await until(lambda: stream.id not in ch.streams)
    assert ch.is_open


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_cancelling_an_exec_kills_its_process(agent, tmp_path):
    ch = agent.channel
    pidfile = tmp_path / "pid"
    stream = ch.open_stream()
    call = asyncio.create_task(run_to_completion(
        stream, ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 1000"], stdin=None,
        timeout=None))
    await until(lambda: pidfile.exists() and pidfile.read_text().endswith("\n"))
    pid = int(pidfile.read_text())
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await until(lambda: _gone(pid))  # killed, and reaped by the agent
    await until(lambda: stream.id not in ch.streams)


async def test_a_call_cancelled_while_its_process_starts_kills_it(pair):
    # Between `exec` and `started` the caller has no Process yet; if it gives up then, the
    # process the guest is starting must not live on unseen.
    ch, guest = pair
    stream = ch.open_stream()
    starting = asyncio.create_task(start_stream(stream, ["prog"]))
    await guest.expect("exec", stream.id)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    kill = await guest.expect("signal", stream.id)
    assert (kill["sig"], kill.get("group")) == (signal.SIGKILL, True)
    await guest.send("started", stream.id, pid=4242)
    await guest.send("exit", stream.id, code=None, signal=9)
    await until(lambda: stream.id not in ch.streams)

# ---- watches ----------------------------------------------------------------------------

async def test_a_watch_whose_callback_raises_ends_and_says_so(agent, tmp_path):
    ch = agent.channel
    called = asyncio.Event()

    def failing(event):
        called.set()
        raise Boom(event.path)

    w = await start_watch(ch, str(tmp_path), failing)
    await Files(lambda: ch).write(str(tmp_path / "f.txt"), "x")
    await asyncio.wait_for(called.wait(), 10)
    with pytest.raises(Boom):
        await w.stop()
    with pytest.raises(Boom):
        await w.wait(timeout=10)
    assert isinstance(w.error, Boom)
    # The guest was told to stop watching; its answer ended the stream.
    await until(lambda: w._stream.id not in ch.streams)


async def test_a_watch_stopped_normally_waits_and_stops_quietly(agent, tmp_path):
    w = await start_watch(agent.channel, str(tmp_path), lambda e: None)
    await w.stop()
    await w.wait(timeout=10)
    await w.stop()
    assert w.error is None


async def test_a_watch_ends_with_the_protocol_error_that_ended_the_channel(pair):
    ch, guest = pair
    watching = asyncio.create_task(start_watch(ch, "/w", lambda e: None))
    opened = await guest.expect("watch", 1)
    await guest.send("result", opened["s"], value=None)
    w = await watching
    await guest.send("data", opened["s"], fd=5, d=b"?")
    with pytest.raises(ProtocolError, match="fd 5"):
        await w.wait(timeout=10)
    await w.stop()  # safe once the channel is gone; only a callback's failure is raised


async def test_a_watch_can_stop_itself_from_its_callback(agent, tmp_path):
    ch = agent.channel
    seen, stopped = [], []

    async def once(event):
        seen.append(event.path)
        await w.stop()  # e.g. "wait until this file appears"
        stopped.append(True)  # old code: stop() waited on its own task, then cancelled it

    w = await start_watch(ch, str(tmp_path), once)
    files = Files(lambda: ch)
    await files.write(str(tmp_path / "a.txt"), "x")
    await w.wait(timeout=30)
    await files.write(str(tmp_path / "b.txt"), "y")
    await files.exists(str(tmp_path / "b.txt"))  # a round trip after the write
    assert seen == [str(tmp_path / "a.txt")] and stopped == [True] and w.error is None
    assert w._stream.id not in ch.streams


# ---- streams the guest opens --------------------------------------------------------------

@pytest.mark.parametrize("t, fields", [("data", {"fd": 2, "d": b"x"}), ("eof", {"fd": 0}),
                                       ("credit", {"fd": 1, "n": 5})])
async def test_a_connection_stream_on_the_wrong_fd_is_a_protocol_error(pair, t, fields):
    ch, guest = pair
    opened = []
    ch.accept_guest_streams(opened.append)
    await guest.send("connect", 2, ip="127.0.0.1", port=80)
    await until(lambda: opened)
    await guest.send(t, 2, **fields)
    await until(lambda: not ch.is_open)
    with pytest.raises(ProtocolError, match=f"fd {fields['fd']}"):
        ch.check_open()


async def test_waiting_on_a_process_from_its_own_callback_is_refused_not_a_hang(agent):
    proc = await spawn(agent.channel, ["sh", "-c", "echo hi; exec sleep 1000"])

    async def waits(data):
        await proc.wait()

    proc.on("stdout", waits)
    with pytest.raises(RuntimeError, match="its own callbacks"):
        await proc.wait(timeout=10)


async def test_a_write_waiting_for_credit_ends_when_the_process_exits(agent):
    # The process never reads its stdin: the host runs out of credit and waits. Once the
    # process is gone nobody will grant more, so the write must end, dropping the rest (as
    # the guest drops what a process that closed its stdin will never read).
    proc = await spawn(agent.channel, ["sleep", "1000"])
    writer = asyncio.create_task(proc.write(b"x" * (4 * wire.WINDOW)))
    await until(lambda: proc._stream.outflow.credit <= 0)
    await proc.kill()
    assert await proc.wait(timeout=10) == 128 + signal.SIGKILL
    await asyncio.wait_for(writer, 10)

