"""The agent's port forwarding: host-opened streams that reach a TCP server inside the guest.

The host opens an odd-numbered stream with `tcp_connect {port}`; this module connects to
127.0.0.1:PORT (then ::1 if IPv4 is refused), answers `result` once connected or `error`
(`ECONNREFUSED`, ...) at once if nothing listens, and then relays bytes both ways as on a
captured connection (`netcap`), with the directions mirrored: `data` fd 0 is what the host
sends the server, fd 1 what the server sends back, each within the other side's credit;
`eof` passes a half-close on; `close` ends the stream (from the host: done, or a reset when
it had not sent eof; from the guest: the server reset or vanished). Nothing here involves a
network device, so forwards work with networking off.

Like netcap it runs inside the agent's single-threaded selectors loop (`interest`,
`service`, `message`), and every buffer is bounded: bytes towards the server by the host's
credit, bytes towards the host by ours.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import sys

from . import wire

MAX_CONNS = 512  # forwarded connections at once; more are refused with EMFILE
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# Where a forwarded port is looked for, in order: a server bound only to ::1 (some
# `localhost` servers are) is still reached when IPv4 finds nothing.
_TARGETS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


class Conn:
    """One forwarded connection and its stream."""

    def __init__(self, stream: int, port: int):
        self.stream = stream
        self.port = port
        self.target = 0  # index into _TARGETS being tried
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connected = False
        self.credit = wire.WINDOW  # bytes we may still send the host on fd 1
        self.to_app = bytearray()  # from the host, not yet written to the server
        self.unacked = 0  # written to the server, not yet granted back to the host
        self.app_eof = False  # the server shut its sending side (eof sent)
        self.host_eof = False  # the host has nothing more to send
        self.shut_wr = False
        self.closing = False  # the host ended the stream: close once to_app is written


class Forwards:
    def __init__(self, send, forget):
        self.send = send  # the agent's send(t, s, **fields)
        self.forget = forget  # the agent's forget_fd: leave the selector before a close
        self.conns: dict[int, Conn] = {}
        self.by_fd: dict[int, Conn] = {}

    def owns(self, stream: int) -> bool:
        return stream in self.conns

    def shutdown(self) -> None:
        """The host went away: every forwarded connection is reset."""
        for conn in list(self.conns.values()):
            self._drop(conn, reset=True)

    # ---- host messages -----------------------------------------------------------------

    def open(self, s: int, msg: dict) -> None:
        port = msg["port"]
        if s in self.conns:
            self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            return
        if not 0 < port < 65536:
            self.send("error", s, code="EINVAL", message=f"bad port {port}")
            return
        if len(self.conns) >= MAX_CONNS:
            self.send("error", s, code="EMFILE",
                      message=f"{MAX_CONNS} forwarded connections are already open")
            return
        conn = Conn(s, port)
        self.conns[s] = conn
        self._try_connect(conn, None)

    def message(self, t: str, s: int, msg: dict) -> None:
        conn = self.conns[s]
        if t == "data" and msg["fd"] == 0:
            if not conn.host_eof:
                # Bounded by our window: the host sends no more than we granted. Bytes sent
                # before the connection is up wait here.
                conn.to_app += msg["d"]
                self._write_app(conn)
        elif t == "eof" and msg["fd"] == 0:
            conn.host_eof = True
            self._write_app(conn)
        elif t == "credit" and msg["fd"] == 1:
            conn.credit += max(0, msg["n"])
        elif t in ("close", "cancel"):
            if conn.host_eof and conn.to_app and conn.connected:
                conn.closing = True  # deliver what the host sent before its eof first
            else:
                self._drop(conn, reset=not conn.host_eof)

    # ---- polling -----------------------------------------------------------------------

    def interest(self, backed_up: bool) -> dict[int, int]:
        want: dict[int, int] = {}
        for conn in self.conns.values():
            if not conn.connected:
                want[conn.fd] = _WRITE  # the connect completes (or fails) as writable
                continue
            mask = _WRITE if conn.to_app else 0
            if not backed_up and conn.credit > 0 and not conn.app_eof:
                mask |= _READ
            if mask:
                want[conn.fd] = mask
        return want

    def service(self, fd: int, events: int) -> bool:
        """Handle a ready fd if it is one of ours; False if it is not. Whatever goes wrong
        with one connection ends that connection, never the agent (PID 1)."""
        conn = self.by_fd.get(fd)
        if conn is None:
            return False
        try:
            if not conn.connected:
                err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self._try_connect(conn, err)
                return True
            if events & _WRITE:
                self._write_app(conn)
            if events & _READ and conn.stream in self.conns:
                self._read_app(conn)
        except Exception as e:
            print("shuru-agent: port forward:", repr(e), file=sys.stderr, flush=True)
            if conn.stream in self.conns:
                self._reset_by_guest(conn)
        return True

    # ---- connecting --------------------------------------------------------------------

    def _try_connect(self, conn: Conn, err: int | None) -> None:
        """Start, finish or fail over the connect. `err` is the outcome of the attempt in
        flight (None: nothing in flight yet)."""
        first_err = None
        while True:
            if err is None:
                err = self._start_attempt(conn)
                if err == errno.EINPROGRESS:
                    return  # writable later; service() comes back here
            if err == 0:
                conn.connected = True
                self.send("result", conn.stream, value=None)
                self._write_app(conn)  # bytes the host sent ahead of the answer
                return
            first_err = first_err or err
            conn.target += 1
            if conn.target >= len(_TARGETS):
                self._close_sock(conn)
                del self.conns[conn.stream]
                code = errno.errorcode.get(first_err, "EIO")
                self.send("error", conn.stream, code=code,
                          message=f"cannot connect to port {conn.port} in the guest: "
                                  f"{_strerror(first_err)}")
                return
            err = None

    def _start_attempt(self, conn: Conn) -> int:
        self._close_sock(conn)
        family, addr = _TARGETS[conn.target]
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            return e.errno or errno.EAFNOSUPPORT  # no IPv6 in this kernel
        sock.setblocking(False)
        conn.sock, conn.fd = sock, sock.fileno()
        self.by_fd[conn.fd] = conn
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock.connect_ex((addr, conn.port))

    # ---- relaying ----------------------------------------------------------------------

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
        if not conn.connected:
            return
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
            # Batched as the host does: a quarter window at a time never stalls it.
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
            self._drop(conn, reset=False)

    # ---- ending ------------------------------------------------------------------------

    def _close_sock(self, conn: Conn, reset: bool = False) -> None:
        if conn.sock is None:
            return
        # Leave the selector first: the fd number may be reused by the next socket.
        self.forget(conn.fd)
        self.by_fd.pop(conn.fd, None)
        if reset:
            try:
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            except OSError:
                pass
        conn.sock.close()
        conn.sock, conn.fd = None, -1

    def _drop(self, conn: Conn, *, reset: bool) -> None:
        self.conns.pop(conn.stream, None)
        self._close_sock(conn, reset=reset)

    def _reset_by_guest(self, conn: Conn) -> None:
        self._drop(conn, reset=True)
        self.send("close", conn.stream)


def _strerror(err: int) -> str:
    try:
        return os.strerror(err)
    except ValueError:
        return f"error {err}"
