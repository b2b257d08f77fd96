"""The guest agent, run on the host as a subprocess over a socketpair, driven through the
host's real Channel and Process code. No VM: these pin the protocol's behaviour."""

import asyncio
import os
import signal
import time

import pytest

from shuru import agent_client
from shuru.channel import Channel
from shuru.errors import ExecTimeoutError, ProtocolError, SandboxDiedError
from shuru.process import Process, run_to_completion, start_stream
from shuru_guest import wire


async def run(ch: Channel, argv, stdin=None, timeout=30, **kw):
    return await run_to_completion(ch.open_stream(), argv, stdin=stdin, timeout=timeout, **kw)


async def spawn(ch: Channel, argv, **kw) -> Process:
    stream = ch.open_stream()
    pid = await start_stream(stream, argv, **kw)
    return Process(stream, pid, argv)


async def test_hello_reports_version_and_agent(agent):
    assert agent.channel.guest_hello["version"] == wire.VERSION
    assert agent.channel.guest_hello["pid"] == agent.proc.pid


async def test_exit_code_stdout_stderr(agent):
    r = await run(agent.channel, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 7)


async def test_command_not_found_is_127_with_message(agent):
    r = await run(agent.channel, ["definitely-not-a-command"])
    assert r.exit_code == 127
    assert "definitely-not-a-command: command not found" in r.stderr


async def test_not_executable_is_126(agent, tmp_path):
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n")
    r = await run(agent.channel, [str(script)])
    assert r.exit_code == 126


async def test_env_and_cwd(agent, tmp_path):
    r = await run(agent.channel, ["sh", "-c", 'echo "$FOO:$PWD"'], env={"FOO": "bar"},
                  cwd=str(tmp_path))
    assert r.stdout.strip() == f"bar:{tmp_path}"


async def test_bad_cwd_is_an_error_not_a_start(agent):
    from shuru.errors import ExecError
    with pytest.raises(ExecError, match="/no/such/dir"):
        await run(agent.channel, ["true"], cwd="/no/such/dir")
    # the channel is still usable afterwards
    assert (await run(agent.channel, ["true"])).exit_code == 0


async def test_stdin_is_delivered_and_closed(agent):
    r = await run(agent.channel, ["sh", "-c", "wc -c; cat"], stdin=b"abc" * 1000)
    assert r.stdout.split()[0] == "3000"


async def test_large_output_both_streams(agent):
    # 8 MiB on stdout and 4 MiB on stderr at once: far beyond one window each.
    r = await run(agent.channel, ["sh", "-c",
                                  "head -c 8388608 /dev/zero & head -c 4194304 /dev/zero >&2; wait"])
    assert len(r.stdout_bytes) == 8 * 1024 * 1024
    assert len(r.stderr_bytes) == 4 * 1024 * 1024


async def test_large_stdin_round_trip(agent):
    data = os.urandom(5 * 1024 * 1024)
    r = await run(agent.channel, ["cat"], stdin=data)
    assert r.stdout_bytes == data


async def test_flow_control_stops_a_producer_that_nobody_reads(agent):
    ch = agent.channel
    proc = await spawn(ch, ["sh", "-c", "head -c 20000000 /dev/zero; echo done >&2"])
    stream = proc._stream
    # Nobody iterates: chunks pile up in the iteration buffer, which is bounded, so the
    # host stops granting credit and the guest must stop after about a window or so.
    await asyncio.wait_for(_until(lambda: proc._output.full), 30)
    buffered = sum(len(c.data) for c in list(proc._output._chunks))
    assert buffered <= wire.WINDOW + wire.CHUNK
    assert stream.inflow(1).outstanding <= wire.WINDOW
    # Draining lets it finish.
    total = 0
    async for chunk in proc:
        if chunk.stream == "stdout":
            total += len(chunk.data)
    assert total == 20000000
    assert await proc.wait() == 0


async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.01)


async def test_spawn_streams_output_and_takes_stdin(agent):
    proc = await spawn(agent.channel, ["sh", "-c", 'echo ready; read line; echo "got $line"'])
    seen = []
    async for chunk in proc:
        seen.append(chunk.text)
        if "ready" in "".join(seen) and len(seen) == 1:
            await proc.write("hello\n")
    assert "".join(seen) == "ready\ngot hello\n"
    assert await proc.wait() == 0


async def test_callbacks_and_exit_event(agent):
    out, codes = [], []
    proc = await spawn(agent.channel, ["sh", "-c", "echo a; echo b >&2; exit 4"])
    proc.on("stdout", out.append).on("exit", codes.append)
    assert await proc.wait() == 4  # the exit callbacks have run by now
    assert b"".join(out) == b"a\n" and codes == [4]


async def test_signal_reaches_the_process_group(agent):
    proc = await spawn(agent.channel, ["sh", "-c", "sleep 1000 & sleep 1000; echo never"])
    await proc.signal(signal.SIGTERM)
    code = await proc.wait(timeout=10)
    assert code == 128 + signal.SIGTERM and proc.exit_signal == signal.SIGTERM


