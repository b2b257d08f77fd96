"""The agent's host folders: a FUSE filesystem in the guest whose answers come from the host.

The host opens an odd stream with `mount {path, rw}`. This module mounts a FUSE filesystem
(the kernel's own /dev/fuse, spoken with `struct`: no libfuse in the image) and, for a
read-only mount (the default), an overlay on top of it whose upper layer lives on a tmpfs:
the guest reads the host folder and writes into the layer, the host stays untouched, and
nothing of the mount ever reaches the guest's disk (so never a checkpoint). `result` gives
`{"upper": dir}`, where the host reads the layer for `mount_changes`. A `:rw` mount is the
FUSE filesystem itself; its write operations are not served yet (EROFS).

Every FUSE request that needs the host becomes an `fsop {id, op, ...}` on the mount's stream
(paths relative to the host folder, which the host resolves without following a symlink);
the host answers `fsreply {id, err?, value?}`. Replies say "valid for 0 s", so the kernel asks
again on every access and host changes show at once.

Threads, because the agent is one loop and a FUSE request may come from the agent itself
(a `read` of a file under the mount): the loop would wait for the kernel, the kernel for the
loop. A reader thread per mount takes requests off /dev/fuse and hands them to the loop
through a pipe; a request the loop has not answered within REQUEST_TIMEOUT gets EIO from the
thread, which breaks such a cycle. Set-up runs in a thread too: mounting the overlay makes
the kernel ask the FUSE filesystem questions the loop must answer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import sys
import threading
import time

BASE = "/run/shuru/mounts"
REQUEST_TIMEOUT = 20.0  # seconds a FUSE request may wait for the host before EIO
MAX_MOUNTS = 16
MAX_READ = 64 * 1024  # FUSE reads ask at most this much (mount option max_read)
_BUF = 256 * 1024

# opcodes (linux/fuse.h)
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKDIR, UNLINK, RMDIR, RENAME, LINK = 9, 10, 11, 12, 13
OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 14, 15, 16, 17, 18, 20
CREATE, RENAME2, FSYNCDIR = 35, 45, 30
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, BATCH_FORGET = 34, 36, 38, 42

IN_HEADER = struct.Struct("<IIQQIIII")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")
ATTR_OUT = struct.Struct("<QII")
OPEN_OUT = struct.Struct("<QII")
READ_IN = struct.Struct("<QQIIQII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")
WRITE_IN = struct.Struct("<QQIIQII")
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
# what SETATTR may change, as the host is told it (FATTR_* bits)
FATTR_MODE, FATTR_SIZE, FATTR_ATIME, FATTR_MTIME = 1, 8, 16, 32
FATTR_ATIME_NOW, FATTR_MTIME_NOW = 128, 256
# open flags the host honours for a :rw mount
# (Linux values, as the host reads them whatever its own are: O_ACCMODE, O_EXCL, O_TRUNC,
# O_APPEND)
_PASS_FLAGS = 0o3 | 0o200 | 0o1000 | 0o2000

FUSE_ASYNC_READ = 1 << 0
FUSE_BIG_WRITES = 1 << 5
O_ACCMODE = 3

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2


class MountError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise MountError(errno.errorcode.get(err, "EIO"),
                         f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    _libc.umount2(target.encode(), MNT_DETACH)


def check_target(path: object) -> str:
    """A guest mount point: absolute, normalized, not / nor a system directory."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise MountError("EINVAL", f"mount path must be an absolute guest path, got {path!r}")
    norm = os.path.normpath(path)
    if norm == "/" or norm.split("/")[1] in ("proc", "sys", "dev", "run", "boot"):
        raise MountError("EINVAL", f"cannot mount a host folder on {norm}")
    return norm


def _attr(value: list) -> bytes:
    """[ino, mode, nlink, size, blocks, atime_ns, mtime_ns, ctime_ns] as a fuse_attr: owned
    by root in the guest (host ids mean nothing here)."""
    ino, mode, nlink, size, blocks, a, m, c = (int(x) for x in value[:8])
    return ATTR.pack(ino & (2**64 - 1), size, blocks, a // 10**9, m // 10**9, c // 10**9,
                     a % 10**9, m % 10**9, c % 10**9, mode & 0xFFFFFFFF, nlink & 0xFFFFFFFF,
                     0, 0, 0, 4096, 0)


