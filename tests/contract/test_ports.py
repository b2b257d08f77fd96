"""Port forwarding (`tcp_connect` streams) against the real guest agent, run on the host as a
subprocess: the host's loopback plays the guest's, so a server started here on 127.0.0.1 is
"a server in the guest". No VM."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from tests.control import ping
from shuru.errors import PortError, ProtocolError
from shuru.ports import PortForwards, open_stream
from shuru_guest import wire

TIMEOUT = 10  # seconds: generous bounds only, never a speed claim


@pytest.fixture
async def forwards(agent):
    fw = PortForwards()
    fw.attach(agent.channel)
    yield fw
    await fw.close()


class Server:
    """A TCP server on 127.0.0.1 running `handle(reader, writer)` per connection."""

    def __init__(self, handle):
        self.handle = handle
        self.server = None
        self.port = 0
        self.seen = []  # what each connection's handler returned
        self.handled = asyncio.Event()  # set when a handler has returned

    async def __aenter__(self):
        async def on_conn(reader, writer):
            try:
                self.seen.append(await self.handle(reader, writer))
            finally:
                writer.close()
                self.handled.set()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


async def echo(reader, writer):
    """Echo until the client half-closes, then say how much came and close."""
    total = 0
    while data := await reader.read(65536):
        total += len(data)
        writer.write(data)
        await writer.drain()
    writer.write(f"[{total} bytes]".encode())
    await writer.drain()
    return total


def free_port() -> int:
    """A port nothing listens on (bound and released: the kernel will not hand it out again
    at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def read_all(reader) -> bytes:
    chunks = []
    while chunk := await reader.read(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_connect_relays_both_ways_and_passes_half_close_on(forwards):
    async with Server(echo) as server:
        sock = await forwards.connect(server.port)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"hello guest")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(11), TIMEOUT) == b"hello guest"
        writer.write_eof()  # half-close: the server sees EOF, we can still read its answer
        rest = await asyncio.wait_for(read_all(reader), TIMEOUT)
        writer.close()
    assert rest == b"[11 bytes]"
    assert server.seen == [11]


async def test_server_half_close_reaches_the_host_client_which_can_still_send(forwards):
    async def greet_then_listen(reader, writer):
        writer.write(b"ready")
        await writer.drain()
        writer.write_eof()  # the server is done talking, not done listening
        return await read_all(reader)

    async with Server(greet_then_listen) as server:
        reader, writer = await asyncio.open_connection(sock=await forwards.connect(server.port))
        assert await asyncio.wait_for(read_all(reader), TIMEOUT) == b"ready"  # EOF arrived
        writer.write(b"late words")
        writer.write_eof()
        await writer.drain()
        await asyncio.wait_for(server.handled.wait(), TIMEOUT)
        writer.close()
    assert server.seen == [b"late words"]


async def test_refused_guest_port_fails_at_once(forwards, agent):
    port = free_port()
    with pytest.raises(PortError) as e:
        await asyncio.wait_for(forwards.connect(port), TIMEOUT)
    assert e.value.code == "ECONNREFUSED" and e.value.port == port
    assert f"port {port}" in str(e.value)
    # The channel is fine afterwards.
    await asyncio.wait_for(ping(agent.channel), TIMEOUT)


async def test_refused_through_a_listener_closes_the_host_connection_at_once(forwards):
    address = await forwards.expose(free_port())
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    try:
        got = await asyncio.wait_for(reader.read(100), TIMEOUT)
    except ConnectionResetError:
        got = b""
    writer.close()
    assert got == b""


async def test_big_transfer_both_ways_within_credit(forwards, agent):
    """8 MiB up and back: many windows each way. The host Channel cuts the agent off as a
    protocol violation if it ever sends beyond the credit it was granted."""
    payload = os.urandom(8 * 1024 * 1024)
    async with Server(echo) as server:
        reader, writer = await asyncio.open_connection(sock=await forwards.connect(server.port))

        async def send():
            for i in range(0, len(payload), 100_000):
                writer.write(payload[i:i + 100_000])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = await asyncio.wait_for(read_all(reader), 120)
        await sender
        writer.close()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(
        payload + f"[{len(payload)} bytes]".encode()).hexdigest()
    assert agent.channel.is_open


async def test_many_connections_at_once_through_one_listener(forwards):
    async with Server(echo) as server:
        address = await forwards.expose(server.port)

        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"%d" % i * 1000)
            writer.write_eof()
            got = await read_all(reader)
            writer.close()
            return got

        got = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), 60)
    assert got == [b"%d" % i * 1000 + b"[%d bytes]" % (len(b"%d" % i) * 1000)
                   for i in range(64)]