async def test_kill(agent):
    proc = await spawn(agent.channel, ["sleep", "1000"])
    await proc.kill()
    assert await proc.wait(timeout=10) == 137


async def test_timeout_kills_group_and_keeps_partial_output(agent):
    with pytest.raises(ExecTimeoutError) as e:
        await run(agent.channel, ["sh", "-c", "echo partial; sleep 1000"], timeout=1)
    assert e.value.stdout == b"partial\n"


async def test_background_child_holding_stdout_does_not_hang(agent):
    r = await run(agent.channel, ["sh", "-c", "sleep 1000 & echo started"], timeout=20)
    assert r.stdout == "started\n" and r.exit_code == 0


async def test_tty_session_with_size_and_resize(agent):
    proc = await spawn(agent.channel, ["sh", "-c", "stty size; read x; stty size; tty"],
                       tty=True, rows=33, cols=99)
    text = b""
    async for chunk in proc:
        text += chunk.data
        if text.count(b"\n") == 1 and b"33 99" in text:
            await proc.resize(50, 120)
            await proc.write(b"go\n")
    assert await proc.wait() == 0
    assert b"33 99" in text and b"50 120" in text and b"/dev/pts/" in text


async def test_tty_ctrl_c_interrupts_the_foreground_process(agent):
    # `started` arrives once the program has been executed on a PTY that is its controlling
    # terminal, so the ^C below cannot race the process's start.
    proc = await spawn(agent.channel, ["sleep", "1000"], tty=True)
    await proc.write(b"\x03")
    assert await proc.wait(timeout=10) == 128 + signal.SIGINT


async def test_many_concurrent_processes(agent):
    results = await asyncio.gather(*(run(agent.channel, ["sh", "-c", f"echo {i}; exit {i % 5}"])
                                     for i in range(20)))
    assert [(r.stdout.strip(), r.exit_code) for r in results] == \
        [(str(i), i % 5) for i in range(20)]


async def test_agent_death_fails_calls_instead_of_hanging(agent):
    proc = await spawn(agent.channel, ["sleep", "1000"])
    agent.proc.kill()
    try:
        with pytest.raises(SandboxDiedError):
            await proc.wait(timeout=10)
        with pytest.raises(SandboxDiedError):
            await run(agent.channel, ["true"])
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the agent died before it could end its children


@pytest.fixture
async def fake_guest():
    """A host Channel whose "guest" is a bare socket the test writes frames to."""
    import socket
    host, guest = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=host)
    ch = Channel(reader, writer)
    yield ch, guest
    await ch.close()
    guest.close()


async def test_guest_exceeding_its_window_is_a_protocol_error(fake_guest):
    # A hostile guest: says hello, then floods data beyond any credit.
    ch, guest = fake_guest
    guest.sendall(wire.message("hello", version=wire.VERSION))
    await ch.handshake()
    stream = ch.open_stream()
    chunk = wire.message("data", stream.id, fd=1, d=b"x" * wire.CHUNK)
    guest.setblocking(False)
    loop = asyncio.get_running_loop()
    for _ in range(wire.WINDOW // wire.CHUNK + 2):
        await loop.sock_sendall(guest, chunk)
    with pytest.raises(ProtocolError, match="beyond"):
        while True:
            await stream.recv()


async def test_garbage_from_guest_is_a_protocol_error(fake_guest):
    ch, guest = fake_guest
    guest.sendall(b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError):
        await ch.handshake()


async def test_version_mismatch_is_refused(fake_guest):
    ch, guest = fake_guest
    guest.sendall(wire.message("hello", version=99))
    with pytest.raises(ProtocolError, match="version 99"):
        await ch.handshake()


async def test_park_then_resume_greets_a_new_host_and_serves_it():
    """What a saved template and its clones go through, minus the VM: the template's host
    parks the agent (its processes end); a clone's host speaks first with `resume`, and the
    agent answers with a fresh hello and serves as usual."""
    import socket
    import subprocess
    import sys

    host, guest = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "shuru_guest", "--fd", str(guest.fileno())],
                            pass_fds=[guest.fileno()])
    guest.close()
    decoder = wire.FrameDecoder()

    def read_one() -> dict:
        msgs: list[dict] = []
        while not msgs:
            data = host.recv(65536)
            assert data, "the agent closed the channel"
            msgs = decoder.feed(data)
        assert len(msgs) == 1, msgs
        return msgs[0]

    try:
        host.settimeout(30)
        assert read_one()["t"] == "hello"
        host.sendall(wire.message("hello", version=wire.VERSION))
        host.sendall(wire.message("exec", 1, argv=["sleep", "1000"]))
        started = read_one()
        assert started["t"] == "started"
        host.sendall(wire.message("park"))
        assert read_one()["t"] == "parked"

        # The clone's host: a Channel that resumes, on the same byte stream.
        host.settimeout(None)
        reader, writer = await asyncio.open_connection(sock=host)
        ch = Channel(reader, writer)
        hello = await ch.handshake(resume=agent_client.resume(os.urandom(64), time.time_ns()))
        assert hello["pid"] == proc.pid
        r = await run(ch, ["sh", "-c", f"kill -0 {started['pid']} 2>/dev/null; echo $?"])
        # The parked agent killed the sleep (a zombie until reaped still answers kill -0,
        # so ask until it is reaped: the agent reaps on SIGCHLD).
        while r.stdout != "1\n":
            r = await run(ch, ["sh", "-c", f"kill -0 {started['pid']} 2>/dev/null; echo $?"])
        await ch.close()
    finally:
        host.close()
        proc.wait(timeout=10)


