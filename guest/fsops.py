"""Filesystem operations the host asks for by name (`fs` messages): stat, list, mkdir, remove,
rename, copy, chmod, symlink, exists, walk.

Each is a plain function of the request's fields that returns a msgpack-able result or raises
OSError; the agent turns OSError into an `error` reply carrying the errno name and the path.
`list` and `walk` are generators instead (`open_listing`): their entries stream to the host.
Paths must be absolute: the agent never guesses what a relative path is relative to.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as st
from typing import Callable, Iterator


class RequestError(OSError):
    """A malformed request (wrong argument), reported like an OSError with EINVAL."""

    def __init__(self, message: str):
        super().__init__(errno.EINVAL, message)


def check_path(path: object, field: str = "path") -> str:
    if not isinstance(path, str) or not path:
        raise RequestError(f"{field} must be a non-empty string")
    if not path.startswith("/"):
        raise RequestError(f"{field} must be absolute, got {path!r}")
    if "\0" in path:
        raise RequestError(f"{field} contains a NUL byte")
    return path


def _kind(mode: int) -> str:
    if st.S_ISDIR(mode):
        return "dir"
    if st.S_ISREG(mode):
        return "file"
    if st.S_ISLNK(mode):
        return "symlink"
    return "other"


def describe(path: str, s: os.stat_result, name: str | None = None) -> dict:
    return {
        "name": name if name is not None else (os.path.basename(path.rstrip("/")) or "/"),
        "path": path,
        "type": _kind(s.st_mode),
        "size": s.st_size,
        "mode": st.S_IMODE(s.st_mode),
        "mtime": s.st_mtime,
        "uid": s.st_uid,
        "gid": s.st_gid,
    }


def op_stat(req: dict) -> dict:
    """The entry for `path` itself (a link is described as a link), or with `follow` for
    what it leads to."""
    path = check_path(req.get("path"))
    return describe(path, os.stat(path) if req.get("follow") else os.lstat(path))


def op_exists(req: dict) -> bool:
    return os.path.lexists(check_path(req.get("path")))


# Open directory iterators a walk keeps at once; deeper, a parent's remaining entries are read
# into memory instead, so a pathologically deep tree cannot exhaust the agent's fds.
MAX_OPEN_DIRS = 64


# What a listing shows for a host folder's mount point, without asking the mount (see
# open_listing's `served`): a directory, as every mount point is.
_SERVED_DIR = os.stat_result((st.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, 0))


def open_listing(req: dict, served: Callable[[str], bool] = lambda path: False
                 ) -> Iterator[dict]:
    """`list` (one directory) or `walk` (every entry below it, a directory before what is in
    it) as a generator of entries in directory order. The root is opened now, so a missing
    or wrong path raises here, before any entry is sent; the rest is read as the host takes
    it, so memory does not grow with the number of entries. Entries that vanish while being
    read, subdirectories that cannot be opened (as os.walk does), and names that are not
    UTF-8 (the host could not name them in a request) are skipped. A path for which
    `served(path)` holds is a filesystem this agent serves itself (a host folder mount): it
    is listed as a plain directory without a stat and never entered, since the agent would
    wait on a request that only it can answer."""
    root = check_path(req.get("path"))
    it = os.scandir(root)
    if req.get("op") == "walk":
        return _walk(root, it, served)
    return _list(root, it, served)


def _stat(full: str, entry, served) -> os.stat_result:
    if served(full):
        return _SERVED_DIR
    return entry.stat(follow_symlinks=False)


def _list(path: str, it, served) -> Iterator[dict]:
    with it:
        for entry in it:
            if not _utf8(entry.name):
                continue
            full = os.path.join(path, entry.name)
            try:
                s = _stat(full, entry, served)
            except OSError:
                continue  # vanished while listing
            yield describe(full, s, entry.name)


def _walk(root: str, it, served) -> Iterator[dict]:
    stack = [(root, it)]  # (directory, iterator over its entries), depth first
    try:
        while stack:
            directory, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                _close_iter(stack.pop()[1])
                continue
            if not _utf8(entry.name):
                continue
            full = os.path.join(directory, entry.name)
            try:
                s = _stat(full, entry, served)
            except OSError:
                continue
            yield describe(full, s, entry.name)
            if st.S_ISDIR(s.st_mode) and not served(full):
                try:
                    child = os.scandir(full)
                except OSError:
                    continue
                open_dirs = [i for i, (_, e) in enumerate(stack) if hasattr(e, "close")]
                if len(open_dirs) >= MAX_OPEN_DIRS:
                    d, e = stack[open_dirs[0]]
                    stack[open_dirs[0]] = (d, iter(list(e)))
                    e.close()
                stack.append((full, child))
    finally:
        for _, entries in stack:
            _close_iter(entries)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept as surrogates by os.fsdecode
        return False
    return True


def _close_iter(entries) -> None:
    if hasattr(entries, "close"):
        entries.close()


def op_mkdir(req: dict) -> None:
    path = check_path(req.get("path"))
    mode = req.get("mode", 0o755)
    if req.get("parents", True):
        os.makedirs(path, mode=mode, exist_ok=True)
    else:
        os.mkdir(path, mode)


def op_remove(req: dict) -> None:
    path = check_path(req.get("path"))
    if path == "/":
        raise RequestError("refusing to remove /")
    if os.path.isdir(path) and not os.path.islink(path):
        if req.get("recursive", True):
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    else:
        os.unlink(path)


def op_rename(req: dict) -> None:
    os.rename(check_path(req.get("path")), check_path(req.get("dest"), "dest"))


def op_copy(req: dict) -> None:
    src, dest = check_path(req.get("path")), check_path(req.get("dest"), "dest")
    if os.path.isdir(src) and not os.path.islink(src):
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest, follow_symlinks=False)


def op_symlink(req: dict) -> None:
    """Make `path` a symbolic link to `target`, taken verbatim (uploads recreate links),
    replacing a file or link already there (made beside it, then renamed over it)."""
    target = req.get("target")
    if not isinstance(target, str) or not target or "\0" in target:
        raise RequestError("target must be a non-empty string without NUL bytes")
    path = check_path(req.get("path"))
    tmp = f"{path}.shuru-link-{os.getpid()}"
    os.symlink(target, tmp)
    try:
        os.rename(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise OSError(e.errno, e.strerror, path) from None


def op_chmod(req: dict) -> None:
    mode = req.get("mode")
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise RequestError("mode must be an integer between 0 and 0o7777")
    os.chmod(check_path(req.get("path")), mode)


OPS = {
    "stat": op_stat, "exists": op_exists, "mkdir": op_mkdir, "remove": op_remove,
    "rename": op_rename, "copy": op_copy, "chmod": op_chmod, "symlink": op_symlink,
}
# Ops whose answer is a stream of entries (see open_listing) rather than one `result`.
LISTINGS = ("list", "walk")


def open_for_read(req: dict) -> int:
    path = check_path(req.get("path"))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if st.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    return fd


def open_for_write(req: dict) -> int:
    path = check_path(req.get("path"))
    if req.get("parents", True):
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_APPEND if req.get("append") else os.O_TRUNC
    mode = req.get("mode")
    fd = os.open(path, flags, mode if isinstance(mode, int) else 0o644)
    if isinstance(mode, int):
        os.fchmod(fd, mode)  # the umask must not narrow an explicit mode
    return fd


def error_fields(e: OSError, req: dict) -> dict:
    code = errno.errorcode.get(e.errno or 0, "EIO")
    path = e.filename if isinstance(e.filename, str) else req.get("path")
    text = e.strerror or str(e)
    return {"code": code, "message": f"{path}: {text}" if path else text,
            "path": path if isinstance(path, str) else ""}
