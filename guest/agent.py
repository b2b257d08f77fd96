"""The guest agent's serving loop: one channel, many streams, no asyncio.

Owns the agent side of the channel in `protocol/PROTOCOL.md` and nothing of any stream kind:
it reads frames, answers the connection's own messages (hello, ping, park, resume, shutdown),
joins requests sent in parts, and routes every other message by a table to one of its
handlers (`handler.Handler`: exec, read, fs, write, watch, net, tcp_connect, mount). Each
round it polls the fds the handlers name, hands a ready fd to the handler that named it, and
writes queued frames out. It is a single-threaded `selectors` loop because `import asyncio`
alone costs 1-2 s under TCG, and this is on the boot path.

The same code serves a VM's virtio-serial port (reconnectable: the host may go away and come
back, e.g. after a snapshot restore) and a plain socket or pipe when the agent runs on the host
as a subprocess for contract tests.
"""

from __future__ import annotations

import collections
import errno
import os
import selectors
import time

from . import execs, mounts, netcap, netsetup, parts, portfwd, reads, watches, wire, writes
from .handler import READ, WRITE, Handler, close_quietly, log

AGENT_VERSION = "0.1.0"
# Past this much queued output the handlers stop reading guest data (see handler.py).
BACKLOG = 4 * wire.WINDOW


class OutQueue:
    """Frames waiting for the channel. A virtio-serial port takes at most 32 KiB per write,
    so a flat buffer trimmed from the front would move megabytes per write under load; this
    keeps whole frames and an offset into the first."""

    def __init__(self):
        self._frames: collections.deque[bytes] = collections.deque()
        self._offset = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.size += len(frame)

    def clear(self) -> None:
        self._frames.clear()
        self._offset = 0
        self.size = 0

    def write_to(self, fd: int) -> None:
        """Write until the fd would block or nothing is left."""
        while self._frames:
            head = self._frames[0]
            n = os.write(fd, memoryview(head)[self._offset:])
            self.size -= n
            self._offset += n
            if self._offset == len(head):
                self._frames.popleft()
                self._offset = 0