async def _flood(guest, frames) -> None:
    guest.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(guest, b"".join(frames))


async def test_tiny_data_frames_merge_instead_of_piling_up(fake_guest):
    # Within the window, but 100k frames: the host keeps them as a few merged chunks.
    ch, guest = fake_guest
    guest.sendall(wire.message("hello", version=wire.VERSION))
    await ch.handshake()
    stream = ch.open_stream()
    n = 100_000
    await _flood(guest, [wire.message("data", stream.id, fd=1, d=bytes([i % 251]))
                         for i in range(n)] + [wire.message("eof", stream.id, fd=1)])
    got = bytearray()
    while True:
        msg = await stream.recv()
        if msg["t"] == "eof":
            break
        assert isinstance(msg["d"], bytes) and len(msg["d"]) <= wire.CHUNK
        got += msg["d"]
        assert stream.inbox.qsize() <= n // wire.CHUNK + 2
    assert bytes(got) == bytes(i % 251 for i in range(n))


async def test_a_flood_of_other_messages_is_a_protocol_error(fake_guest):
    from shuru.channel import MAX_QUEUED
    ch, guest = fake_guest
    guest.sendall(wire.message("hello", version=wire.VERSION))
    await ch.handshake()
    stream = ch.open_stream()
    await _flood(guest, [wire.message("started", stream.id, pid=7)] * (MAX_QUEUED + 10))
    with pytest.raises(ProtocolError, match="unread messages"):
        while True:
            await stream.recv()


async def test_unread_watch_events_become_one_overflow(fake_guest):
    from shuru.channel import MAX_QUEUED
    ch, guest = fake_guest
    guest.sendall(wire.message("hello", version=wire.VERSION))
    await ch.handshake()
    stream = ch.open_stream()
    event = wire.message("event", stream.id, kind="create", path="/w/f", is_dir=False)
    await _flood(guest, [event] * (3 * MAX_QUEUED) + [wire.message("result", stream.id)])
    kinds = []
    while not kinds or kinds[-1] != "result":
        msg = await stream.recv()
        kinds.append(msg.get("kind", msg["t"]))
        assert stream.inbox.qsize() <= MAX_QUEUED + 2
    # Events resume once some are read, as after an inotify overflow; none are made up.
    assert kinds[:MAX_QUEUED] == ["create"] * MAX_QUEUED and kinds[-1] == "result"
    assert "overflow" in kinds and set(kinds[:-1]) == {"create", "overflow"}
    assert kinds.count("create") < 3 * MAX_QUEUED


async def test_a_stream_in_use_is_busy_for_every_kind_of_request():
    """A stream is one thing at a time, whatever kind of request comes next on it: a
    `tcp_connect` on a stream an exec holds is refused with EBUSY (it used to open a port
    forward on the same stream, which then took the exec's stdin), and the exec goes on."""
    import socket
    import subprocess
    import sys

    server = socket.create_server(("127.0.0.1", 0))  # a port something listens on
    host, guest = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "shuru_guest", "--fd", str(guest.fileno())],
                            pass_fds=[guest.fileno()])
    guest.close()
    decoder = wire.FrameDecoder()
    pending: list[dict] = []

    def next_on(s: int) -> dict:
        while True:
            for i, msg in enumerate(pending):
                if msg["s"] == s and msg["t"] != "credit":
                    return pending.pop(i)
            data = host.recv(65536)
            assert data, "the agent closed the channel"
            pending.extend(decoder.feed(data))

    try:
        host.settimeout(30)
        assert next_on(0)["t"] == "hello"
        host.sendall(wire.message("hello", version=wire.VERSION))
        host.sendall(wire.message("exec", 1, argv=["cat"]))
        assert next_on(1)["t"] == "started"
        host.sendall(wire.message("tcp_connect", 1, port=server.getsockname()[1]))
        refused = next_on(1)
        assert (refused["t"], refused["code"]) == ("error", "EBUSY")
        host.sendall(wire.message("data", 1, fd=0, d=b"still cat's\n"))
        host.sendall(wire.message("eof", 1, fd=0))
        out = b""
        while (msg := next_on(1))["t"] != "exit":
            if msg["t"] == "data":
                out += msg["d"]
        assert out == b"still cat's\n" and msg["code"] == 0
    finally:
        host.close()
        server.close()
        proc.wait(timeout=10)
