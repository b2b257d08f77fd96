"""The agent's port forwarding: host-opened streams that reach a TCP server inside the guest.

The host opens an odd-numbered stream with `tcp_connect {port}`; this module connects to
127.0.0.1:PORT (then ::1 if IPv4 is refused), answers `result` once connected or `error`
(`ECONNREFUSED`, ...) at once if nothing listens, and then relays bytes both ways with the
same relay as network capture (`relay`), with the directions mirrored: `data` fd 0 is what
the host sends the server, fd 1 what the server sends back, each within the other side's
credit;
`eof` passes a half-close on; `close` ends the stream (from the host: done, or a reset when
it had not sent eof; from the guest: the server reset or vanished). Nothing here involves a
network device, so forwards work with networking off.

It is one of the agent loop's handlers (`handler.Handler`), and every buffer is bounded:
bytes towards the server by the host's credit, bytes towards the host by ours.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from .handler import NOTHING, WRITE, Handler
from .relay import Relay

MAX_CONNS = 512  # forwarded connections at once; more are refused with EMFILE
# Where a forwarded port is looked for, in order: a server bound only to ::1 (some
# `localhost` servers are) is still reached when IPv4 finds nothing.
_TARGETS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))


class Conn(Relay):
    """One forwarded connection: a relay that first connects, trying each target in turn."""

    def __init__(self, stream: int, port: int, *args):
        super().__init__(stream, *args)
        self.port = port
        self.target = 0  # index into _TARGETS being tried


class Forwards(Handler):
    opens = ("tcp_connect",)

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
            conn.close(reset=True)

    # ---- host messages -----------------------------------------------------------------

    def open(self, t: str, s: int, msg: dict) -> None:
        port = msg["port"]
        if not 0 < port < 65536:
            self.send("error", s, code="EINVAL", message=f"bad port {port}")
            return
        if len(self.conns) >= MAX_CONNS:
            self.send("error", s, code="EMFILE",
                      message=f"{MAX_CONNS} forwarded connections are already open")
            return
        conn = Conn(s, port, self.send, self._forget_fd, self._ended)
        self.conns[s] = conn
        self._try_connect(conn, None)

    def message(self, t: str, s: int, msg: dict) -> None:
        self.conns[s].message(t, msg)

    # ---- polling -----------------------------------------------------------------------

    def interest(self, backed_up: bool) -> dict[int, int]:
        if not self.conns:
            return NOTHING
        want: dict[int, int] = {}
        for conn in self.conns.values():
            if not conn.connected:
                want[conn.fd] = WRITE  # the connect completes (or fails) as writable
            elif mask := conn.mask(backed_up):
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
            else:
                conn.service(events)
        except Exception as e:
            print("shuru-agent: port forward:", repr(e), file=sys.stderr, flush=True)
            if conn.stream in self.conns:
                conn.fail()
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
                conn.attach(conn.sock)
                self.send("result", conn.stream, value=None)
                conn.write()  # bytes the host sent ahead of the answer
                return
            first_err = first_err or err
            conn.target += 1
            if conn.target >= len(_TARGETS):
                conn.close_sock()
                del self.conns[conn.stream]
                code = errno.errorcode.get(first_err, "EIO")
                self.send("error", conn.stream, code=code,
                          message=f"cannot connect to port {conn.port} in the guest: "
                                  f"{_strerror(first_err)}")
                return
            err = None

    def _start_attempt(self, conn: Conn) -> int:
        conn.close_sock()
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

    # ---- ending ------------------------------------------------------------------------

    def _forget_fd(self, fd: int) -> None:
        # Leave the selector first: the fd number may be reused by the next socket.
        self.by_fd.pop(fd, None)
        self.forget(fd)

    def _ended(self, conn: Conn) -> None:
        self.conns.pop(conn.stream, None)


def _strerror(err: int) -> str:
    try:
        return os.strerror(err)
    except ValueError:
        return f"error {err}"