class Agent:
    def __init__(self, fd: int, *, reconnectable: bool):
        self.fd = fd
        self.reconnectable = reconnectable
        self.sel = selectors.DefaultSelector()
        self.registered: dict[int, int] = {}
        self.owners: dict[int, Handler] = {}  # fd -> the handler that asked to poll it
        self.decoder = wire.FrameDecoder()
        self.out = OutQueue()
        self.connected = False
        self.running = True
        self.shutdown_requested = False

        self.mounts = mounts.Mounts(self.send, self.forget_fd)
        self.execs = execs.Execs(self.send, self.forget_fd, self.mounts)
        self.net = netcap.Capture(self.send, self.forget_fd)  # idle until the host enables it
        # Readers last: they are pumped each round after exits and watch events are queued.
        self.handlers: list[Handler] = [
            self.execs,
            watches.Watches(self.send, self.forget_fd, self.mounts),
            writes.Writes(self.send, self.forget_fd, self.mounts),
            self.net,
            portfwd.Forwards(self.send, self.forget_fd),
            self.mounts,
            reads.Reads(self.send, self.forget_fd, self.mounts),
            reads.Listings(self.send, self.forget_fd, self.mounts),
        ]
        self.opens: dict[str, Handler] = {t: h for h in self.handlers for t in h.opens}
        # Each round asks only the handlers that override a step: the loop runs once per
        # chunk of output, and under TCG every call in it shows in an exec's throughput.
        self.pollers = _overriding(self.handlers, "interest")
        self.tickers = _overriding(self.handlers, "tick")
        self.timers = _overriding(self.handlers, "deadline")
        self.control = {"hello": self.on_hello, "ping": self.on_ping, "park": self.park,
                        "resume": self.resume, "shutdown": self.on_shutdown,
                        "part": self.on_part}
        self.parts = parts.Parts(self.send, self.stream_busy)

        os.set_blocking(self.fd, False)
        # An inherited channel fd (host subprocess mode) must not leak into processes we
        # start: they would keep the channel open after the agent died.
        os.set_inheritable(self.fd, False)

    def close(self) -> None:
        """Release what this agent holds (for serving a new connection with a new agent)."""
        self.execs.close()
        self.sel.close()
        close_quietly(self.fd)

    # ---- channel -----------------------------------------------------------------------

    def send(self, t: str, s: int = wire.CONTROL, **fields) -> None:
        if self.connected:
            self.out.append(wire.message(t, s, **fields))

    def backed_up(self) -> bool:
        return len(self.out) > BACKLOG

    def greet(self) -> None:
        """Send hello. On a virtio port this blocks until the host connects, which makes a
        race-free handshake: nothing the host sends can arrive before the port is open."""
        frame = wire.message("hello", **self.hello_fields())
        os.set_blocking(self.fd, True)
        try:
            view = memoryview(frame)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        finally:
            os.set_blocking(self.fd, False)
        self.connected = True
        self.decoder = wire.FrameDecoder()

    @staticmethod
    def hello_fields() -> dict:
        return dict(version=wire.VERSION, agent=AGENT_VERSION, kernel=os.uname().release,
                    pid=os.getpid())

    def on_disconnect(self) -> None:
        """The host went away: nobody can collect output any more, so end every stream."""
        self.connected = False
        self.out.clear()
        self.end_all()
        if not self.reconnectable:
            self.running = False

    def read_channel(self) -> None:
        try:
            data = os.read(self.fd, 256 * 1024)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.on_disconnect()
            return
        try:
            msgs = self.decoder.feed(data)
        except wire.WireError as e:
            log("bad frame from host:", e)
            self.on_disconnect()
            return
        for msg in msgs:
            try:
                self.dispatch(msg)
            except Exception as e:  # one bad request must not take the agent down
                log("error handling", msg.get("t"), repr(e))
                self.send("error", msg["s"], code="EINTERNAL", message=str(e))

    def flush(self) -> None:
        if not self.out:
            return
        try:
            self.out.write_to(self.fd)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO):
                self.on_disconnect()
                return
            raise

    # ---- messages ----------------------------------------------------------------------

    def dispatch(self, msg: dict) -> None:
        t, s = msg["t"], msg["s"]
        control = self.control.get(t)
        if control is not None:
            control(s, msg)
            return
        opener = self.opens.get(t)
        if opener is not None:
            # Checked across every kind: a stream is one thing at a time.
            if self.stream_busy(s):
                self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            else:
                opener.open(t, s, msg)
            return
        owner = self.owner_of(s)
        if owner is not None:
            owner.message(t, s, msg)
        # else: a late message for a stream that already ended

    def owner_of(self, s: int) -> Handler | None:
        # A handful of dict lookups: streams end inside their handlers (an exit, an eof, a
        # reset), so asking them is simpler than keeping a second table in step.
        for handler in self.handlers:
            if handler.owns(s):
                return handler
        return None

    def stream_busy(self, s: int) -> bool:
        return self.owner_of(s) is not None

    def on_hello(self, s: int, msg: dict) -> None:
        if msg["version"] != wire.VERSION:
            self.send("error", 0, code="EVERSION",
                      message=f"agent speaks version {wire.VERSION}, host {msg['version']}")

    def on_ping(self, s: int, msg: dict) -> None:
        self.send("pong", 0, id=msg["id"])

    def on_shutdown(self, s: int, msg: dict) -> None:
        self.shutdown_requested = True
        self.mounts.shutdown()  # nothing of a host folder goes into the disk
        os.sync()
        self.send("shutdown", 0)

    def on_part(self, s: int, msg: dict) -> None:
        request = self.parts.feed(s, msg)
        if request is not None:
            self.dispatch(request)

    def park(self, s: int = 0, msg: dict | None = None) -> None:
        """Get ready to be saved as a machine state: nothing running, nothing in flight.
        The host saves the VM right after `parked` and never talks to it again; clones
        restored from the state wake up here, and their host's first frame is `resume`."""
        self.end_all()
        if os.getpid() == 1:
            # What a clone may need later that costs execs, done once here for all of them.
            # overlayfs for host folder mounts rides along in the same modprobe, and the
            # mount code (ctypes, threads) is imported into the state clones wake up with.
            try:
                netsetup.load_modules(netsetup.PRELOAD + ("overlay",))
            except (netsetup.SetupError, OSError) as e:
                log("preloading the network modules failed:", e)
            self.mounts.preload()
        self.send("parked", 0)

    def end_all(self) -> None:
        """End every stream of this connection."""
        for handler in self.handlers:
            handler.shutdown()
        self.parts.clear()

    def resume(self, s: int, msg: dict) -> None:
        """A restored clone's first frame: make this machine unique (RNG, clock), then greet
        the new host as on a fresh connection. Only PID 1 owns the machine; an agent running
        as a host subprocess (contract tests) must not touch the host's clock."""
        if os.getpid() == 1:
            from . import reseed

            try:
                reseed.apply(msg["entropy"], msg["time_ns"])
            except (OSError, ValueError, OverflowError) as e:
                self.send("error", 0, code="ERESUME", message=f"cannot resume: {e}")
                return
        self.send("hello", 0, **self.hello_fields())

    # ---- loop --------------------------------------------------------------------------

    def update_registrations(self) -> None:
        want: dict[int, int] = {self.fd: READ | (WRITE if self.out else 0)}
        owners: dict[int, Handler] = {}
        backed_up = self.backed_up()
        for handler in self.pollers:
            interest = handler.interest(backed_up)
            if interest:
                want.update(interest)
                owners.update(dict.fromkeys(interest, handler))
        self.owners = owners
        for fd in [fd for fd in self.registered if fd not in want]:
            self.sel.unregister(fd)
            del self.registered[fd]
        for fd, mask in want.items():
            if fd not in self.registered:
                self.sel.register(fd, mask)
            elif self.registered[fd] != mask:
                self.sel.modify(fd, mask)
            self.registered[fd] = mask

    def forget_fd(self, fd: int) -> None:
        """Take `fd` out of the selector before its owner closes it: the number may come
        back as another stream's fd within this very round."""
        self.owners.pop(fd, None)
        if fd in self.registered:
            self.sel.unregister(fd)
            del self.registered[fd]

    def timeout(self) -> float | None:
        backed_up, soonest = self.backed_up(), None
        for handler in self.timers:
            d = handler.deadline(backed_up)
            if d is not None and (soonest is None or d < soonest):
                soonest = d
        return None if soonest is None else max(0.0, soonest - time.monotonic())

    def serve(self) -> None:
        while self.running:
            if not self.connected:
                self.greet()
            if self.shutdown_requested and not self.out:
                return
            now, backed_up = time.monotonic(), self.backed_up()
            for handler in self.tickers:
                handler.tick(now, backed_up)
            self.update_registrations()
            for key, events in self.sel.select(self.timeout()):
                if key.fd == self.fd:
                    if events & WRITE:
                        self.flush()
                    if events & READ and self.connected:
                        self.read_channel()
                    continue
                owner = self.owners.get(key.fd)
                if owner is not None:  # else closed earlier in this round
                    owner.service(key.fd, events)
            self.flush()


def _overriding(handlers: list[Handler], step: str) -> list[Handler]:
    return [h for h in handlers if getattr(type(h), step) is not getattr(Handler, step)]