class Mount:
    """One host folder: its FUSE connection, its node table and the requests in flight."""

    def __init__(self, stream: int, target: str, rw: bool):
        self.stream = stream
        self.target = target
        self.rw = rw
        self.base = f"{BASE}/{stream}"
        self.lower = self.target if rw else f"{self.base}/lower"
        self.upper = None if rw else f"{self.base}/layer/upper"
        self.fd = -1
        self.paths: dict[int, str] = {1: ""}  # nodeid -> path relative to the host folder
        self.nodes: dict[str, int] = {"": 1}
        self.lookups: dict[int, int] = {}
        self.next_node = 2
        # unique -> (deadline, opcode, nodeid, args): taken by whoever answers first
        self.pending: dict[int, tuple] = {}
        self.lock = threading.Lock()
        self.inbox: list[bytes] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.ready: str | None = None  # None while setting up; "" ok; else an error message
        self.ready_code = "EIO"
        self.closed = False
        self.mounted: list[str] = []

    # ---- set-up (a thread) --------------------------------------------------------------

    def setup(self) -> None:
        try:
            os.makedirs(self.target, exist_ok=True)
            self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            if not self.rw:
                os.makedirs(self.lower, exist_ok=True)
                os.makedirs(f"{self.base}/layer", exist_ok=True)
                _mount("shuru-layer", f"{self.base}/layer", "tmpfs", MS_NOSUID | MS_NODEV,
                       "mode=0755")
                self.mounted.append(f"{self.base}/layer")
                os.makedirs(self.upper)
                os.makedirs(f"{self.base}/layer/work")
            _mount("shuru", self.lower, "fuse.shuru", MS_NOSUID | MS_NODEV,
                   f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other,"
                   f"default_permissions,max_read={MAX_READ}")
            self.mounted.append(self.lower)
            threading.Thread(target=self.read_loop, daemon=True).start()
            if not self.rw:
                _mount("overlay", self.target, "overlay", 0,
                       f"lowerdir={self.lower},upperdir={self.upper},"
                       f"workdir={self.base}/layer/work")
                self.mounted.append(self.target)
            self._post(b"ready")
        except MountError as e:
            self.ready_code = e.code
            self._post(b"fail:" + e.message.encode())
        except OSError as e:
            self.ready_code = errno.errorcode.get(e.errno, "EIO")
            self._post(b"fail:" + f"mount on {self.target}: {e.strerror}".encode())

    def _post(self, item: bytes) -> None:
        with self.lock:
            self.inbox.append(item)
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    # ---- the reader thread ------------------------------------------------------------

    def read_loop(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self.closed:
            if poller.poll(1000) and not self.closed:
                try:
                    req = os.read(self.fd, _BUF)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                        continue  # ENOENT: a request interrupted before we read it
                    break  # ENODEV: unmounted
                if self._local(req):
                    continue
                self._post(req)
            self._expire()

    def _local(self, req: bytes) -> bool:
        """Requests answered here without the host."""
        if len(req) < IN_HEADER.size:
            return True
        _, opcode, unique, _, _, _, _, _ = IN_HEADER.unpack_from(req)
        body = req[IN_HEADER.size:]
        if opcode == INIT:
            major, minor, readahead, flags = struct.unpack_from("<IIII", body)
            if major != 7:
                self.reply(unique, -errno.EPROTO)
                return True
            self.reply(unique, 0, INIT_OUT.pack(
                7, min(minor, 31), min(readahead, MAX_READ),
                flags & (FUSE_ASYNC_READ | FUSE_BIG_WRITES), 16, 12, MAX_READ, 1, 0, 0, 0,
                *([0] * 7)), force=True)
            return True
        if opcode in (GETXATTR, LISTXATTR, ACCESS):
            self.reply(unique, -errno.ENOSYS, force=True)  # the kernel stops asking
            return True
        if opcode in (FLUSH, FSYNC, FSYNCDIR):
            self.reply(unique, 0, force=True)
            return True
        if opcode in (INTERRUPT, DESTROY):
            return True
        return False

    def _expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            late = [u for u, p in self.pending.items() if p[0] < now]
            for u in late:
                del self.pending[u]
        for u in late:
            self.reply(u, -errno.EIO, force=True)

    # ---- replies ------------------------------------------------------------------------

    def reply(self, unique: int, error: int, payload: bytes = b"", *, force: bool = False) -> None:
        """Answer request `unique` once: unless `force`, only if it is still pending."""
        if not force:
            with self.lock:
                if self.pending.pop(unique, None) is None:
                    return  # timed out already
        if error:
            payload = b""
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique)
                     + payload)
        except OSError:
            pass  # ENOENT: the request was interrupted; ENODEV: unmounted

    def close(self) -> None:
        self.closed = True
        for target in reversed(self.mounted):
            _umount(target)
        self.mounted.clear()
        fds, self.fd = (self.fd, self.wake_r, self.wake_w), -1  # the reader thread sees -1
        for fd in fds:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if not self.rw:
            for path in (f"{self.base}/layer", self.lower, self.base):
                try:
                    os.rmdir(path)
                except OSError:
                    pass


