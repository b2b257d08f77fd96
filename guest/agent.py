"""The guest agent's serving loop: one channel, many processes, no asyncio.

Owns the agent side of the protocol in `protocol/PROTOCOL.md`: it reads frames from the
channel, starts processes (pipes or a PTY), forwards their output within the host's credit,
feeds their stdin, delivers signals and reports exits. It is a single-threaded `selectors`
loop because `import asyncio` alone costs 1-2 s under TCG, and this is on the boot path.

The same code serves a VM's virtio-serial port (reconnectable: the host may go away and come
back, e.g. after a snapshot restore) and a plain socket or pipe when the agent runs on the host
as a subprocess for contract tests.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import pwd
import resource
import selectors
import signal
import struct
import sys
import termios
import time

from . import fsops, netcap, portfwd, wire

AGENT_VERSION = "0.1.0"
# After a process exits, its output pipes may stay open because a background child inherited
# them. Keep reading this long, then report EOF and the exit anyway, so `exec("daemon &")`
# returns instead of hanging on a grandchild.
EXIT_GRACE = 0.25
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(*parts) -> None:
    print("shuru-agent:", *parts, file=sys.stderr, flush=True)


class Proc:
    """One process started by an exec message, and the state of its stream."""

    def __init__(self, stream: int, pid: int, tty: bool, stdin_fd, out_fds: dict):
        self.stream = stream
        self.pid = pid
        self.tty = tty
        self.stdin_fd = stdin_fd  # pipe write end, PTY master, or None
        self.out_fds = out_fds  # {1: fd, 2: fd}; for a PTY only {1: master}
        self.credit = {fd: wire.WINDOW for fd in out_fds}
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.status = None  # (code, signal) once reaped
        self.exited_at = None


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


class FileReader:
    """A `read` stream: a regular file sent as data on fd 1 within the host's credit, never
    more than `limit` bytes (the host asks for what the file held when it looked)."""

    def __init__(self, stream: int, fd: int, limit: int | None = None):
        self.stream = stream
        self.fd = fd
        self.credit = {1: wire.WINDOW}
        self.size = 0
        self.limit = limit

    def read(self, n: int) -> bytes:
        if self.limit is not None:
            n = min(n, self.limit - self.size)
            if n <= 0:
                return b""
        return os.read(self.fd, n)

    def close(self) -> None:
        _close(self.fd)

    def final(self) -> dict:
        return {"size": self.size}


class ListingReader(FileReader):
    """An `fs` list or walk: its entries as a byte stream on fd 1 (see wire.EntryDecoder),
    produced only as the host grants credit, so a listing of any length takes bounded memory
    here and there."""

    def __init__(self, stream: int, entries):
        super().__init__(stream, -1)
        self.entries = entries
        self.pending = bytearray()
        self.count = 0

    def read(self, n: int) -> bytes:
        while len(self.pending) < n:
            entry = next(self.entries, None)
            if entry is None:
                break
            self.pending += wire.pack_entry(entry)
            self.count += 1
        data = bytes(self.pending[:n])
        del self.pending[:n]
        return data

    def close(self) -> None:
        self.entries.close()

    def final(self) -> dict:
        return {"count": self.count}


class FileWriter:
    """A `write` stream: data on fd 0 goes to the file; eof closes it and answers."""

    def __init__(self, stream: int, fd: int):
        self.stream = stream
        self.fd = fd
        self.size = 0


class Agent:
    def __init__(self, fd: int, *, reconnectable: bool):
        self.fd = fd
        self.reconnectable = reconnectable
        self.sel = selectors.DefaultSelector()
        self.registered: dict[int, int] = {}
        self.decoder = wire.FrameDecoder()
        self.out = OutQueue()
        self.procs: dict[int, Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        # Process groups of every exec of this connection, including ones whose leader has
        # exited but whose background children live on; they all end with the connection.
        self.groups: set[int] = set()
        self.readers: dict[int, FileReader] = {}
        self.writers: dict[int, FileWriter] = {}
        self.watchers: dict[int, object] = {}
        # Requests arriving in `part`s, by stream; None once refused (the rest is dropped).
        self.parts: dict[int, bytearray | None] = {}
        self.net = netcap.Capture(self.send, self.forget_fd)  # idle until the host enables it
        self.ports = portfwd.Forwards(self.send, self.forget_fd)  # host-opened tcp_connect
        self._mounts = None  # fusefs.Mounts, made on the first `mount` (ctypes costs a boot)
        self.connected = False
        self.running = True
        self.shutdown_requested = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        # A handler (not SIG_DFL) is needed for the wakeup fd to be written on SIGCHLD.
        signal.signal(signal.SIGCHLD, lambda *_: None)
        os.set_blocking(self.fd, False)
        # An inherited channel fd (host subprocess mode) must not leak into processes we
        # start: they would keep the channel open after the agent died.
        os.set_inheritable(self.fd, False)

    def close(self) -> None:
        """Release what this agent holds (for serving a new connection with a new agent)."""
        signal.set_wakeup_fd(-1)
        self.sel.close()
        for fd in (self.wake_r, self.wake_w, self.fd):
            _close(fd)

    # ---- channel -----------------------------------------------------------------------

    def send(self, t: str, s: int = wire.CONTROL, **fields) -> None:
        if self.connected:
            self.out.append(wire.message(t, s, **fields))

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
        """The host went away: nobody can collect output any more, so end every process."""
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
        if t == "hello":
            if msg["version"] != wire.VERSION:
                self.send("error", 0, code="EVERSION",
                          message=f"agent speaks version {wire.VERSION}, host {msg['version']}")
        elif t == "ping":
            self.send("pong", 0, id=msg["id"])
        elif t == "park":
            self.park()
        elif t == "resume":
            self.resume(msg)
        elif t == "shutdown":
            self.shutdown_requested = True
            if self._mounts is not None:
                self._mounts.shutdown()  # nothing of a host folder goes into the disk
            os.sync()
            self.send("shutdown", 0)
        elif t == "part":
            self.request_part(s, msg)
        elif t == "exec":
            self.start_exec(s, msg)
        elif t in ("fs", "read", "write", "watch"):
            self.start_file_op(t, s, msg)
        elif t == "net":
            self.start_net(s, msg)
        elif self.net.owns(s):
            self.net.message(t, s, msg)
        elif t == "tcp_connect":
            self.ports.open(s, msg)
        elif self.ports.owns(s):
            self.ports.message(t, s, msg)
        elif t == "mount":
            self.mounts().open(s, msg)
        elif self._mounts is not None and self._mounts.owns(s):
            self._mounts.message(t, s, msg)
        elif s in self.readers or s in self.writers or s in self.watchers:
            self.file_stream_message(t, s, msg)
        else:
            proc = self.procs.get(s)
            if proc is None:
                return  # late message for a stream that already ended
            if t == "data" and msg["fd"] == 0:
                if proc.stdin_fd is not None and not proc.stdin_eof:
                    proc.stdin_buf += msg["d"]
            elif t == "eof" and msg["fd"] == 0:
                proc.stdin_eof = True
            elif t == "credit" and msg["fd"] in proc.credit:
                proc.credit[msg["fd"]] += max(0, msg["n"])
            elif t == "signal":
                if msg.get("group", True):
                    self.kill_group(proc, msg["sig"])
                else:
                    _kill(proc.pid, msg["sig"])
            elif t == "resize" and proc.tty:
                _set_winsize(proc.stdin_fd, msg["rows"], msg["cols"])

    def mounts(self):
        if self._mounts is None:
            from . import fusefs

            self._mounts = fusefs.Mounts(self.send)
            self._mounts.forget = self.forget_fd
        return self._mounts

    def under_mount(self, path: object) -> str | None:
        """The host folder mount `path` lies in, if any (by its name: resolving it would
        ask the mount itself). This loop serves the mount's requests, so it must not wait
        on a file there: the host reads host folders on the host."""
        if self._mounts is None or not isinstance(path, str):
            return None
        norm = os.path.normpath(path)
        for target in self._mounts.targets():
            if norm == target or norm.startswith(target + "/"):
                return target
        return None

    def park(self) -> None:
        """Get ready to be saved as a machine state: nothing running, nothing in flight.
        The host saves the VM right after `parked` and never talks to it again; clones
        restored from the state wake up here, and their host's first frame is `resume`."""
        self.end_all()
        if os.getpid() == 1:
            # What a clone may need later that costs execs, done once here for all of them.
            # overlayfs for host folder mounts rides along in the same modprobe, and the
            # mount code (ctypes, threads) is imported into the state clones wake up with.
            try:
                netcap.netsetup.load_modules(netcap.netsetup.PRELOAD + ("overlay",))
            except (netcap.netsetup.SetupError, OSError) as e:
                log("preloading the network modules failed:", e)
            from . import fusefs  # noqa: F401
        self.send("parked", 0)

    def end_all(self) -> None:
        """End every stream and kill every process group this connection started."""
        for proc in list(self.procs.values()):
            self.close_proc_fds(proc)
        for stream in list(self.readers) + list(self.writers) + list(self.watchers):
            self.end_file_stream(stream)
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        self.groups.clear()
        self.procs.clear()
        self.parts.clear()
        self.net.shutdown()
        self.ports.shutdown()
        if self._mounts is not None:
            self._mounts.shutdown()

    def resume(self, msg: dict) -> None:
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

    def request_part(self, s: int, msg: dict) -> None:
        """Join a request sent in `part`s (wire.request_frames) and act on it as if it had
        come in one frame. Past MAX_REQUEST bytes it is refused once, naming the limit, and
        the rest of its parts are dropped."""
        if s not in self.parts:
            if s % 2 == 0 or self.stream_busy(s):
                self.parts[s] = None
                self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            else:
                self.parts[s] = bytearray()
        buf = self.parts[s]
        if buf is not None:
            if len(buf) + len(msg["d"]) > wire.MAX_REQUEST:
                self.parts[s] = None
                self.send("error", s, code="E2BIG", message=(
                    f"the request is larger than the guest agent's limit of {wire.MAX_REQUEST} "
                    f"bytes ({wire.MAX_REQUEST >> 20} MiB); Linux itself takes at most 6 MiB "
                    "of arguments and environment"))
            else:
                buf += msg["d"]
        if msg["more"]:
            return
        buf = self.parts.pop(s)
        if buf is None:
            return
        try:
            request = wire.decode_request(bytes(buf))
        except wire.WireError as e:
            self.send("error", s, code="EINVAL", message=f"bad request in parts: {e}")
            return
        if request["s"] != s or request["t"] not in ("exec", "fs", "read", "write", "watch"):
            self.send("error", s, code="EINVAL",
                      message=f"a {request['t']!r} on stream {request['s']} cannot come in parts")
            return
        self.dispatch(request)

    def start_exec(self, s: int, msg: dict) -> None:
        if self.stream_busy(s):
            self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            return
        argv = msg["argv"]
        if not argv or not all(isinstance(a, str) for a in argv):
            self.send("error", s, code="EINVAL", message="argv must be a non-empty list of strings")
            return
        env = msg.get("env") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            self.send("error", s, code="EINVAL", message="env keys and values must be strings")
            return
        if self.under_mount(msg.get("cwd")):
            # A working directory in a host folder mount is entered by the process itself:
            # the agent must not wait on the mount it serves (see under_mount).
            argv = ["/bin/sh", "-c", 'cd -- "$1" || exit 126; shift; exec "$@"', "sh",
                    msg["cwd"], *argv]
            msg = dict(msg, cwd="/")
        try:
            proc = spawn(s, argv, env, msg)
        except ExecSetupError as e:
            self.send("error", s, code=e.code, message=e.message)
            return
        self.procs[s] = proc
        self.by_pid[proc.pid] = proc
        self.groups.add(proc.pid)
        self.send("started", s, pid=proc.pid)

    def start_net(self, s: int, msg: dict) -> None:
        """Turn on network capture (see netcap); answered by `result` once it is in place."""
        if os.getpid() != 1:
            # As a host subprocess (contract tests) this would rewire the host's own network.
            self.send("error", s, code="ENOTSUP",
                      message="network capture runs only as the VM's PID 1")
            return
        try:
            self.net.enable(msg.get("ca_bundle"))
        except (netcap.netsetup.SetupError, OSError) as e:
            self.send("error", s, code="ENET", message=f"cannot enable the network: {e}")
            return
        self.send("result", s, value=None)

    # ---- files -------------------------------------------------------------------------

    def stream_busy(self, s: int) -> bool:
        return any(s in table for table in (self.procs, self.readers, self.writers,
                                              self.watchers))

    def start_file_op(self, t: str, s: int, msg: dict) -> None:
        if self.stream_busy(s):
            self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            return
        for field in ("path", "dest"):
            target = self.under_mount(msg.get(field))
            if target is not None:
                self.send("error", s, code="EBUSY", path=msg[field], message=(
                    f"{msg[field]} is in the host folder mounted on {target}: read or write "
                    "it on the host, or through a command in the sandbox"))
                return
        try:
            if t == "fs" and msg["op"] in fsops.LISTINGS:
                self.readers[s] = ListingReader(
                    s, fsops.open_listing(msg, lambda path: self.under_mount(path) is not None))
            elif t == "fs":
                op = fsops.OPS.get(msg["op"])
                if op is None:
                    raise fsops.RequestError(f"unknown fs op {msg['op']!r}")
                self.send("result", s, value=op(msg))
            elif t == "read":
                limit = msg.get("limit")
                if limit is not None and limit < 0:
                    raise fsops.RequestError("limit must not be negative")
                self.readers[s] = FileReader(s, fsops.open_for_read(msg), limit)
            elif t == "write":
                self.writers[s] = FileWriter(s, fsops.open_for_write(msg))
            else:
                from .watch import Watcher  # ctypes + inotify only when someone watches

                path = fsops.check_path(msg["path"])
                self.watchers[s] = Watcher(path, bool(msg.get("recursive", True)))
                self.send("result", s, value=None)  # the watch is in place
        except OSError as e:
            self.send("error", s, **fsops.error_fields(e, msg))
        except (TypeError, ValueError, OverflowError) as e:
            self.send("error", s, code="EINVAL", message=f"bad {t} request: {e}")

    def file_stream_message(self, t: str, s: int, msg: dict) -> None:
        if t == "cancel":
            self.end_file_stream(s)
            self.send("result", s, value=None)
        elif t == "credit" and s in self.readers and msg["fd"] == 1:
            self.readers[s].credit[1] += max(0, msg["n"])
        elif t == "data" and s in self.writers and msg["fd"] == 0:
            writer = self.writers[s]
            try:
                _write_fully(writer.fd, msg["d"])
            except OSError as e:
                self.end_file_stream(s)
                self.send("error", s, **fsops.error_fields(e, {"path": ""}))
                return
            writer.size += len(msg["d"])
            self.send("credit", s, fd=0, n=len(msg["d"]))
        elif t == "eof" and s in self.writers and msg["fd"] == 0:
            size = self.writers[s].size
            self.end_file_stream(s)
            self.send("result", s, value={"size": size})

    def end_file_stream(self, s: int) -> None:
        reader = self.readers.pop(s, None)
        if reader is not None:
            reader.close()
        writer = self.writers.pop(s, None)
        if writer is not None:
            _close(writer.fd)
        watcher = self.watchers.pop(s, None)
        if watcher is not None:
            self.forget_fd(watcher.fd)
            watcher.close()

    def pump_readers(self) -> None:
        """Send one chunk per file or listing being read that has credit; regular files
        cannot be polled, so this runs every loop round (select does not block while it has
        work)."""
        for reader in list(self.readers.values()):
            want = min(reader.credit[1], wire.CHUNK)
            if want <= 0:
                continue
            try:
                data = reader.read(want)
            except OSError as e:
                self.end_file_stream(reader.stream)
                self.send("error", reader.stream, **fsops.error_fields(e, {"path": ""}))
                continue
            except Exception as e:  # one bad listing must not take the agent down
                log("error reading stream", reader.stream, repr(e))
                self.end_file_stream(reader.stream)
                self.send("error", reader.stream, code="EINTERNAL", message=str(e))
                continue
            if data:
                reader.credit[1] -= len(data)
                reader.size += len(data)
                self.send("data", reader.stream, fd=1, d=data)
            else:
                self.end_file_stream(reader.stream)
                self.send("eof", reader.stream, fd=1)
                self.send("result", reader.stream, value=reader.final())

    def service_watch(self, s: int) -> None:
        watcher = self.watchers.get(s)
        if watcher is None:
            return
        for event in watcher.read_events():
            self.send("event", s, **event)

    # ---- processes ---------------------------------------------------------------------

    def kill_group(self, proc: Proc, sig: int) -> None:
        # Every exec runs in its own session, so its pgid is its pid.
        try:
            os.killpg(proc.pid, sig)
        except (OSError, ValueError, OverflowError):
            _kill(proc.pid, sig)

    def close_fd(self, fd: int) -> None:
        # Leave the selector first: the number may be reused by the next pipe.
        self.forget_fd(fd)
        _close(fd)

    def close_proc_fds(self, proc: Proc) -> None:
        fds = set(proc.out_fds.values())
        if proc.stdin_fd is not None:
            fds.add(proc.stdin_fd)
        for fd in fds:
            self.close_fd(fd)
        proc.out_fds.clear()
        proc.stdin_fd = None

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.by_pid.pop(pid, None)
            if proc is None:
                continue  # an orphan reparented to us (PID 1) or a helper: just reap it
            if os.WIFSIGNALED(status):
                proc.status = (None, os.WTERMSIG(status))
            else:
                proc.status = (os.waitstatus_to_exitcode(status), None)
            proc.exited_at = time.monotonic()

    def read_output(self, proc: Proc, fd_no: int) -> None:
        fd = proc.out_fds[fd_no]
        want = min(proc.credit[fd_no], wire.CHUNK)
        try:
            data = os.read(fd, want)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: the PTY's other side closed
                raise
            data = b""
        if data:
            proc.credit[fd_no] -= len(data)
            if proc.status is not None:
                proc.exited_at = time.monotonic()  # grace counts from the last output
            self.send("data", proc.stream, fd=fd_no, d=data)
        else:
            self.end_output(proc, fd_no)

    def end_output(self, proc: Proc, fd_no: int) -> None:
        fd = proc.out_fds.pop(fd_no)
        if proc.stdin_fd != fd:
            self.close_fd(fd)
        self.send("eof", proc.stream, fd=fd_no)

    def write_stdin(self, proc: Proc) -> None:
        try:
            n = os.write(proc.stdin_fd, proc.stdin_buf)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.EIO):
                raise
            # The reader is gone: drop what it will never read, but keep granting credit so
            # the host does not block on a dead process.
            n = len(proc.stdin_buf)
            self.close_stdin(proc)
        del proc.stdin_buf[:n]
        if n:
            self.send("credit", proc.stream, fd=0, n=n)

    def close_stdin(self, proc: Proc) -> None:
        if proc.stdin_fd is None:
            return
        if proc.tty:
            # Closing the master would hang up the terminal; EOF on a TTY is ^D.
            try:
                os.write(proc.stdin_fd, b"\x04")
            except OSError:
                pass
        else:
            self.close_fd(proc.stdin_fd)
            proc.stdin_fd = None
        proc.stdin_eof = True
        proc.stdin_buf.clear()

    def finish(self, now: float) -> None:
        """Report exits whose output is drained (or whose grace period ran out)."""
        for proc in list(self.procs.values()):
            if proc.status is None:
                continue
            if proc.out_fds:
                # Never drop output the host has not had credit to receive yet.
                if any(proc.credit[fd_no] <= 0 for fd_no in proc.out_fds):
                    continue
                if now - proc.exited_at < EXIT_GRACE:
                    continue
            for fd_no in sorted(proc.out_fds):
                self.end_output(proc, fd_no)
            self.close_proc_fds(proc)
            code, sig = proc.status
            self.send("exit", proc.stream, code=code, signal=sig)
            del self.procs[proc.stream]

    # ---- loop --------------------------------------------------------------------------

    def interest(self) -> dict[int, tuple[int, object]]:
        want: dict[int, int] = {self.wake_r: selectors.EVENT_READ}
        if self.connected:
            want[self.fd] = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.out else 0)
            # Stop reading process output while the channel is backed up: credit bounds each
            # stream, this bounds the sum.
            backed_up = len(self.out) > 4 * wire.WINDOW
            for proc in self.procs.values():
                if not backed_up:
                    for fd_no, fd in proc.out_fds.items():
                        if proc.credit[fd_no] > 0:
                            want[fd] = want.get(fd, 0) | selectors.EVENT_READ
                if proc.stdin_fd is not None and proc.stdin_buf:
                    want[proc.stdin_fd] = want.get(proc.stdin_fd, 0) | selectors.EVENT_WRITE
            if not backed_up:
                for watcher in self.watchers.values():
                    want[watcher.fd] = selectors.EVENT_READ
            want.update(self.net.interest(backed_up))
            want.update(self.ports.interest(backed_up))
            if self._mounts is not None:
                want.update(self._mounts.interest())
        return want

    def update_registrations(self) -> None:
        want = self.interest()
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
        if fd in self.registered:
            self.sel.unregister(fd)
            del self.registered[fd]

    def timeout(self) -> float | None:
        if self.readers and len(self.out) <= 4 * wire.WINDOW and any(
                r.credit[1] > 0 for r in self.readers.values()):
            return 0.0
        deadlines = [
            p.exited_at + EXIT_GRACE for p in self.procs.values()
            if p.status and p.out_fds and all(p.credit[f] > 0 for f in p.out_fds)
        ]
        deadlines += [d for w in self.watchers.values() if (d := w.deadline()) is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def expire_watches(self, now: float) -> None:
        for s, watcher in list(self.watchers.items()):
            for event in watcher.expire(now):
                self.send("event", s, **event)

    def serve(self) -> None:
        while self.running:
            if not self.connected:
                self.greet()
            for proc in self.procs.values():
                if proc.stdin_eof and not proc.stdin_buf and proc.stdin_fd is not None:
                    self.close_stdin(proc)
            self.finish(time.monotonic())
            self.expire_watches(time.monotonic())
            if self.shutdown_requested and not self.out:
                return
            if len(self.out) <= 4 * wire.WINDOW:
                self.pump_readers()
            self.update_registrations()
            for key, events in self.sel.select(self.timeout()):
                fd = key.fd
                if fd == self.wake_r:
                    _drain(self.wake_r)
                    self.reap()
                elif fd == self.fd:
                    if events & selectors.EVENT_WRITE:
                        self.flush()
                    if events & selectors.EVENT_READ and self.connected:
                        self.read_channel()
                else:
                    self.service_fd(fd, events)
            self.flush()

    def service_fd(self, fd: int, events: int) -> None:
        if self.net.service(fd, events) or self.ports.service(fd, events):
            return
        if self._mounts is not None and self._mounts.service(fd, events):
            return
        for s, watcher in list(self.watchers.items()):
            if watcher.fd == fd:
                self.service_watch(s)
                return
        for proc in list(self.procs.values()):
            if events & selectors.EVENT_WRITE and proc.stdin_fd == fd and proc.stdin_buf:
                self.write_stdin(proc)
            if events & selectors.EVENT_READ:
                for fd_no, out_fd in list(proc.out_fds.items()):
                    if out_fd == fd:
                        self.read_output(proc, fd_no)


class ExecSetupError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def spawn(stream: int, argv: list[str], env: dict, msg: dict) -> Proc:
    """Fork and exec one process. Setup failures that are the caller's fault (bad cwd, unknown
    user) come back as ExecSetupError through a CLOEXEC pipe; a program that cannot be
    executed is reported like a shell does: a message on stderr and status 127 (or 126)."""
    tty = bool(msg.get("tty"))
    cwd = msg.get("cwd")
    user = msg.get("user")
    try:
        pw = pwd.getpwnam(user) if user else None
    except KeyError:
        raise ExecSetupError("ENOUSER", f"no such user in the guest: {user}") from None
    full_env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    if pw:
        full_env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell)
    else:
        full_env.update(HOME="/root", USER="root", LOGNAME="root")
    if tty:
        full_env["TERM"] = "xterm-256color"
    full_env.update(env)
    check_arg_size(argv, full_env)
    workdir = cwd or full_env.get("HOME") or "/"
    if not cwd and not os.path.isdir(workdir):
        # As login(1) does: a user made with plain `useradd` (no -m) has a home that does
        # not exist; start in / rather than refusing to run anything as them.
        workdir = "/"

    if tty:
        master, slave = os.openpty()
        _set_winsize(master, msg.get("rows", 24), msg.get("cols", 80))
        child_fds = (slave, slave, slave)
        parent_close = [slave]
    else:
        if msg.get("stdin", True):
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), None
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        child_fds = (in_r, out_w, err_w)
        parent_close = [in_r, out_w, err_w]
    if not tty and pw is None:
        pid = _spawn_fast(argv, full_env, workdir, child_fds)
        if pid is not None:
            for fd in parent_close:
                os.close(fd)
            for fd in (in_w, out_r, err_r):
                if fd is not None:
                    os.set_blocking(fd, False)
            return Proc(stream, pid, False, in_w, {1: out_r, 2: err_r})

    err_pipe_r, err_pipe_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup may run here, only exec or _exit
        try:
            _child(argv, full_env, workdir, pw, tty, child_fds, err_pipe_w)
        finally:
            os._exit(127)

    os.close(err_pipe_w)
    for fd in parent_close:
        os.close(fd)
    report = _read_all(err_pipe_r)
    os.close(err_pipe_r)
    if report:
        os.waitpid(pid, 0)
        for fd in ([master] if tty else [x for x in (in_w, out_r, err_r) if x is not None]):
            os.close(fd)
        code, _, text = report.decode("utf-8", "replace").partition(":")
        raise ExecSetupError(code, text)

    if tty:
        os.set_blocking(master, False)
        return Proc(stream, pid, True, master, {1: master})
    for fd in (in_w, out_r, err_r):
        if fd is not None:
            os.set_blocking(fd, False)
    return Proc(stream, pid, False, in_w, {1: out_r, 2: err_r})


