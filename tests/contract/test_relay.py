"""The supervisor's relay without a VM: the guest agent runs as a host subprocess (or a bare
socket plays a hostile guest), and clients are real host Channels over socketpairs, so the
SDK's own process and file code runs through the relay as it does through a detached
sandbox's socket."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.control import ping
from shuru.channel import Channel
from shuru.errors import SandboxDiedError
from shuru.files import Files
from shuru.process import run_to_completion, start_stream
from shuru.named.supervisor import Relay
from shuru_guest import wire

from ..conftest import AgentProcess


class StubSupervisor:
    """What a Relay needs of its supervisor: the VM's channel and an activity clock."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.touched = 0

    def touch(self) -> None:
        self.touched += 1


class Clients:
    def __init__(self, vm: Channel):
        self.supervisor = StubSupervisor(vm)
        self.tasks: list[asyncio.Task] = []
        self.channels: list[Channel] = []
        self.relays: list[Relay] = []

    async def attach(self) -> Channel:
        theirs, ours = socket.socketpair()
        r, w = await asyncio.open_connection(sock=theirs)
        relay = Relay(self.supervisor, r, w)
        hello = {k: v for k, v in self.supervisor.channel.guest_hello.items()
                 if k not in ("t", "s")}
        self.tasks.append(asyncio.create_task(relay.run(hello)))
        self.relays.append(relay)
        cr, cw = await asyncio.open_connection(sock=ours)
        channel = Channel(cr, cw)
        await channel.handshake()
        self.channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def agent_clients():
    agent = AgentProcess()
    await agent.connect()
    clients = Clients(agent.channel)
    yield clients
    await clients.close()
    await agent.close()


async def run(ch: Channel, argv, **kw):
    kw.setdefault("stdin", None)
    return await run_to_completion(ch.open_stream(), argv, timeout=60, cwd=None, env={},
                                   user=None, **kw)


async def test_two_clients_share_one_agent_with_their_own_stream_ids(agent_clients):
    a, b = await agent_clients.attach(), await agent_clients.attach()
    assert a.guest_hello["version"] == wire.VERSION
    # Both clients use stream id 1, 3, ...: the relay maps them apart.
    ra, rb = await asyncio.gather(run(a, ["sh", "-c", "echo a"]), run(b, ["sh", "-c", "echo b"]))
    assert (ra.stdout, rb.stdout) == ("a\n", "b\n")
    assert agent_clients.supervisor.touched > 0


async def test_big_output_and_input_flow_within_the_windows(agent_clients):
    client = await agent_clients.attach()
    r = await run(client, ["sh", "-c", "head -c 6291456 /dev/zero; head -c 3145728 /dev/zero >&2"])
    assert (len(r.stdout_bytes), len(r.stderr_bytes)) == (6 << 20, 3 << 20)
    data = bytes(range(256)) * 16384  # 4 MiB
    r = await run(client, ["cat"], stdin=data)
    assert r.stdout_bytes == data


async def test_a_request_in_parts_is_joined_and_forwarded(agent_clients):
    client = await agent_clients.attach()
    args = ["x" * 30000] * 8  # an argv too big for one frame goes as `part`s
    r = await run(client, ["sh", "-c", 'printf %s "$@" | wc -c', "sh", *args])
    assert r.stdout.strip() == str(30000 * 8)


async def test_files_and_pings_through_the_relay(agent_clients, tmp_path):
    client = await agent_clients.attach()
    files = Files(lambda: client, lambda: None)
    await files.write(str(tmp_path / "f"), b"relayed")
    assert await files.read(str(tmp_path / "f")) == b"relayed"
    await asyncio.wait_for(ping(client), 10)


async def test_a_client_that_leaves_has_its_processes_killed(agent_clients, tmp_path):
    leaver, stayer = await agent_clients.attach(), await agent_clients.attach()
    marker = tmp_path / "pid"
    stream = leaver.open_stream()
    pid = await start_stream(stream, ["sh", "-c", f"echo $$ > {marker}; exec sleep 600"],
                             cwd=None, env={}, user=None)
    await leaver.close()
    # The relay signals the process group; the agent reports its exit to nobody.
    r = await run(stayer, ["sh", "-c", f"while kill -0 {pid} 2>/dev/null; do sleep 0.05; done; "
                                       "echo gone"])
    assert r.stdout == "gone\n"
    assert not any(relay.streams for relay in agent_clients.relays)


async def test_a_guest_beyond_its_window_ends_the_vm_channel_and_every_client():
    host, guest = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=host)
    vm = Channel(reader, writer)
    guest.sendall(wire.message("hello", version=wire.VERSION))
    await vm.handshake()
    clients = Clients(vm)
    try:
        client = await clients.attach()
        stream = client.open_stream()
        await stream.send("exec", argv=["x"])
        guest.setblocking(False)
        loop = asyncio.get_running_loop()
        # The relay opened stream 1 on the VM's channel for the client's first stream.
        frame = wire.message("data", 1, fd=1, d=b"x" * wire.CHUNK)
        for _ in range(wire.WINDOW // wire.CHUNK + 2):
            await loop.sock_sendall(guest, frame)
        with pytest.raises(SandboxDiedError):
            while True:
                await stream.recv()
        assert not vm.is_open
    finally:
        await clients.close()
        await vm.close()
        guest.close()