class Mounts:
    """The mounts of the agent's connection, driven by its loop (`interest`, `service`,
    `message`) like the port forwards."""

    def __init__(self, send):
        self.send = send
        self.mounts: dict[int, Mount] = {}
        self.by_wake: dict[int, Mount] = {}
        self.ids = iter(range(1, 2**62))

    def owns(self, stream: int) -> bool:
        return stream in self.mounts

    def targets(self) -> list[str]:
        return [m.target for m in self.mounts.values()]

    def open(self, s: int, msg: dict) -> None:
        if os.getpid() != 1:
            self.send("error", s, code="ENOTSUP", message="mounts run only as the VM's PID 1")
            return
        if s in self.mounts:
            self.send("error", s, code="EBUSY", message=f"stream {s} is already in use")
            return
        if len(self.mounts) >= MAX_MOUNTS:
            self.send("error", s, code="EMFILE", message=f"{MAX_MOUNTS} mounts at most")
            return
        try:
            target = check_target(msg.get("path"))
            if any(_overlaps(target, m.target) for m in self.mounts.values()):
                raise MountError("EBUSY", f"{target} overlaps another host folder mount")
            rw = bool(msg.get("rw", False))
            if not rw and not os.path.isdir("/sys/module/overlay"):
                from . import netsetup

                netsetup._run(["/usr/sbin/modprobe", "overlay"])
        except MountError as e:
            self.send("error", s, code=e.code, message=e.message)
            return
        except Exception as e:  # modprobe failing (SetupError)
            self.send("error", s, code="EIO", message=f"cannot load overlayfs: {e}")
            return
        mount = Mount(s, target, rw)
        self.mounts[s] = mount
        self.by_wake[mount.wake_r] = mount
        threading.Thread(target=mount.setup, daemon=True).start()

    def shutdown(self) -> None:
        """The host went away (or the guest powers off): every mount is taken down."""
        for s in list(self.mounts):
            self._drop(s)

    def _drop(self, s: int) -> None:
        mount = self.mounts.pop(s, None)
        if mount is None:
            return
        self.by_wake.pop(mount.wake_r, None)
        self.forget(mount.wake_r)
        mount.close()

    forget = staticmethod(lambda fd: None)  # the agent sets its forget_fd

    # ---- polling ------------------------------------------------------------------------

    def interest(self) -> dict[int, int]:
        import selectors

        return {m.wake_r: selectors.EVENT_READ for m in self.mounts.values()}

    def service(self, fd: int, events: int) -> bool:
        mount = self.by_wake.get(fd)
        if mount is None:
            return False
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        with mount.lock:
            items, mount.inbox = mount.inbox, []
        for item in items:
            if mount.stream not in self.mounts:
                return True
            if item == b"ready":
                mount.ready = ""
                self.send("result", mount.stream, value={"upper": mount.upper})
            elif item.startswith(b"fail:"):
                message = item[5:].decode(errors="replace")
                self._drop(mount.stream)
                self.send("error", mount.stream, code=mount.ready_code, message=message)
            else:
                try:
                    self._request(mount, item)
                except Exception as e:
                    print("shuru-agent: mount:", repr(e), file=sys.stderr, flush=True)
        return True

    # ---- FUSE requests -> fsop ----------------------------------------------------------

    def _request(self, m: Mount, req: bytes) -> None:
        _, opcode, unique, nodeid, _, _, _, _ = IN_HEADER.unpack_from(req)
        body = req[IN_HEADER.size:]
        if opcode == FORGET:
            self._forget(m, nodeid, struct.unpack_from("<Q", body)[0])
            return
        if opcode == BATCH_FORGET:
            (count, _) = struct.unpack_from("<II", body)
            for i in range(count):
                node, n = struct.unpack_from("<QQ", body, 8 + 16 * i)
                self._forget(m, node, n)
            return
        path = m.paths.get(nodeid)
        fields: dict = {}
        if path is None:
            m.reply(unique, -errno.ESTALE, force=True)
            return
        if opcode in (LOOKUP, MKDIR, UNLINK, RMDIR, CREATE, RENAME, RENAME2):
            if opcode in (MKDIR, UNLINK, RMDIR, CREATE, RENAME, RENAME2) and not m.rw:
                m.reply(unique, -errno.EROFS, force=True)
                return
            head = {MKDIR: 8, CREATE: 16, RENAME: 8, RENAME2: 16}.get(opcode, 0)
            names = body[head:].split(b"\0")
            try:
                first = _child(path, names[0])
                if opcode in (RENAME, RENAME2):
                    (newdir,) = struct.unpack_from("<Q", body)
                    if opcode == RENAME2 and struct.unpack_from("<I", body, 8)[0]:
                        m.reply(unique, -errno.EINVAL, force=True)  # exchange, noreplace
                        return
                    dest_dir = m.paths.get(newdir)
                    if dest_dir is None:
                        m.reply(unique, -errno.ESTALE, force=True)
                        return
                    fields["dest"] = _child(dest_dir, names[1])
            except (UnicodeDecodeError, IndexError, ValueError):
                m.reply(unique, -errno.EINVAL, force=True)
                return
            fields["path"] = first
            op = {LOOKUP: "lookup", MKDIR: "mkdir", UNLINK: "unlink", RMDIR: "rmdir",
                  CREATE: "create", RENAME: "rename", RENAME2: "rename"}[opcode]
            if opcode == MKDIR:
                fields["mode"] = struct.unpack_from("<I", body)[0] & 0o7777
            elif opcode == CREATE:
                flags, mode = struct.unpack_from("<II", body)
                fields.update(flags=flags & _PASS_FLAGS, mode=mode & 0o7777)
        elif opcode == WRITE and m.rw:
            fh, offset, size = WRITE_IN.unpack_from(body)[:3]
            op = "write"
            fields.update(fh=fh, off=offset, d=body[WRITE_IN.size:WRITE_IN.size + size])
        elif opcode == SETATTR and m.rw:
            valid, _, fh, size, _, atime, mtime, _, atimens, mtimens, _, mode = \
                SETATTR_IN.unpack_from(body)[:12]
            op, fields["path"] = "setattr", path
            if valid & FATTR_MODE:
                fields["mode"] = mode & 0o7777
            if valid & FATTR_SIZE:
                fields["size"] = size
            if valid & (FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW):
                now = time.time_ns()
                fields["times"] = [
                    now if valid & FATTR_ATIME_NOW else
                    (atime * 10**9 + atimens if valid & FATTR_ATIME else None),
                    now if valid & FATTR_MTIME_NOW else
                    (mtime * 10**9 + mtimens if valid & FATTR_MTIME else None)]
        elif opcode == GETATTR:
            op, fields["path"] = "getattr", path
        elif opcode == READLINK:
            op, fields["path"] = "readlink", path
        elif opcode in (OPEN, OPENDIR):
            (flags,) = struct.unpack_from("<I", body)
            if opcode == OPEN and flags & O_ACCMODE != os.O_RDONLY:
                if not m.rw:
                    m.reply(unique, -errno.EROFS, force=True)
                    return
                fields["flags"] = flags & _PASS_FLAGS
            op, fields["path"] = ("open" if opcode == OPEN else "opendir"), path
        elif opcode in (READ, READDIR):
            fh, offset, size = READ_IN.unpack_from(body)[:3]
            op = "read" if opcode == READ else "readdir"
            fields.update(fh=fh, off=offset, size=min(size, MAX_READ))
        elif opcode in (RELEASE, RELEASEDIR):
            (fh,) = struct.unpack_from("<Q", body)
            op, fields["fh"] = ("release" if opcode == RELEASE else "releasedir"), fh
        elif opcode == STATFS:
            op = "statfs"
        elif opcode in (SETATTR, WRITE, SYMLINK, LINK):
            # symlinks and hard links are not made on the host: a link the guest planted
            # could lead a host program that follows it anywhere
            m.reply(unique, -errno.EPERM if m.rw else -errno.EROFS, force=True)
            return
        else:
            m.reply(unique, -errno.ENOSYS, force=True)
            return
        with m.lock:
            m.pending[unique] = (time.monotonic() + REQUEST_TIMEOUT, opcode, nodeid, fields)
        self.send("fsop", m.stream, id=unique, op=op, **fields)

    def _forget(self, m: Mount, nodeid: int, n: int) -> None:
        if nodeid == 1 or nodeid not in m.lookups:
            return
        m.lookups[nodeid] -= n
        if m.lookups[nodeid] <= 0:
            del m.lookups[nodeid]
            path = m.paths.pop(nodeid, None)
            if m.nodes.get(path) == nodeid:
                del m.nodes[path]

    # ---- host messages ------------------------------------------------------------------

    def message(self, t: str, s: int, msg: dict) -> None:
        m = self.mounts[s]
        if t == "close":
            self._drop(s)
            return
        if t != "fsreply":
            return
        unique = msg["id"]
        with m.lock:
            entry = m.pending.get(unique)
        if entry is None:
            return  # timed out, or never asked: nothing to answer
        _, opcode, nodeid, fields = entry
        err = msg.get("err")
        if err:
            m.reply(unique, -getattr(errno, err, errno.EIO) if isinstance(err, str)
                    else -errno.EIO)
            return
        value = msg.get("value")
        try:
            payload = self._payload(m, opcode, fields, value)
        except (TypeError, ValueError, IndexError, struct.error, UnicodeError):
            m.reply(unique, -errno.EIO)
            return
        m.reply(unique, 0, payload)

    def _entry(self, m: Mount, path: str, attr: list) -> bytes:
        node = m.nodes.get(path)
        if node is None:
            node = m.next_node
            m.next_node += 1
            m.nodes[path], m.paths[node] = node, path
        m.lookups[node] = m.lookups.get(node, 0) + 1
        return ENTRY_OUT.pack(node, 0, 0, 0, 0, 0) + _attr(attr)

    def _payload(self, m: Mount, opcode: int, fields: dict, value) -> bytes:
        if opcode in (LOOKUP, MKDIR):
            return self._entry(m, fields["path"], value)
        if opcode == CREATE:
            fh, attr = value
            return self._entry(m, fields["path"], attr) + OPEN_OUT.pack(int(fh), 0, 0)
        if opcode in (UNLINK, RMDIR):
            m.nodes.pop(fields["path"], None)  # a new file there gets a node of its own
            return b""
        if opcode in (RENAME, RENAME2):
            old, new = fields["path"], fields["dest"]
            m.nodes.pop(new, None)
            for path in [p for p in m.nodes if p == old or p.startswith(old + "/")]:
                node = m.nodes.pop(path)
                m.nodes[new + path[len(old):]] = node
                m.paths[node] = new + path[len(old):]
            return b""
        if opcode == WRITE:
            return struct.pack("<II", int(value), 0)
        if opcode in (GETATTR, SETATTR):
            return ATTR_OUT.pack(0, 0, 0) + _attr(value)
        if opcode == READLINK:
            if not isinstance(value, bytes):
                raise TypeError("readlink")
            return value[:4096]
        if opcode in (OPEN, OPENDIR):
            return OPEN_OUT.pack(int(value), 0, 0)
        if opcode == READ:
            if not isinstance(value, bytes):
                raise TypeError("read")
            return value[:fields["size"]]
        if opcode == READDIR:
            out = bytearray()
            for name, ino, dtype, off in value:
                raw = name.encode()
                if not raw or b"/" in raw or b"\0" in raw:
                    continue
                entry = DIRENT.pack(int(ino), int(off), len(raw), int(dtype) & 0xF) + raw
                entry += b"\0" * (-len(entry) % 8)
                if len(out) + len(entry) > fields["size"]:
                    break
                out += entry
            return bytes(out)
        if opcode == STATFS:
            blocks, bfree, bavail, files, ffree, bsize, namelen = (int(x) for x in value[:7])
            return STATFS_OUT.pack(blocks, bfree, bavail, files, ffree, bsize, namelen, bsize,
                                   0, *([0] * 6))
        return b""  # RELEASE, RELEASEDIR


def _child(parent: str, raw: bytes) -> str:
    name = raw.decode()
    if not name or name in (".", "..") or "/" in name:
        raise ValueError(name)
    return f"{parent}/{name}" if parent else name


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")
