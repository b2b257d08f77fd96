"""The agent's network capture (allow_net): the sockets guest traffic is redirected to, and the
guest-opened streams that carry it to the host's policy proxy.

`netsetup` points the kernel here: every outgoing TCP connection lands on a listener on
127.0.0.1, and DNS on 127.0.0.53:53 (UDP and TCP). For each accepted connection this module
reads where the program meant to go (SO_ORIGINAL_DST) and opens an even-numbered stream with
`connect {ip, port}`; bytes then flow both ways as `data` (fd 1 guest→host, fd 0 host→guest)
within each direction's credit, half-closes as `eof`, and `close` ends the stream (from the
host: done or denied; from the guest: the program reset it). Each DNS query is one stream:
`dns {d}` out, `dns {d}` (the raw answer) back. The host decides everything; this side only
moves bytes, so it holds no policy and no secrets.

It is one of the agent loop's handlers (`handler.Handler`); each captured connection is a
`relay.Relay`, the same byte relay port forwarding uses. Every buffer is bounded by the protocol's credit or by a count, so a busy guest program
cannot grow the agent (PID 1) without limit.
"""

from __future__ import annotations

import collections
import errno
import os
import selectors
import socket
import struct
import sys
from collections.abc import Mapping

from . import netsetup
from .handler import NOTHING, Handler
from .relay import Relay, reset_sock

