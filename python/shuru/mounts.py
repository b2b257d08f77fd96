"""Host folders in the sandbox: `--mount HOST:GUEST[:ro|:rw]`, served over the agent channel.

Owns the `mounts` specs (the pure parsing and checks that the config, the `--mount` flag and
the SDK share), the host end of a `mount` stream (it answers the guest's `fsop` requests:
stat, list, read of files under the host folder, see `protocol/PROTOCOL.md`), and the review
step: `changes` reads a read-only mount's layer in the guest and says what was added,
modified and deleted, and `Changes.apply` copies that onto a host directory.

The guest is hostile: a path it sends is a list of names under the host folder, each
checked (no `..`, no `/`, no NUL), and resolved one directory at a time from the folder's
own fd with O_NOFOLLOW, so no symlink in the folder ever leads the guest out of it (the guest
sees the link itself, and resolves it in its own filesystem). Open handles and listing pages
are bounded. Nothing of the mount reaches the guest's disk: the writable layer of a read-only
mount lives on a tmpfs in the guest, so a checkpoint never holds it.

Why not virtiofs: fast start restores clones from a saved machine state whose RAM is private
(virtiofsd needs it shared), QEMU 7.2's vhost-user-fs blocks migration (so it cannot be in a
saved state) and a restored microvm cannot take a new device. The agent channel exists in
every sandbox, cold or restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import shutil
import stat as st
from typing import Any, Iterable, Mapping

from . import agent_client as agent
from .channel import Channel, Stream
from .errors import (ConfigError, GuestFileError, MountError, ProtocolError,
                     SandboxDiedError)

MODES = ("ro", "rw")
MAX_HANDLES = 1024  # open files and directories one mount may hold on the host
MAX_READ = 64 * 1024
_PAGE_BYTES = 48 * 1024  # a readdir page's names, well inside a frame


@dataclasses.dataclass(frozen=True)
class MountSpec:
    host: str  # absolute host path
    guest: str  # absolute guest path
    mode: str = "ro"

    def __str__(self) -> str:
        return f"{self.host}:{self.guest}:{self.mode}"


# ---- specs (pure) ---------------------------------------------------------------------------


def parse_spec(text: Any, cwd: str | None = None) -> MountSpec:
    """`"HOST:GUEST"` or `"HOST:GUEST:ro|rw"` as a MountSpec (HOST made absolute against
    `cwd`); ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string HOST:GUEST[:ro|:rw], got a {type(text).__name__}")
    parts = text.split(":")
    mode = "ro"
    if len(parts) == 3:
        mode = parts.pop()
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} must be ro or rw")
    if len(parts) != 2:
        raise ValueError("expected HOST:GUEST[:ro|:rw] (a path with ':' cannot be mounted)")
    host, guest = parts
    if not host:
        raise ValueError("the host path is empty")
    if "\0" in host or "\0" in guest:
        raise ValueError("a path contains a NUL byte")
    guest = check_guest_path(guest)
    host = os.path.normpath(os.path.join(cwd or os.getcwd(), os.path.expanduser(host)))
    return MountSpec(host, guest, mode)


def check_guest_path(guest: str) -> str:
    if not guest.startswith("/"):
        raise ValueError(f"the guest path {guest!r} must be absolute")
    norm = os.path.normpath(guest)
    if norm.startswith("//"):
        norm = norm[1:]
    if norm == "/" or norm.split("/")[1] in ("proc", "sys", "dev", "run", "boot"):
        raise ValueError(f"cannot mount over {norm} in the guest")
    return norm


def from_config(value: Any, cwd: str | None = None) -> list[MountSpec]:
    """The `mounts` field: a mapping {HOST: GUEST or "GUEST:ro|rw"} or a list of
    "HOST:GUEST[:mode]" strings. ValueError naming the bad entry."""
    if isinstance(value, Mapping):
        items = []
        for host, guest in value.items():
            if not isinstance(host, str) or not isinstance(guest, str):
                raise ValueError(f"{host!r}: expected a mapping of host paths to guest paths")
            items.append(f"{host}:{guest}")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("expected a mapping {HOST: GUEST} or a list of \"HOST:GUEST[:ro|:rw]\"")
    specs = []
    for item in items:
        try:
            specs.append(parse_spec(item, cwd))
        except ValueError as e:
            raise ValueError(f"{item!r}: {e}") from None
    guests = [s.guest for s in specs]
    for i, a in enumerate(guests):
        for b in guests[i + 1:]:
            if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
                raise ValueError(f"guest paths {a} and {b} overlap")
    return specs


