"""The guest's capture state machine (`shuru_guest.netcap`) on the host, with real loopback
sockets: the kernel side (nftables, SO_ORIGINAL_DST) is left out, so the listeners are on
ephemeral ports and the original destination is faked. The "host" is a list of the frames
the capture sends and calls of `Capture.message`."""

from __future__ import annotations

import selectors
import socket
import struct
import time

import pytest

from shuru_guest import netcap, wire


class Harness:
    def __init__(self, monkeypatch):
        self.sent: list[tuple[str, int, dict]] = []
        self.cap = netcap.Capture(lambda t, s, **f: self.sent.append((t, s, f)), lambda fd: None)
        self.cap.listener = netcap._listen(socket.SOCK_STREAM, ("127.0.0.1", 0))
        self.cap.udp = netcap._listen(socket.SOCK_DGRAM, ("127.0.0.1", 0))
        self.cap.dns_listener = netcap._listen(socket.SOCK_STREAM, ("127.0.0.1", 0))
        monkeypatch.setattr(netcap, "original_dst", lambda sock: ("198.18.0.9", 443))
        self.sel = selectors.DefaultSelector()

    def addr(self, sock: socket.socket) -> tuple[str, int]:
        return sock.getsockname()

    def pump(self, until=lambda: True, timeout: float = 5.0) -> None:
        """Run rounds of the capture's share of the agent loop (at least one) until
        `until()` holds."""
        deadline = time.monotonic() + timeout
        while True:
            self._round()
            if until():
                return
            assert time.monotonic() < deadline, f"stuck; sent so far: {self.sent[-5:]}"

    def _round(self) -> None:
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fd)
        for fd, mask in self.cap.interest(False).items():
            self.sel.register(fd, mask)
        for key, events in self.sel.select(0.05):
            self.cap.service(key.fd, events)

    def of(self, t: str) -> list[tuple[int, dict]]:
        return [(s, f) for kind, s, f in self.sent if kind == t]

    def connect(self) -> tuple[socket.socket, int]:
        client = socket.create_connection(self.addr(self.cap.listener))
        self.pump(lambda: self.of("connect"))
        stream, fields = self.of("connect")[-1]
        assert fields == {"ip": "198.18.0.9", "port": 443} and stream % 2 == 0
        return client, stream

    def close(self) -> None:
        self.cap.shutdown()
        self.sel.close()


@pytest.fixture
def h(monkeypatch):
    harness = Harness(monkeypatch)
    yield harness
    harness.close()