def arg_limit() -> int:
    """What Linux's execve takes for argv + environment (fs/exec.c, prepare_arg_pages): a
    quarter of the stack limit, at most 6 MiB (3/4 of the 8 MiB _STK_LIM), at least
    ARG_MAX (128 KiB)."""
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    cap = 6 * 1024 * 1024
    limit = cap if soft == resource.RLIM_INFINITY else min(soft // 4, cap)
    return max(limit, 128 * 1024)


def check_arg_size(argv: list[str], env: dict) -> None:
    """Refuse, naming the limit, what execve would refuse with E2BIG: a string longer than
    MAX_ARG_STRLEN (32 pages), or strings plus their pointers beyond arg_limit(). Counted
    as the kernel does, except the executable's path, which it also copies: a request within
    a few bytes of the limit may still fail like in a shell (status 126)."""
    strings = [os.fsencode(a) for a in argv] + [os.fsencode(f"{k}={v}") for k, v in env.items()]
    per_string = 32 * os.sysconf("SC_PAGE_SIZE")
    longest = max(len(x) for x in strings)
    if longest + 1 > per_string:
        raise ExecSetupError("E2BIG", (
            f"an argument or environment entry of {longest} bytes is longer than Linux's "
            f"limit of {per_string - 1} bytes per string (MAX_ARG_STRLEN)"))
    total = sum(len(x) + 1 for x in strings) + struct.calcsize("P") * len(strings)
    limit = arg_limit()
    if total > limit:
        raise ExecSetupError("E2BIG", (
            f"arguments and environment take {total} bytes, more than the guest's limit of "
            f"{limit} bytes (ARG_MAX: a quarter of the stack limit, at most 6 MiB)"))


_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT,
                    signal.SIGTERM)