def spec_problems(label: str, value: Any) -> list[str]:
    try:
        from_config(value)
    except ValueError as e:
        return [f"{label}: {e}"]
    return []


def normalize(value: Any, cwd: str | None = None) -> tuple[str, ...]:
    return tuple(str(s) for s in from_config(value, cwd))


def parse_flags(values: list[str], flag: str = "--mount") -> tuple[str, ...]:
    problems = []
    for text in values:
        try:
            parse_spec(text)
        except ValueError as e:
            problems.append(f"{flag} {text}: {e}")
    if problems:
        raise ConfigError(problems)
    try:
        return normalize(values)
    except ValueError as e:
        raise ConfigError([f"{flag}: {e}"]) from None


def write_problem(host: str, *, cwd: str, home: str, allowed: bool,
                  flag: str = "--allow-host-writes") -> str | None:
    """Why a `:rw` mount of `host` (a resolved absolute path) is refused, or None. Writes
    reach the host only with `flag`, and only inside the current directory `cwd`: never `/`,
    never `$HOME` itself, never a path outside `cwd`."""
    if not allowed:
        return (f"{host} is mounted :rw, which writes to this machine: pass {flag} "
                f"(config allow_host_writes: true), or mount it read-only")
    if host == "/":
        return f"{host} cannot be mounted :rw, even with {flag}"
    if host == os.path.normpath(home):
        return f"{host} is your home directory: it cannot be mounted :rw, even with {flag}"
    cwd = os.path.normpath(cwd)
    if host != cwd and not host.startswith(cwd.rstrip("/") + "/"):
        return (f"{host} is outside the current directory {cwd}: {flag} only allows :rw "
                f"mounts of paths inside it")
    return None


def check_host(specs: Iterable[MountSpec], *, allow_host_writes: bool,
               cwd: str | None = None, home: str | None = None) -> list[MountSpec]:
    """Resolve every host folder (symlinks in its own path are the user's) and check it:
    a directory, and `:rw` only as `write_problem` allows. ConfigError listing every
    problem, each naming the mount."""
    cwd = os.path.realpath(cwd or os.getcwd())
    home = os.path.realpath(home or os.path.expanduser("~"))
    out, problems = [], []
    for spec in specs:
        host = os.path.realpath(spec.host)
        if not os.path.isdir(host):
            problems.append(f"mounts {spec.host}: not a directory on this machine")
            continue
        if spec.mode == "rw":
            problem = write_problem(host, cwd=cwd, home=home, allowed=allow_host_writes)
            if problem:
                problems.append(f"mounts {spec.host}:{spec.guest}:rw: {problem}")
                continue
        out.append(dataclasses.replace(spec, host=host))
    if problems:
        raise ConfigError(problems)
    return out


# ---- the host folder server -----------------------------------------------------------------


def _names(path: Any) -> list[str]:
    """A guest path relative to the folder as checked names; OSError(EINVAL) if bad."""
    if not isinstance(path, str) or "\0" in path or len(path) > 4096:
        raise OSError(errno.EINVAL, "bad path")
    if not path:
        return []
    names = path.split("/")
    if any(n in ("", ".", "..") or len(n) > 255 for n in names):
        raise OSError(errno.EINVAL, "bad path")
    return names


def _attr(s: os.stat_result) -> list[int]:
    return [s.st_ino, s.st_mode, s.st_nlink, s.st_size, s.st_blocks,
            s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns]


def _dtype(mode: int) -> int:
    return st.S_IFMT(mode) >> 12