def test_bytes_both_ways_and_credit(h):
    client, s = h.connect()
    client.sendall(b"hello")
    h.pump(lambda: h.of("data"))
    assert h.of("data") == [(s, {"fd": 1, "d": b"hello"})]
    chunk = b"r" * wire.CHUNK
    for _ in range(wire.WINDOW // 4 // wire.CHUNK):
        h.cap.message("data", s, {"fd": 0, "d": chunk})
    got = b""
    client.settimeout(5)
    while len(got) < wire.WINDOW // 4:
        h.pump()
        got += client.recv(1 << 20)
    h.pump(lambda: h.of("credit"))
    assert h.of("credit") == [(s, {"fd": 0, "n": wire.WINDOW // 4})]  # one grant, batched
    client.shutdown(socket.SHUT_WR)
    h.pump(lambda: h.of("eof"))
    assert h.of("eof") == [(s, {"fd": 1})]


def test_guest_never_sends_beyond_its_credit(h):
    client, s = h.connect()
    h.cap.conns[s].credit = 10
    client.sendall(b"x" * 100)
    h.pump(lambda: sum(len(f["d"]) for _, f in h.of("data")) >= 10)
    h.pump()
    assert sum(len(f["d"]) for _, f in h.of("data")) == 10
    h.cap.message("credit", s, {"fd": 1, "n": 90})
    h.pump(lambda: sum(len(f["d"]) for _, f in h.of("data")) == 100)


def test_host_eof_then_close_delivers_everything_then_a_clean_end(h):
    client, s = h.connect()
    h.cap.message("data", s, {"fd": 0, "d": b"HTTP/1.1 403 Forbidden\r\n\r\nblocked"})
    h.cap.message("eof", s, {"fd": 0})
    h.cap.message("close", s, {})
    h.pump(lambda: s not in h.cap.conns)
    client.settimeout(5)
    data = b""
    while chunk := client.recv(4096):
        data += chunk
    assert data.endswith(b"blocked")  # then EOF, not a reset


def test_host_close_without_eof_resets_the_program(h):
    client, s = h.connect()
    h.cap.message("close", s, {})
    assert s not in h.cap.conns
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(10)


def test_program_reset_tells_the_host(h):
    client, s = h.connect()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    h.cap.message("data", s, {"fd": 0, "d": b"x" * 1000})  # writing to it now fails
    h.pump(lambda: h.of("close"))
    assert h.of("close") == [(s, {})] and s not in h.cap.conns


def test_connections_beyond_the_bound_are_reset(h, monkeypatch):
    monkeypatch.setattr(netcap, "MAX_CONNS", 1)
    first, _ = h.connect()
    second = socket.create_connection(h.addr(h.cap.listener))
    second.settimeout(5)
    h.pump()
    with pytest.raises(ConnectionResetError):
        second.recv(10)
    assert len(h.of("connect")) == 1


QUERY = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x03api\x04test\x00\x00\x01\x00\x01"


def test_udp_queries_are_relayed_and_answered(h):
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(QUERY, h.addr(h.cap.udp))
    h.pump(lambda: h.of("dns"))
    s, fields = h.of("dns")[0]
    assert fields == {"d": QUERY} and s % 2 == 0
    h.cap.message("dns", s, {"d": b"answer-bytes"})
    assert client.recv(100) == b"answer-bytes"
    # A query the host ends without an answer gets SERVFAIL at once, not a timeout.
    client.sendto(QUERY, h.addr(h.cap.udp))
    h.pump(lambda: len(h.of("dns")) == 2)
    h.cap.message("close", h.of("dns")[1][0], {})
    answer = client.recv(100)
    assert answer[:2] == b"\xbe\xef" and answer[3] & 0xF == 2 and answer.endswith(QUERY[12:])


def test_tcp_queries_are_length_prefixed_both_ways(h):
    client = socket.create_connection(h.addr(h.cap.dns_listener))
    client.settimeout(5)
    client.sendall(struct.pack("!H", len(QUERY)) + QUERY + struct.pack("!H", len(QUERY)) + QUERY)
    h.pump(lambda: len(h.of("dns")) == 2)
    for i, (s, fields) in enumerate(h.of("dns")):
        assert fields == {"d": QUERY}
        h.cap.message("dns", s, {"d": b"A%d" % i})
    h.pump()
    assert client.recv(100) == b"\x00\x02A0\x00\x02A1"


def test_pending_queries_are_bounded(h, monkeypatch):
    monkeypatch.setattr(netcap, "MAX_DNS_PENDING", 2)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    for _ in range(3):
        client.sendto(QUERY, h.addr(h.cap.udp))
    h.pump(lambda: len(h.of("dns")) == 3)
    assert len(h.cap.queries) == 2
    assert client.recv(100)[3] & 0xF == 2  # the oldest was answered SERVFAIL


def test_shutdown_resets_everything_and_forgets_streams(h):
    client, s = h.connect()
    h.cap.shutdown()
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(10)
    assert not h.cap.conns and h.cap.listener is None and h.cap.next_id == 2


def test_servfail_of_garbage_is_safe():
    assert netcap.servfail(b"short") == b""
    assert netcap.servfail(QUERY[:12] + b"\x3f")[3] & 0xF == 2  # truncated name
