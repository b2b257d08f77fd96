"""Starting a process for an exec: environment, working directory, user switch, PTY or pipes,
and the limits execve would refuse with E2BIG, checked before anything is forked.

The common case (pipes, as the agent's user) goes through posix_spawn; a PTY or another user
needs fork, which costs the agent's page tables under TCG. Either way the child is the leader
of its own session, so signals and timeouts reach the whole tree it starts.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import resource
import signal
import struct
import termios
from typing import NamedTuple

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Spawned(NamedTuple):
    pid: int
    tty: bool
    stdin_fd: int | None  # pipe write end, PTY master, or None (stdin closed)
    out_fds: dict  # {1: fd, 2: fd}; for a PTY only {1: master}


class ExecSetupError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def spawn(argv: list[str], env: dict, msg: dict) -> Spawned:
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
        set_winsize(master, msg.get("rows", 24), msg.get("cols", 80))
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
            return Spawned(pid, False, in_w, {1: out_r, 2: err_r})

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
        return Spawned(pid, True, master, {1: master})
    for fd in (in_w, out_r, err_r):
        if fd is not None:
            os.set_blocking(fd, False)
    return Spawned(pid, False, in_w, {1: out_r, 2: err_r})


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


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def set_winsize(fd, rows: int, cols: int) -> None:
    if fd is None:
        return
    rows = max(1, min(int(rows), 10000))
    cols = max(1, min(int(cols), 10000))
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    except OSError:
        pass


def kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, ValueError, OverflowError):
        pass