# Open flags as the guest (Linux) spells them, whatever this host's values are.
_G_ACCMODE, _G_EXCL, _G_TRUNC, _G_APPEND = 0o3, 0o200, 0o1000, 0o2000
_ACCESS = {0: os.O_RDONLY, 1: os.O_WRONLY, 2: os.O_RDWR}
_WRITE_OPS = ("create", "write", "mkdir", "unlink", "rmdir", "rename", "setattr")


def _host_flags(flags: Any) -> int:
    if not isinstance(flags, int) or flags & _G_ACCMODE not in _ACCESS:
        raise OSError(errno.EINVAL, "bad open flags")
    out = _ACCESS[flags & _G_ACCMODE]
    for guest, host in ((_G_EXCL, os.O_EXCL), (_G_TRUNC, os.O_TRUNC), (_G_APPEND, os.O_APPEND)):
        if flags & guest:
            out |= host
    return out


def _mode(value: Any, default: int) -> int:
    """A mode the guest asks for, never setuid or setgid on the host."""
    if value is None:
        return default
    if not isinstance(value, int):
        raise OSError(errno.EINVAL, "bad mode")
    return value & 0o1777


class FolderServer:
    """Answers `fsop`s for one host folder (the pure part: no channel). Write operations
    only when `writable` (a `:rw` mount); they never make links and never set setuid or
    setgid bits on the host."""

    def __init__(self, root: str, writable: bool = False):
        self.writable = writable
        self.root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.files: dict[int, int] = {}  # handle -> fd
        self.dirs: dict[int, list] = {}  # handle -> [(name, ino, dtype)]
        self._next = 1

    def close(self) -> None:
        for fd in list(self.files.values()) + [self.root]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.files.clear()
        self.dirs.clear()

    def _parent(self, names: list[str]) -> int:
        """An fd of the directory holding the last name (the caller closes it unless it is
        the root). Every step refuses a symlink: O_NOFOLLOW with O_DIRECTORY."""
        fd = self.root
        try:
            for name in names[:-1]:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                if fd != self.root:
                    os.close(fd)
                fd = nxt
        except OSError as e:
            if fd != self.root:
                os.close(fd)
            if e.errno == errno.ELOOP:
                raise OSError(errno.ENOTDIR, "a symlink on the way") from None
            raise
        return fd

    def _lstat(self, names: list[str]) -> os.stat_result:
        if not names:
            return os.fstat(self.root)
        parent = self._parent(names)
        try:
            return os.stat(names[-1], dir_fd=parent, follow_symlinks=False)
        finally:
            if parent != self.root:
                os.close(parent)

    def _open(self, names: list[str], flags: int) -> int:
        if not names:
            return os.dup(self.root) if flags & os.O_DIRECTORY else os.open(".", flags,
                                                                            dir_fd=self.root)
        parent = self._parent(names)
        try:
            return os.open(names[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                           dir_fd=parent)
        finally:
            if parent != self.root:
                os.close(parent)

    def _handle(self) -> int:
        if len(self.files) + len(self.dirs) >= MAX_HANDLES:
            raise OSError(errno.EMFILE, "too many open files in this mount")
        self._next += 1
        return self._next

    def op(self, msg: dict) -> Any:
        """One fsop's value; OSError for the guest's errno."""
        op = msg.get("op")
        if op in ("lookup", "getattr"):
            return _attr(self._lstat(_names(msg.get("path"))))
        if op == "readlink":
            names = _names(msg.get("path"))
            if not names:
                raise OSError(errno.EINVAL, "not a link")
            parent = self._parent(names)
            try:
                return os.fsencode(os.readlink(names[-1], dir_fd=parent))
            finally:
                if parent != self.root:
                    os.close(parent)
        if op in _WRITE_OPS:
            if not self.writable:
                raise OSError(errno.EROFS, "read-only mount")
            return self._write_op(op, msg)
        if op == "open":
            h = self._handle()
            flags = os.O_RDONLY
            if msg.get("flags") is not None:
                flags = _host_flags(msg["flags"]) & ~os.O_EXCL
                if flags & os.O_ACCMODE != os.O_RDONLY and not self.writable:
                    raise OSError(errno.EROFS, "read-only mount")
            fd = self._open(_names(msg.get("path")), flags)
            if not st.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EACCES, "not a regular file")
            self.files[h] = fd
            return h
        if op == "read":
            fd = self.files.get(msg.get("fh"))
            off, size = msg.get("off"), msg.get("size")
            if fd is None or not isinstance(off, int) or not isinstance(size, int) or off < 0:
                raise OSError(errno.EBADF, "bad handle")
            return os.pread(fd, max(0, min(size, MAX_READ)), off)
        if op == "release":
            fd = self.files.pop(msg.get("fh"), None)
            if fd is not None:
                os.close(fd)
            return None
        if op == "opendir":
            h = self._handle()
            fd = self._open(_names(msg.get("path")), os.O_RDONLY | os.O_DIRECTORY)
            try:
                with os.scandir(fd) as it:
                    entries = []
                    for e in it:
                        try:
                            mode = e.stat(follow_symlinks=False).st_mode
                        except OSError:
                            continue
                        entries.append((e.name, e.inode(), _dtype(mode)))
            finally:
                os.close(fd)
            entries.sort()
            self.dirs[h] = entries
            return h
        if op == "readdir":
            entries = self.dirs.get(msg.get("fh"))
            off = msg.get("off")
            if entries is None or not isinstance(off, int) or off < 0:
                raise OSError(errno.EBADF, "bad handle")
            page, size = [], 0
            for i in range(off, len(entries)):
                name, ino, dtype = entries[i]
                size += len(name) + 16
                if size > _PAGE_BYTES:
                    break
                page.append([name, ino, dtype, i + 1])
            return page
        if op == "releasedir":
            self.dirs.pop(msg.get("fh"), None)
            return None
        if op == "statfs":
            v = os.statvfs(self.root)
            return [v.f_blocks, v.f_bfree, v.f_bavail, v.f_files, v.f_ffree, v.f_bsize,
                    v.f_namemax]
        raise OSError(errno.ENOSYS, f"unknown op {op!r}")


    def _in_parent(self, names: list[str], fn):
        if not names:
            raise OSError(errno.EBUSY, "the mount's root")
        parent = self._parent(names)
        try:
            return fn(parent, names[-1])
        finally:
            if parent != self.root:
                os.close(parent)

    def _write_op(self, op: str, msg: dict) -> Any:
        names = _names(msg.get("path")) if op != "write" else []
        if op == "write":
            fd = self.files.get(msg.get("fh"))
            off, data = msg.get("off"), msg.get("d")
            if fd is None or not isinstance(off, int) or off < 0 or not isinstance(data, bytes):
                raise OSError(errno.EBADF, "bad handle")
            return os.pwrite(fd, data, off)
        if op == "create":
            h = self._handle()
            flags = _host_flags(msg.get("flags")) | os.O_CREAT
            fd = self._in_parent(names, lambda p, n: os.open(
                n, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                _mode(msg.get("mode"), 0o644), dir_fd=p))
            self.files[h] = fd
            return [h, _attr(os.fstat(fd))]
        if op == "mkdir":
            self._in_parent(names, lambda p, n: os.mkdir(n, _mode(msg.get("mode"), 0o755),
                                                         dir_fd=p))
            return _attr(self._lstat(names))
        if op == "unlink":
            return self._in_parent(names, lambda p, n: os.unlink(n, dir_fd=p))
        if op == "rmdir":
            return self._in_parent(names, lambda p, n: os.rmdir(n, dir_fd=p))
        if op == "rename":
            dest = _names(msg.get("dest"))
            if not dest:
                raise OSError(errno.EBUSY, "the mount's root")
            return self._in_parent(names, lambda p, n: self._in_parent(
                dest, lambda q, m: os.rename(n, m, src_dir_fd=p, dst_dir_fd=q)))
        # setattr: every change on the entry itself, never through a link
        s = self._lstat(names)
        if st.S_ISLNK(s.st_mode) and ("mode" in msg or "size" in msg):
            raise OSError(errno.ELOOP, "a symlink")
        if "size" in msg:
            size = msg["size"]
            if not isinstance(size, int) or size < 0:
                raise OSError(errno.EINVAL, "bad size")
            fd = self._open(names, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        if "mode" in msg:
            mode = _mode(msg["mode"], 0o644)
            if names:  # the entry was checked not to be a link just above
                self._in_parent(names, lambda p, n: os.chmod(n, mode, dir_fd=p))
            else:
                os.fchmod(self.root, mode)
        if "times" in msg:
            times = msg["times"]
            if not isinstance(times, list) or len(times) != 2:
                raise OSError(errno.EINVAL, "bad times")
            ns = (times[0] if times[0] is not None else s.st_atime_ns,
                  times[1] if times[1] is not None else s.st_mtime_ns)
            if names:
                self._in_parent(names, lambda p, n: os.utime(n, ns=ns, dir_fd=p,
                                                             follow_symlinks=False))
            else:
                os.utime(self.root, ns=ns)
        return _attr(self._lstat(names))


def answer(server: FolderServer, msg: dict) -> dict:
    """The fsreply fields for one fsop."""
    try:
        return {"value": server.op(msg)}
    except OSError as e:
        return {"err": errno.errorcode.get(e.errno or errno.EIO, "EIO")}
    except (TypeError, ValueError, OverflowError):
        return {"err": "EINVAL"}


class ActiveMount:
    """A mounted host folder: its stream, its server task, where its layer is."""

    def __init__(self, spec: MountSpec, stream: Stream, server: FolderServer):
        self.spec = spec
        self.stream = stream
        self.server = server
        self.upper: str | None = None
        self.task: asyncio.Task | None = None

    async def serve(self) -> None:
        try:
            while True:
                op = agent.parse_fsop(await self.stream.recv())
                if op is not None:
                    await self.stream.send_msg(agent.fsreply(op["id"], answer(self.server, op)))
        except (SandboxDiedError, ProtocolError):
            pass
        finally:
            self.server.close()

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        self.server.close()
        if not self.stream.closed:
            self.stream.close()
            with contextlib.suppress(Exception):
                await self.stream.send_msg(agent.close())


async def mount(channel: Channel, spec: MountSpec) -> ActiveMount:
    """Mount one (checked) host folder in the guest; MountError if the guest refuses."""
    try:
        server = FolderServer(spec.host, writable=spec.mode == "rw")
    except OSError as e:
        raise MountError(f"cannot open {spec.host}: {e.strerror}") from None
    stream = channel.open_stream()
    active = ActiveMount(spec, stream, server)
    try:
        await stream.send_msg(agent.mount(spec.guest, rw=spec.mode == "rw"))
        while True:  # the set-up asks questions before it answers
            msg = await stream.recv()
            if (op := agent.parse_fsop(msg)) is not None:
                await stream.send_msg(agent.fsreply(op["id"], answer(server, op)))
            elif msg["t"] == "result":
                active.upper = agent.parse_mount_ready(msg.get("value"))
                break
            elif msg["t"] == "error":
                stream.close()
                server.close()
                raise MountError(f"cannot mount {spec.host} on {spec.guest} in the sandbox: "
                                 f"{msg.get('message')}")
            else:
                raise ProtocolError(f"guest answered mount of {spec.guest} with {msg['t']!r}")
    except BaseException:
        if not stream.closed:
            stream.close()
        server.close()
        raise
    active.task = asyncio.create_task(active.serve())
    return active


# ---- changes in a read-only mount's layer ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Change:
    """One path under a mount the guest changed: `kind` added, modified or deleted; `type`
    file, dir, symlink; `size` its size in the guest (0 when deleted)."""

    path: str  # relative to the mount
    kind: str
    type: str
    size: int

    def __str__(self) -> str:
        sign = {"added": "A", "modified": "M", "deleted": "D"}[self.kind]
        size = "" if self.kind == "deleted" or self.type == "dir" else f"  ({self.size} bytes)"
        return f"{sign} {self.path}{'/' if self.type == 'dir' else ''}{size}"


class Changes(list):
    """What the guest changed under a read-only mount, sorted by path. `apply(host_dir)`
    copies it onto a host directory (the host folder itself, or any other)."""

    def __init__(self, items, *, sandbox, upper: str, guest: str, host: str):
        super().__init__(items)
        self._sandbox = sandbox
        self._upper = upper
        self.guest = guest
        self.host = host

    def __str__(self) -> str:
        return "\n".join(str(c) for c in self) if self else "(no changes)"

    async def apply(self, host_dir: str | os.PathLike | None = None) -> None:
        """Make `host_dir` (the mounted host folder by default) hold the guest's version of
        every changed path: deletions deleted, files and links copied, directories made."""
        root = os.path.realpath(host_dir if host_dir is not None else self.host)
        if not os.path.isdir(root):
            raise MountError(f"cannot apply changes: {root} is not a directory")
        files = self._sandbox.files
        for change in self:
            names = change.path.split("/")
            if any(n in ("", ".", "..") for n in names):
                continue  # never written outside root, whatever the guest named
            dest = os.path.join(root, *names)
            parent = os.path.dirname(dest)
            real_parent = os.path.realpath(parent)
            if real_parent != root and not real_parent.startswith(root + "/"):
                raise MountError(f"cannot apply {change.path}: a symlink on the host leads "
                                 f"outside {root}")
            try:
                if change.kind == "deleted":
                    if os.path.isdir(dest) and not os.path.islink(dest):
                        shutil.rmtree(dest)
                    elif os.path.lexists(dest):
                        os.unlink(dest)
                    continue
                source = f"{self._upper}/{change.path}"
                if change.type == "dir":
                    if os.path.lexists(dest) and not os.path.isdir(dest):
                        os.unlink(dest)
                    os.makedirs(dest, exist_ok=True)
                elif change.type == "symlink":
                    result = await self._sandbox.exec(["readlink", "--", source])
                    if result.exit_code != 0:
                        raise MountError(f"cannot read the link {change.path} in the guest: "
                                         f"{result.stderr.strip()}")
                    target = os.fsdecode(result.stdout_bytes[:-1])
                    if os.path.lexists(dest):
                        os.unlink(dest)
                    os.symlink(target, dest)
                else:
                    if os.path.islink(dest):
                        os.unlink(dest)
                    os.makedirs(parent, exist_ok=True)
                    await files.download(source, dest)
            except OSError as e:
                raise MountError(f"cannot apply {change.path} to {root}: "
                                 f"{e.strerror or e}") from None


async def changes(sandbox, active: ActiveMount) -> Changes:
    """Read the layer (the overlay's upper dir) of a read-only mount: an entry the host folder
    does not have was added; one it has was modified (a directory only if it is opaque or
    its metadata changed: it is listed when the host has no such directory); a whiteout
    (a 0:0 character device) is a deletion."""
    if active.upper is None:
        raise MountError(f"{active.spec.guest} is mounted :rw: its changes are already on "
                         f"the host")
    upper = active.upper
    host = active.spec.host
    out = []
    try:
        async for entry in sandbox.files.walk(upper):
            rel = entry.path[len(upper) + 1:]
            on_host = os.path.lexists(os.path.join(host, rel))
            if entry.type == "other" and entry.size == 0:
                if on_host:
                    out.append(Change(rel, "deleted", _host_type(os.path.join(host, rel)), 0))
                continue
            if entry.type == "dir":
                if on_host and os.path.isdir(os.path.join(host, rel)):
                    continue  # a directory that holds changes: its entries say what
                out.append(Change(rel, "added" if not on_host else "modified", "dir", 0))
                continue
            out.append(Change(rel, "modified" if on_host else "added", entry.type, entry.size))
    except GuestFileError as e:
        raise MountError(f"cannot read the layer of {active.spec.guest}: {e}") from None
    out.sort(key=lambda c: c.path)
    return Changes(out, sandbox=sandbox, upper=upper, guest=active.spec.guest, host=host)


def _host_type(path: str) -> str:
    if os.path.islink(path):
        return "symlink"
    return "dir" if os.path.isdir(path) else "file"