def _spawn_fast(argv: list[str], env: dict, workdir: str, fds) -> int | None:
    """The common case (piped, as the agent's user) through posix_spawn, which glibc does
    with vfork semantics: no copy of the agent's page tables, which under TCG is most of an
    exec's cost. Returns None when anything is off, so the fork path can report it exactly
    as a shell would (command not found, bad working directory)."""
    exe = _which(argv[0], env.get("PATH", DEFAULT_PATH))
    if exe is None:
        return None
    here = os.getcwd()
    try:
        os.chdir(workdir)  # posix_spawn has no chdir action here; the agent is one thread
    except OSError:
        return None
    try:
        return os.posix_spawn(
            exe, argv, env, setsid=True, setsigdef=_DEFAULT_SIGNALS, setsigmask=(),
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
        )
    except OSError:
        return None
    finally:
        os.chdir(here)


def _which(name: str, path: str) -> str | None:
    if "/" in name:
        return name
    for directory in path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _child(argv, env, workdir, pw, tty, fds, err_pipe) -> None:
    def fail(code: str, text: str) -> None:
        os.write(err_pipe, f"{code}:{text}".encode())
        os._exit(126)

    for sig in _DEFAULT_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    os.setsid()  # own session and process group: signals and timeouts reach the whole tree
    if tty:
        fcntl.ioctl(fds[0], termios.TIOCSCTTY, 0)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    if pw is not None:
        try:
            os.initgroups(pw.pw_name, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        except OSError as e:
            fail("EPERM", f"cannot switch to user {pw.pw_name}: {e.strerror}")
    try:
        os.chdir(workdir)
    except OSError as e:
        fail(errno.errorcode.get(e.errno, "EIO"), f"working directory {workdir}: {e.strerror}")
    os.close(err_pipe)  # exec succeeded or failed like a shell would: nothing to report
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            os.write(2, f"shuru: {argv[0]}: command not found\n".encode())
            os._exit(127)
        os.write(2, f"shuru: {argv[0]}: {e.strerror}\n".encode())
        os._exit(126)


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _set_winsize(fd, rows: int, cols: int) -> None:
    if fd is None:
        return
    rows = max(1, min(int(rows), 10000))
    cols = max(1, min(int(cols), 10000))
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, ValueError, OverflowError):
        pass


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
