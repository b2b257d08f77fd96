"""One TCP connection in the guest carried by one stream: the byte relay that network capture
(`netcap`, a program's outgoing connection) and port forwarding (`portfwd`, a host client's
connection to a guest server) share.

Bytes from the socket go to the host as `data` fd 1 within the credit the host granted; bytes
from the host (`data` fd 0, bounded by the window we granted it) are written to the socket and
granted back in batches. `eof` passes a half-close on in either direction. When the host ends
the stream (`close`, `cancel`, `error`) after its eof, what it sent is delivered first and the
socket closes normally (an answer such as the proxy's 403 still reaches the program); without
its eof the socket is reset. When the socket fails, the stream ends with `close` to the host.

The owner keeps the connections by stream and fd; a `Relay` tells it through `ended` when it
has closed its socket, so the owner can drop it from its tables.
"""

from __future__ import annotations

import selectors
import socket
import struct

from . import wire

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# What the host may send to end a stream; an error also ends it (nothing more will come).
_ENDS = ("close", "cancel", "error")


class Relay:
    def __init__(self, stream: int, send, forget, ended):
        self.stream = stream
        self.send = send  # the agent's send(t, s, **fields)
        self.forget = forget  # leave the selector before a close: the fd number is reused
        self.ended = ended  # called with this relay once its socket is closed for good
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connected = False  # a forward is still connecting; bytes wait in to_app
        self.credit = wire.WINDOW  # bytes we may still send the host on fd 1
        self.to_app = bytearray()  # from the host, not yet written to the socket
        self.unacked = 0  # written to the socket, not yet granted back to the host
        self.app_eof = False  # the socket's peer shut its sending side (eof sent)
        self.host_eof = False  # the host has nothing more to send
        self.shut_wr = False
        self.closing = False  # the host ended the stream: close once to_app is written

    def attach(self, sock: socket.socket) -> None:
        """The connected socket this stream carries from now on."""
        self.sock, self.fd, self.connected = sock, sock.fileno(), True

    # ---- polling -----------------------------------------------------------------------

    def mask(self, backed_up: bool) -> int:
        """The selector events this connection waits for now (0: none)."""
        mask = _WRITE if self.to_app else 0
        if not backed_up and self.credit > 0 and not self.app_eof:
            mask |= _READ
        return mask

    def service(self, events: int) -> None:
        if events & _WRITE:
            self.write()
        if events & _READ and self.sock is not None:
            self.read()

    # ---- host messages -----------------------------------------------------------------

    def message(self, t: str, msg: dict) -> None:
        if t == "data" and msg["fd"] == 0:
            if not self.host_eof:
                # Bounded by our window: the host sends no more than we granted.
                self.to_app += msg["d"]
                self.write()
        elif t == "eof" and msg["fd"] == 0:
            self.host_eof = True
            self.write()
        elif t == "credit" and msg["fd"] == 1:
            self.credit += max(0, msg["n"])
        elif t in _ENDS:
            if self.host_eof and self.to_app and self.connected:
                self.closing = True  # deliver what the host sent before its eof first
            else:
                self.close(reset=not self.host_eof)

    # ---- relaying ----------------------------------------------------------------------

    def read(self) -> None:
        try:
            data = self.sock.recv(min(self.credit, wire.CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.fail()
            return
        if data:
            self.credit -= len(data)
            self.send("data", self.stream, fd=1, d=data)
        else:
            self.app_eof = True
            self.send("eof", self.stream, fd=1)

    def write(self) -> None:
        if not self.connected:
            return
        if self.to_app:
            try:
                n = self.sock.send(self.to_app)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.fail()
                return
            del self.to_app[:n]
            self.unacked += n
            # Batched as the host does: one credit per quarter window never stalls it, since
            # the host still holds three quarters of its window.
            if self.unacked >= wire.WINDOW // 4:
                self.send("credit", self.stream, fd=0, n=self.unacked)
                self.unacked = 0
        if self.to_app:
            return
        if self.host_eof and not self.shut_wr:
            self.shut_wr = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self.closing:
            self.close(reset=False)

    # ---- ending ------------------------------------------------------------------------

    def fail(self) -> None:
        """The socket failed (or handling it raised): end the stream from this side."""
        self.close(reset=True)
        self.send("close", self.stream)

    def close(self, *, reset: bool) -> None:
        """Close the socket (with a TCP reset: the peer learns at once) and end the stream."""
        self.close_sock(reset=reset)
        self.ended(self)

    def close_sock(self, *, reset: bool = False) -> None:
        if self.sock is None:
            return
        self.forget(self.fd)
        if reset:
            reset_sock(self.sock)
        else:
            self.sock.close()
        self.sock, self.fd = None, -1


def reset_sock(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()