MAX_CONNS = 512  # captured TCP connections at once; more are reset at accept
MAX_DNS_PENDING = 256  # unanswered queries; the oldest is answered SERVFAIL beyond that
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class DnsClient:
    """A TCP DNS client: 2-byte length-prefixed queries in, answers out the same way."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out = bytearray()
        self.pending = 0
        self.eof = False


class Capture(Handler):
    """Network capture as one of the agent's handlers: `net` turns it on; the streams it
    opens are its own (even-numbered)."""

    opens = ("net",)

    def __init__(self, send, forget):
        self.send = send  # the agent's send(t, s, **fields)
        self.forget = forget  # the agent's forget_fd: leave the selector before a close
        self.enabled = False
        self.listener: socket.socket | None = None
        self.udp: socket.socket | None = None
        self.dns_listener: socket.socket | None = None
        self.conns: dict[int, Relay] = {}
        self.conn_by_fd: dict[int, Relay] = {}
        self.clients: dict[int, DnsClient] = {}
        # stream -> (query, ("udp", addr) | ("tcp", DnsClient)), oldest first
        self.queries: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self.next_id = 2  # guest-opened streams are even

    # ---- lifecycle ---------------------------------------------------------------------

    def open(self, t: str, s: int, msg: dict) -> None:
        """Turn capture on; answered by `result` once it is in place."""
        if os.getpid() != 1:
            # As a host subprocess (contract tests) this would rewire the host's own network.
            self.send("error", s, code="ENOTSUP",
                      message="network capture runs only as the VM's PID 1")
            return
        try:
            self.enable(msg.get("ca_bundle"))
        except (netsetup.SetupError, OSError) as e:
            self.send("error", s, code="ENET", message=f"cannot enable the network: {e}")
            return
        self.send("result", s, value=None)

    def enable(self, bundle_path: str | None) -> None:
        netsetup.enable(bundle_path)
        if self.listener is None:
            self.listener = _listen(socket.SOCK_STREAM, ("127.0.0.1", netsetup.CAPTURE_PORT))
        if self.udp is None:
            self.udp = _listen(socket.SOCK_DGRAM, (netsetup.DNS_ADDR, 53))
        if self.dns_listener is None:
            self.dns_listener = _listen(socket.SOCK_STREAM, (netsetup.DNS_ADDR, 53))
        self.enabled = True

    def owns(self, stream: int) -> bool:
        return stream in self.conns or stream in self.queries

    def shutdown(self) -> None:
        """The host went away (or never enabled us on this connection): reset every
        connection, drop every query, close the sockets and take the route down, so the VM
        is offline again until a host enables it."""
        for conn in list(self.conns.values()):
            conn.close(reset=True)
        for client in list(self.clients.values()):
            self._drop_client(client)
        self.queries.clear()
        for sock in (self.listener, self.udp, self.dns_listener):
            if sock is not None:
                self._close(sock)
        self.listener = self.udp = self.dns_listener = None
        if self.enabled:
            netsetup.interface_down()
        self.enabled = False
        self.next_id = 2

    # ---- polling -----------------------------------------------------------------------

    def interest(self, backed_up: bool) -> Mapping[int, int]:
        if self.listener is None and not self.conns and not self.clients:
            return NOTHING  # off: no allocation in the loop's round
        want: dict[int, int] = {}
        if self.listener is not None:
            want[self.listener.fileno()] = _READ
            want[self.dns_listener.fileno()] = _READ
            if not backed_up:
                want[self.udp.fileno()] = _READ
        for conn in self.conns.values():
            if mask := conn.mask(backed_up):
                want[conn.fd] = mask
        for client in self.clients.values():
            mask = _WRITE if client.out else 0
            if not backed_up and not client.eof:
                mask |= _READ
            if mask:
                want[client.fd] = mask
        return want

    def service(self, fd: int, events: int) -> bool:
        """Handle a ready fd if it is one of ours; False if it is not. This runs in PID 1:
        whatever goes wrong with one connection ends that connection, never the agent."""
        try:
            return self._service(fd, events)
        except Exception as e:
            print("shuru-agent: network capture:", repr(e), file=sys.stderr, flush=True)
            conn = self.conn_by_fd.get(fd)
            if conn is not None:
                conn.fail()
            return True

    def _service(self, fd: int, events: int) -> bool:
        if self.listener is not None and fd == self.listener.fileno():
            self._accept()
        elif self.udp is not None and fd == self.udp.fileno():
            self._read_udp()
        elif self.dns_listener is not None and fd == self.dns_listener.fileno():
            self._accept_dns()
        elif fd in self.conn_by_fd:
            self.conn_by_fd[fd].service(events)
        elif fd in self.clients:
            client = self.clients[fd]
            if events & _WRITE:
                self._write_client(client)
            if events & _READ and fd in self.clients:
                self._read_client(client)
        else:
            return False
        return True

    # ---- host messages -----------------------------------------------------------------

    def message(self, t: str, s: int, msg: dict) -> None:
        conn = self.conns.get(s)
        if conn is not None:
            conn.message(t, msg)
            return
        query = self.queries.pop(s, None)
        if query is None:
            return
        if t == "dns":
            self._answer(query[1], msg["d"])
        elif t in ("close", "error"):
            self._answer(query[1], servfail(query[0]))

    # ---- TCP ---------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):  # bounded per round, so the channel gets its turn
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ECONNABORTED, EMFILE: the client sees a reset or retries
            try:
                ip, port = original_dst(sock)
            except OSError:
                sock.close()  # a direct connection to the listener, not a redirected one
                continue
            if len(self.conns) >= MAX_CONNS:
                reset_sock(sock)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()  # reset before we got to it
                continue
            conn = Relay(self._new_stream(), self.send, self._forget_fd, self._ended)
            conn.attach(sock)
            self.conns[conn.stream] = conn
            self.conn_by_fd[conn.fd] = conn
            self.send("connect", conn.stream, ip=ip, port=port)

    def _forget_fd(self, fd: int) -> None:
        self.conn_by_fd.pop(fd, None)
        self.forget(fd)

    def _ended(self, conn: Relay) -> None:
        self.conns.pop(conn.stream, None)

    def _close(self, sock: socket.socket) -> None:
        # Leave the selector first: the fd number may be reused by the next accept.
        self.forget(sock.fileno())
        sock.close()

    def _new_stream(self) -> int:
        stream = self.next_id
        self.next_id += 2
        return stream

    # ---- DNS ---------------------------------------------------------------------------

    def _read_udp(self) -> None:
        for _ in range(32):
            try:
                query, addr = self.udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._ask(query, ("udp", addr))

    def _ask(self, query: bytes, reply_to: tuple) -> None:
        if len(query) < 12:
            return  # not even a DNS header
        while len(self.queries) >= MAX_DNS_PENDING:
            _, (old_query, old_reply) = self.queries.popitem(last=False)
            self._answer(old_reply, servfail(old_query))
        stream = self._new_stream()
        self.queries[stream] = (query, reply_to)
        if reply_to[0] == "tcp":
            reply_to[1].pending += 1
        self.send("dns", stream, d=query)

    def _answer(self, reply_to: tuple, answer: bytes) -> None:
        kind, where = reply_to
        if kind == "udp":
            if self.udp is not None:
                try:
                    self.udp.sendto(answer, where)
                except OSError:
                    pass  # the asker is gone; UDP promises nothing more
            return
        where.pending -= 1
        if where.fd in self.clients:
            where.out += struct.pack("!H", len(answer)) + answer
            self._write_client(where)

    def _accept_dns(self) -> None:
        for _ in range(16):
            try:
                sock, _ = self.dns_listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.clients) >= 64:
                reset_sock(sock)
                continue
            sock.setblocking(False)
            client = DnsClient(sock)
            self.clients[client.fd] = client

    def _read_client(self, client: DnsClient) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(client)
            return
        if not data:
            client.eof = True
        client.buf += data
        while len(client.buf) >= 2:
            (length,) = struct.unpack_from("!H", client.buf)
            if len(client.buf) < 2 + length:
                break
            query = bytes(client.buf[2:2 + length])
            del client.buf[:2 + length]
            self._ask(query, ("tcp", client))
        if client.eof and not client.pending and not client.out:
            self._drop_client(client)

    def _write_client(self, client: DnsClient) -> None:
        try:
            n = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_client(client)
            return
        del client.out[:n]
        if client.eof and not client.pending and not client.out:
            self._drop_client(client)

    def _drop_client(self, client: DnsClient) -> None:
        self.clients.pop(client.fd, None)
        self._close(client.sock)


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where the program meant to connect before nftables redirected it here; OSError for a
    connection that was not redirected."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    _, port, packed = struct.unpack("!HH4s8x", raw)
    return socket.inet_ntoa(packed), port


def servfail(query: bytes) -> bytes:
    """A SERVFAIL answer to `query` (its header and question echoed), so a resolver whose
    answer never came fails at once instead of waiting out its timeout."""
    if len(query) < 12:
        return b""
    end = 12
    if struct.unpack_from("!H", query, 4)[0] >= 1:
        while end < len(query) and query[end] != 0:
            if query[end] & 0xC0:
                break
            end += 1 + query[end]
        end = min(end + 1 + 4, len(query))
        qdcount = 1
    else:
        qdcount = 0
    flags = struct.unpack_from("!H", query, 2)[0]
    flags = 0x8000 | (flags & 0x7900) | 0x0080 | 2  # QR, opcode+RD kept, RA, rcode 2
    return query[:2] + struct.pack("!HHHHH", flags, qdcount, 0, 0, 0) + query[12:end]


def _listen(kind: int, addr: tuple) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
    except OSError as e:
        sock.close()
        raise netsetup.SetupError(f"cannot listen on {addr[0]}:{addr[1]}: "
                                  f"{errno.errorcode.get(e.errno, e.strerror)}") from None
    sock.setblocking(False)
    return sock
