"""Guest-opened streams (networking) against a hostile guest: the host Channel on one end of a
socketpair, the test writing raw frames as the "guest" on the other. No VM."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shuru import channel as channel_mod
from shuru.channel import Channel
from shuru.errors import ProtocolError
from shuru.net.session import NetworkSession
from shuru_guest import wire


class FakeGuest:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.decoder = wire.FrameDecoder()
        self.got: list[dict] = []

    async def send(self, t: str, s: int, **fields) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, wire.message(t, s, **fields))

    async def expect(self, t: str, s: int, timeout: float = 5) -> dict:
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


def collect(ch: Channel) -> list:
    opened = []
    ch.accept_guest_streams(opened.append)
    return opened


async def until(predicate, timeout: float = 5) -> None:
    """Wait for the channel's reader to have routed what the fake guest sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.005)


async def test_guest_streams_are_refused_while_networking_is_off(pair):
    ch, guest = pair
    await guest.send("connect", 2, ip="198.18.0.1", port=443)
    await guest.send("dns", 4, d=b"\0" * 12)
    assert (await guest.expect("close", 2))["s"] == 2
    assert (await guest.expect("close", 4))["s"] == 4
    assert not ch.streams


async def test_bytes_flow_both_ways_within_credit(pair):
    ch, guest = pair
    opened = collect(ch)
    await guest.send("connect", 2, ip="198.18.0.1", port=443)
    await guest.send("data", 2, fd=1, d=b"x" * wire.CHUNK)
    await until(lambda: opened)
    stream = opened[0]
    assert stream.first == {"t": "connect", "s": 2, "ip": "198.18.0.1", "port": 443}
    got = b""
    for _ in range(wire.WINDOW // 4 // wire.CHUNK):
        got += await stream.read()
        await guest.send("data", 2, fd=1, d=b"x" * wire.CHUNK)
    assert len(got) == wire.WINDOW // 4
    assert (await guest.expect("credit", 2))["n"] == wire.WINDOW // 4  # consumed, granted back
    await guest.send("eof", 2, fd=1)
    while await stream.read():
        pass
    # To the guest: never beyond the window until the guest grants more.
    writer = asyncio.ensure_future(stream.write(b"y" * (wire.WINDOW + 1000)))
    received = 0
    while received < wire.WINDOW:
        received += len((await guest.expect("data", 2))["d"])
    assert received == wire.WINDOW and not writer.done()
    await guest.send("credit", 2, fd=0, n=1000)
    assert len((await guest.expect("data", 2))["d"]) == 1000
    await writer
    await stream.write_eof()
    await guest.expect("eof", 2)
    await stream.finish()
    await guest.expect("close", 2)
    assert 2 not in ch.streams


async def test_guest_beyond_its_window_is_cut_off(pair):
    ch, guest = pair
    opened = collect(ch)
    await guest.send("connect", 2, ip="198.18.0.1", port=80)
    for _ in range(wire.WINDOW // wire.CHUNK + 1):
        await guest.send("data", 2, fd=1, d=b"z" * wire.CHUNK)
    await until(lambda: not ch.is_open)
    assert isinstance(ch.closed_error(), ProtocolError)
    with pytest.raises(ConnectionResetError):
        await opened[0].write(b"late")


async def test_open_streams_are_bounded_and_ids_never_reused(pair, monkeypatch):
    ch, guest = pair
    monkeypatch.setattr(channel_mod, "MAX_GUEST_STREAMS", 3)
    opened = collect(ch)
    for s in (2, 4, 6, 8):
        await guest.send("connect", s, ip="198.18.0.1", port=443)
    await guest.expect("close", 8)  # the fourth one is over the bound
    assert [st.id for st in opened] == [2, 4, 6]
    await opened[0].finish()
    await guest.expect("close", 2)
    await guest.send("connect", 2, ip="198.18.0.1", port=443)  # reused id: dropped
    await guest.send("connect", 3, ip="198.18.0.1", port=443)  # odd id: the host's, dropped
    await guest.send("connect", 10, ip="198.18.0.1", port=443)
    await until(lambda: len(opened) == 4)
    assert opened[3].id == 10 and sorted(ch.streams) == [4, 6, 10]


async def test_repeated_control_frames_do_not_pile_up(pair):
    ch, guest = pair
    opened = collect(ch)
    await guest.send("connect", 2, ip="198.18.0.1", port=443)
    frames = b"".join(wire.message("eof", 2, fd=1) for _ in range(5000))
    frames += b"".join(wire.message("credit", 2, fd=0, n=2**62) for _ in range(100))
    await asyncio.get_running_loop().sock_sendall(guest.sock, frames)
    await guest.send("close", 2)
    await until(lambda: opened and opened[0].reset)
    stream = opened[0]
    assert stream.inbox.qsize() == 0 and await stream.read() == b""
    assert stream.outflow.credit <= 2**40
    with pytest.raises(ConnectionResetError):
        await stream.write(b"x")


async def test_session_drops_bogus_destinations_without_asking_the_proxy(pair):
    ch, guest = pair
    session = NetworkSession({}, {}, environ={})
    asked = []

    async def connect(ip, port, conn):
        asked.append((ip, port))
        await conn.close()

    session.proxy.connect = connect
    ch.accept_guest_streams(session._serve_soon)
    await guest.send("connect", 2, ip="not an address", port=443)
    await guest.send("connect", 4, ip="198.18.0.1", port=0)
    await guest.send("connect", 6, ip="198.18.0.1", port=443)
    for s in (2, 4, 6):
        await guest.expect("close", s)
    assert asked == [("198.18.0.1", 443)]
    await session.close()


async def test_dns_stream_gets_the_proxy_answer(pair):
    ch, guest = pair
    session = NetworkSession({"allow": ["api.test"]}, {}, environ={})
    ch.accept_guest_streams(session._serve_soon)
    query = bytes.fromhex("5eed01000001000000000000036170690474657374000001""0001")
    await guest.send("dns", 2, d=query)
    answer = (await guest.expect("dns", 2))["d"]
    assert answer[:2] == query[:2] and answer[3] & 0xF == 0  # same id, NOERROR
    await guest.send("dns", 4, d=query.replace(b"\x03api", b"\x03zzz"))
    assert (await guest.expect("dns", 4))["d"][3] & 0xF == 5  # REFUSED
    assert [e["event"] for e in session.log()] == ["dns", "deny"]
    await session.close()


async def test_agent_outside_a_vm_refuses_to_touch_the_network(agent):
    stream = agent.channel.open_stream()
    await stream.send("net", ca_bundle="/nonexistent")
    reply = await stream.recv()
    assert reply["t"] == "error" and reply["code"] == "ENOTSUP"
