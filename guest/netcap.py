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

It runs inside the agent's single-threaded selectors loop: `interest` says which of its fds
to poll, `service` handles one that is ready, `message` takes host frames for its streams.
Every buffer is bounded by the protocol's credit or by a count, so a busy guest program
cannot grow the agent (PID 1) without limit.
"""

from __future__ import annotations

import collections
import errno
import selectors
import socket
import struct
import sys

from . import netsetup, wire

MAX_CONNS = 512  # captured TCP connections at once; more are reset at accept
MAX_DNS_PENDING = 256  # unanswered queries; the oldest is answered SERVFAIL beyond that
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class Conn:
    """One captured TCP connection and its stream."""

    def __init__(self, stream: int, sock: socket.socket):
        self.stream = stream
        self.sock = sock
        self.fd = sock.fileno()
        self.credit = wire.WINDOW  # bytes we may still send the host on fd 1
        self.to_app = bytearray()  # from the host, not yet written to the program
        self.unacked = 0  # written to the program, not yet granted back to the host
        self.app_eof = False  # the program shut its sending side (eof sent)
        self.host_eof = False  # the host has nothing more to send
        self.shut_wr = False
        self.closing = False  # the host ended the stream: close once to_app is written


class DnsClient:
    """A TCP DNS client: 2-byte length-prefixed queries in, answers out the same way."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.out = bytearray()
        self.pending = 0
        self.eof = False


class Capture:
    def __init__(self, send, forget):
        self.send = send  # the agent's send(t, s, **fields)
        self.forget = forget  # the agent's forget_fd: leave the selector before a close
        self.enabled = False
        self.listener: socket.socket | None = None
        self.udp: socket.socket | None = None
        self.dns_listener: socket.socket | None = None
        self.conns: dict[int, Conn] = {}
        self.conn_by_fd: dict[int, Conn] = {}
        self.clients: dict[int, DnsClient] = {}
        # stream -> (query, ("udp", addr) | ("tcp", DnsClient)), oldest first
        self.queries: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self.next_id = 2  # guest-opened streams are even

    # ---- lifecycle ---------------------------------------------------------------------

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
            self._abort(conn)
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

    def interest(self, backed_up: bool) -> dict[int, int]:
        want: dict[int, int] = {}
        if self.listener is not None:
            want[self.listener.fileno()] = _READ
            want[self.dns_listener.fileno()] = _READ
            if not backed_up:
                want[self.udp.fileno()] = _READ
        for conn in self.conns.values():
            mask = _WRITE if conn.to_app else 0
            if not backed_up and conn.credit > 0 and not conn.app_eof:
                mask |= _READ
            if mask:
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
                self._reset_by_guest(conn)
            return True

    def _service(self, fd: int, events: int) -> bool:
        if self.listener is not None and fd == self.listener.fileno():
            self._accept()
        elif self.udp is not None and fd == self.udp.fileno():
            self._read_udp()
        elif self.dns_listener is not None and fd == self.dns_listener.fileno():
            self._accept_dns()
        elif fd in self.conn_by_fd:
            conn = self.conn_by_fd[fd]
            if events & _WRITE:
                self._write_app(conn)
            if events & _READ and conn.stream in self.conns:
                self._read_app(conn)
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
            if t == "data" and msg["fd"] == 0:
                if not conn.host_eof:
                    conn.to_app += msg["d"]
                    self._write_app(conn)
            elif t == "eof" and msg["fd"] == 0:
                conn.host_eof = True
                self._write_app(conn)
            elif t == "credit" and msg["fd"] == 1:
                conn.credit += max(0, msg["n"])
            elif t in ("close", "error"):
                if conn.host_eof and conn.to_app:
                    conn.closing = True  # an answer (e.g. shuru's 403) still to deliver
                elif conn.host_eof:
                    self._finish(conn)
                else:
                    self._abort(conn)
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
                _reset(sock)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()  # reset before we got to it
                continue
            conn = Conn(self._new_stream(), sock)
            self.conns[conn.stream] = conn
            self.conn_by_fd[conn.fd] = conn
            self.send("connect", conn.stream, ip=ip, port=port)

    def _read_app(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(min(conn.credit, wire.CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._reset_by_guest(conn)
            return
        if data:
            conn.credit -= len(data)
            self.send("data", conn.stream, fd=1, d=data)
        else:
            conn.app_eof = True
            self.send("eof", conn.stream, fd=1)

    def _write_app(self, conn: Conn) -> None:
        if conn.to_app:
            try:
                n = conn.sock.send(conn.to_app)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._reset_by_guest(conn)
                return
            del conn.to_app[:n]
            conn.unacked += n
            # Batched like the host does: one credit per quarter window, never a stall,
            # since the host still holds three quarters of its window.
            if conn.unacked >= wire.WINDOW // 4:
                self.send("credit", conn.stream, fd=0, n=conn.unacked)
                conn.unacked = 0
        if conn.to_app:
            return
        if conn.host_eof and not conn.shut_wr:
            conn.shut_wr = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if conn.closing:
            self._finish(conn)

    def _close(self, sock: socket.socket, reset: bool = False) -> None:
        # Leave the selector first: the fd number may be reused by the next accept.
        self.forget(sock.fileno())
        if reset:
            _reset(sock)
        else:
            sock.close()

    def _forget(self, conn: Conn) -> None:
        self.conns.pop(conn.stream, None)
        self.conn_by_fd.pop(conn.fd, None)

    def _finish(self, conn: Conn) -> None:
        """The host ended the stream after its eof: a normal close."""
        self._forget(conn)
        self._close(conn.sock)

    def _abort(self, conn: Conn) -> None:
        """Denied, failed upstream, or the host went away: the program sees a reset."""
        self._forget(conn)
        self._close(conn.sock, reset=True)

    def _reset_by_guest(self, conn: Conn) -> None:
        self._forget(conn)
        self._close(conn.sock)
        self.send("close", conn.stream)

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
                _reset(sock)
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


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the program learns at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
