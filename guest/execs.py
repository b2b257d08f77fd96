"""The agent's `exec` streams: processes started for the host, their output forwarded within
the host's credit, their stdin fed, signals and window sizes delivered, and exits reported.

It also owns SIGCHLD: the signal writes to a wakeup pipe the loop polls, and every child that
ends is reaped here, including orphans reparented to the agent when it is PID 1.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from . import spawn, wire
from .handler import READ, WRITE, Handler, close_quietly

# After a process exits, its output pipes may stay open because a background child inherited
# them. Keep reading this long, then report EOF and the exit anyway, so `exec("daemon &")`
# returns instead of hanging on a grandchild.
EXIT_GRACE = 0.25


class Proc:
    """One process started by an exec message, and the state of its stream."""

    def __init__(self, stream: int, started: spawn.Spawned):
        self.stream = stream
        self.pid = started.pid
        self.tty = started.tty
        self.stdin_fd = started.stdin_fd  # pipe write end, PTY master, or None
        self.out_fds = dict(started.out_fds)  # {1: fd, 2: fd}; for a PTY only {1: master}
        self.credit = {fd: wire.WINDOW for fd in self.out_fds}
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.status = None  # (code, signal) once reaped
        self.exited_at = None


class Execs(Handler):
    opens = ("exec",)

    def __init__(self, send, forget, mounts):
        super().__init__(send, forget)
        self.mounts = mounts  # mounts.Mounts, for `under`
        self.procs: dict[int, Proc] = {}
        self.by_pid: dict[int, Proc] = {}
        self.by_fd: dict[int, Proc] = {}
        # Process groups of every exec of this connection, including ones whose leader has
        # exited but whose background children live on; they all end with the connection.
        self.groups: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        # A handler (not SIG_DFL) is needed for the wakeup fd to be written on SIGCHLD.
        signal.signal(signal.SIGCHLD, lambda *_: None)

    def close(self) -> None:
        """Release the wakeup pipe (for serving a new connection with a new agent)."""
        signal.set_wakeup_fd(-1)
        for fd in (self.wake_r, self.wake_w):
            close_quietly(fd)

    def owns(self, s: int) -> bool:
        return s in self.procs

    # ---- host messages -----------------------------------------------------------------

    def open(self, t: str, s: int, msg: dict) -> None:
        argv = msg["argv"]
        if not argv or not all(isinstance(a, str) for a in argv):
            self.send("error", s, code="EINVAL", message="argv must be a non-empty list of strings")
            return
        env = msg.get("env") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            self.send("error", s, code="EINVAL", message="env keys and values must be strings")
            return
        if self.mounts.under(msg.get("cwd")):
            # A working directory in a host folder mount is entered by the process itself:
            # the agent must not wait on the mount it serves (see mounts.Mounts.under).
            argv = ["/bin/sh", "-c", 'cd -- "$1" || exit 126; shift; exec "$@"', "sh",
                    msg["cwd"], *argv]
            msg = dict(msg, cwd="/")
        try:
            proc = Proc(s, spawn.spawn(argv, env, msg))
        except spawn.ExecSetupError as e:
            self.send("error", s, code=e.code, message=e.message)
            return
        self.procs[s] = proc
        self.by_pid[proc.pid] = proc
        for fd in (proc.stdin_fd, *proc.out_fds.values()):
            if fd is not None:
                self.by_fd[fd] = proc
        self.groups.add(proc.pid)
        self.send("started", s, pid=proc.pid)

    def message(self, t: str, s: int, msg: dict) -> None:
        proc = self.procs[s]
        if t == "data" and msg["fd"] == 0:
            if proc.stdin_fd is not None and not proc.stdin_eof:
                proc.stdin_buf += msg["d"]
        elif t == "eof" and msg["fd"] == 0:
            proc.stdin_eof = True
        elif t == "credit" and msg["fd"] in proc.credit:
            proc.credit[msg["fd"]] += max(0, msg["n"])
        elif t == "signal":
            if msg.get("group", True):
                kill_group(proc.pid, msg["sig"])
            else:
                spawn.kill(proc.pid, msg["sig"])
        elif t == "resize" and proc.tty:
            spawn.set_winsize(proc.stdin_fd, msg["rows"], msg["cols"])

    # ---- polling -----------------------------------------------------------------------

    def interest(self, backed_up: bool) -> dict[int, int]:
        want = {self.wake_r: READ}
        for proc in self.procs.values():
            if not backed_up:
                for fd_no, fd in proc.out_fds.items():
                    if proc.credit[fd_no] > 0:
                        want[fd] = READ
            if proc.stdin_fd is not None and proc.stdin_buf:
                # A PTY master is both stdin and output: one registration, both events.
                want[proc.stdin_fd] = want.get(proc.stdin_fd, 0) | WRITE
        return want

    def service(self, fd: int, events: int) -> None:
        if fd == self.wake_r:
            _drain(self.wake_r)
            self.reap()
            return
        proc = self.by_fd.get(fd)
        if proc is None:
            return  # closed earlier in this round
        if events & WRITE and proc.stdin_fd == fd and proc.stdin_buf:
            self.write_stdin(proc)
        if events & READ:
            for fd_no, out_fd in list(proc.out_fds.items()):
                if out_fd == fd:
                    self.read_output(proc, fd_no)

    def tick(self, now: float, backed_up: bool) -> None:
        for proc in self.procs.values():
            if proc.stdin_eof and not proc.stdin_buf and proc.stdin_fd is not None:
                self.close_stdin(proc)
        self.finish(now)

    def deadline(self, backed_up: bool) -> float | None:
        # An exited process whose output may still come: its grace period ends then.
        soonest = None
        for p in self.procs.values():
            if p.status and p.out_fds and all(p.credit[f] > 0 for f in p.out_fds):
                d = p.exited_at + EXIT_GRACE
                soonest = d if soonest is None else min(soonest, d)
        return soonest

    def shutdown(self) -> None:
        """End every stream and kill every process group this connection started."""
        for proc in list(self.procs.values()):
            self.close_proc_fds(proc)
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        self.groups.clear()
        self.procs.clear()

    # ---- processes ---------------------------------------------------------------------

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

    def close_fd(self, fd: int) -> None:
        self.by_fd.pop(fd, None)
        super().close_fd(fd)

    def close_proc_fds(self, proc: Proc) -> None:
        fds = set(proc.out_fds.values())
        if proc.stdin_fd is not None:
            fds.add(proc.stdin_fd)
        for fd in fds:
            self.close_fd(fd)
        proc.out_fds.clear()
        proc.stdin_fd = None

    # ---- output ------------------------------------------------------------------------

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

    # ---- stdin -------------------------------------------------------------------------

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


def kill_group(pid: int, sig: int) -> None:
    # Every exec runs in its own session, so its pgid is its pid.
    try:
        os.killpg(pid, sig)
    except (OSError, ValueError, OverflowError):
        spawn.kill(pid, sig)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