async def test_listener_forwards_each_connection_and_unexpose_closes_it(forwards):
    async with Server(echo) as server:
        address = await forwards.expose(server.port)
        assert address.host == "127.0.0.1" and address.port > 0
        assert [(f.host_port, f.guest_port) for f in forwards.forwards] == [
            (address.port, server.port)]
        for text in (b"one", b"two"):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(text)
            writer.write_eof()
            assert await asyncio.wait_for(read_all(reader), TIMEOUT) == text + b"[3 bytes]"
            writer.close()
        await forwards.unexpose(server.port)
        assert forwards.forwards == []
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        with pytest.raises(PortError, match="not exposed"):
            await forwards.unexpose(server.port)


async def test_host_port_in_use_is_a_clear_error(forwards):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortError, match=f"host port {port} is already in use"):
            await forwards.expose(80, port)


async def test_close_ends_listeners_and_open_connections(agent):
    fw = PortForwards()
    fw.attach(agent.channel)
    async with Server(echo) as server:
        address = await fw.expose(server.port)
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"x"
        await fw.close()
        try:
            rest = await asyncio.wait_for(reader.read(100), TIMEOUT)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        writer.close()


async def test_protocol_bytes_sent_before_the_answer_are_held_and_delivered(agent):
    """On the wire: `tcp_connect`, data and eof at once, then `result`, the echo, `eof`."""
    async with Server(echo) as server:
        stream = await open_stream(agent.channel, server.port)
        await stream.write(b"early")
        await stream.write_eof()
        await asyncio.wait_for(stream.answered.wait(), TIMEOUT)
        assert stream.connected and stream.refusal is None
        got = b""
        while chunk := await asyncio.wait_for(stream.read(), TIMEOUT):
            got += chunk
        assert got == b"early[5 bytes]" and stream.eof and not stream.reset
        await stream.finish()


async def test_protocol_refusal_is_an_error_reply(agent):
    stream = await open_stream(agent.channel, free_port())
    await asyncio.wait_for(stream.answered.wait(), TIMEOUT)
    assert not stream.connected
    assert stream.refusal["code"] == "ECONNREFUSED"
    assert await stream.read() == b""


async def test_protocol_bad_port_is_einval(agent):
    stream = await open_stream(agent.channel, 70000)
    await asyncio.wait_for(stream.answered.wait(), TIMEOUT)
    assert stream.refusal["code"] == "EINVAL"


async def test_host_close_before_eof_resets_the_server_side(forwards, agent):
    async with Server(lambda r, w: _read_outcome(r)) as server:
        stream = await open_stream(agent.channel, server.port)
        await asyncio.wait_for(stream.answered.wait(), TIMEOUT)
        await stream.write(b"partial")
        await stream.finish()  # `close` without eof: the server must see a reset
        await asyncio.wait_for(server.handled.wait(), TIMEOUT)
    assert server.seen == ["reset"]


async def _read_outcome(reader) -> str:
    try:
        while await reader.read(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def test_wire_schema_knows_tcp_connect():
    assert wire.FrameDecoder().feed(wire.message("tcp_connect", 3, port=8000)) == [
        {"t": "tcp_connect", "s": 3, "port": 8000}]
    with pytest.raises(wire.WireError):
        wire.FrameDecoder().feed(wire.message("tcp_connect", 3, port="8000"))


# ---- a hostile guest (raw frames, no agent) -------------------------------------------------
# (The window a guest may send within is the same code as for guest-opened streams, tested in
# test_guest_streams.)

from tests.contract.test_guest_streams import pair  # noqa: E402,F401  (the fixture)


async def test_a_guest_answering_nonsense_does_not_open_the_connection(pair):
    ch, guest = pair
    fw = PortForwards()
    fw.attach(ch)
    connecting = asyncio.create_task(fw.connect(8000))
    await guest.expect("tcp_connect", 1)
    await guest.send("started", 1, pid=5)  # not an answer to tcp_connect
    with pytest.raises(ProtocolError, match="answered tcp_connect with 'started'"):
        await asyncio.wait_for(connecting, TIMEOUT)
    await guest.expect("close", 1)  # the guest is told the stream is over
    # The channel goes on: the next connection is answered as usual.
    connecting = asyncio.create_task(fw.connect(8000))
    await guest.expect("tcp_connect", 3)
    await guest.send("error", 3, code="EACCES", message="no")
    with pytest.raises(PortError, match="cannot connect to port 8000.*no") as e:
        await asyncio.wait_for(connecting, TIMEOUT)
    assert e.value.code == "EACCES"
    await fw.close()
