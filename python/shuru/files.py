"""`sandbox.files`: the guest's filesystem from the host, and copying between the two.

Every call is one stream: `fs` ops answer with a `result`; `read` streams the file back as
data within our credit; `write` streams data to the guest within its credit, so a file of any
size goes either way without either side holding it in memory. `list` and `walk` stream their
entries the same way (a byte stream of msgpack entries), so a tree of any size is listed and
copied in bounded memory. Guest failures keep the guest's message and become
the GuestFileError subclass for its errno name (errors.py), carrying the guest path; host
failures while copying become ShuruError naming the host path. Relative guest paths are
relative to the sandbox's working directory, as in a shell.

Copies between host and guest never trust either side's links: an upload recreates host
symlinks as symlinks (their content is never read), a download writes only regular files and
directories, inside the destination, and never more than a file's size when it was listed, up
to a cap for the whole call (`max_size`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import stat as st
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, AsyncGenerator, AsyncIterator, Callable

from shuru_guest import wire

from . import agent_client as agent
from .agent_client import HOME
from .channel import Channel, Stream
from .errors import GuestFileError, ProtocolError, ShuruError, ShuruWarning

CHUNK = 1024 * 1024  # how much we read from a host file or iterator per step
# Default cap on the bytes one `download` writes to the host (all its files together): a
# guest can make a file of any apparent size (`truncate -s 1T`), the host's disk is finite.
MAX_DOWNLOAD = 4 * 1024 ** 3
# Files copied at once by upload and download: enough to hide the round trips.
PARALLEL = 8


@dataclass(frozen=True)
class FileInfo:
    name: str
    path: str
    type: str  # "file", "dir", "symlink" or "other"
    size: int
    mode: int
    mtime: float
    uid: int = 0
    gid: int = 0

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "create", "modify", "delete", "rename" (or "overflow": events were lost)
    path: str
    dest: str | None = None  # for "rename": the new path
    is_dir: bool = False


def guest_path(path: str | os.PathLike, field: str = "path", cwd: str | None = None) -> str:
    """Check a guest path on the host side before anything is sent. A relative path is
    taken relative to `cwd` (joined, not normalised: the guest's kernel resolves `..`
    through links as a shell would); without `cwd` it is refused."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise GuestFileError(f"{field} {text!r} is not valid UTF-8", path=repr(text)) from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise GuestFileError(f"{field} {text!r} is not valid UTF-8", path=repr(text)) from None
    if "\0" in text:
        raise GuestFileError(f"{field} contains a NUL byte", path=text)
    if not text.startswith("/"):
        if cwd is None or not text:
            raise GuestFileError(f"{field} must be an absolute guest path, got {text!r}",
                                 path=text)
        text = cwd.rstrip("/") + "/" + text
    return text


def _mode(mode: object, path: str, field: str = "mode") -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise GuestFileError(f"{field} must be an integer between 0 and 0o7777, got {mode!r}",
                             path=path)
    return mode


def _info(value: object) -> FileInfo:
    """A guest entry as a FileInfo; the guest is untrusted, so its fields are checked."""
    entry = agent.parse_entry(value)
    return FileInfo(**{k: entry[k] for k in FileInfo.__dataclass_fields__})


class Files:
    """Filesystem operations on a running sandbox. Get one as `sandbox.files`."""

    def __init__(self, channel_getter: Callable[[], Channel],
                 workdir: Callable[[], str | None] = lambda: None):
        self._channel = channel_getter
        self._workdir = workdir

    def _path(self, path: str | os.PathLike, field: str = "path") -> str:
        return guest_path(path, field, self._workdir() or HOME)

    async def _call(self, op: str, path: str, **fields) -> Any:
        """One `fs` op; its result's value, checked against what the op answers."""
        stream = self._channel().open_stream()
        try:
            await stream.send_msg(agent.fs(op, path, **fields))
            return agent.parse_value(op, path, await _final(stream, op, path))
        finally:
            stream.close()

    # ---- metadata ------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        return _info(await self._call("stat", self._path(path)))

    async def exists(self, path: str) -> bool:
        return await self._call("exists", self._path(path))

    async def list(self, path: str) -> list[FileInfo]:
        """A directory's entries, sorted by name (see `iter_list` for one that streams)."""
        async with contextlib.aclosing(self.iter_list(path)) as listing:
            entries = [e async for e in listing]
        return sorted(entries, key=lambda e: e.name)

    async def iter_list(self, path: str) -> AsyncGenerator[FileInfo, None]:
        """A directory's entries in directory order, as they arrive: any number of them in
        bounded memory."""
        async with contextlib.aclosing(self._listing("list", self._path(path))) as entries:
            async for entry in entries:
                yield entry

    async def walk(self, path: str) -> AsyncGenerator[FileInfo, None]:
        """Every entry below a directory (not the directory itself), each directory before
        what it holds, as they arrive. Links are listed, never followed."""
        async with contextlib.aclosing(self._listing("walk", self._path(path))) as entries:
            async for entry in entries:
                yield entry

    async def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> None:
        path = self._path(path)
        await self._call("mkdir", path, parents=bool(parents), mode=_mode(mode, path))

    async def remove(self, path: str, *, recursive: bool = True) -> None:
        await self._call("remove", self._path(path), recursive=bool(recursive))

    async def rename(self, path: str, dest: str) -> None:
        await self._call("rename", self._path(path), dest=self._path(dest, "dest"))

    async def copy(self, path: str, dest: str) -> None:
        """Copy a file or a directory tree inside the guest."""
        await self._call("copy", self._path(path), dest=self._path(dest, "dest"))

    async def chmod(self, path: str, mode: int) -> None:
        path = self._path(path)
        await self._call("chmod", path, mode=_mode(mode, path))

    async def symlink(self, path: str, target: str) -> None:
        """Make `path` a symbolic link to `target` (taken as it is, relative or not),
        replacing a file or link already there."""
        path = self._path(path)
        if not isinstance(target, str) or not target or "\0" in target:
            raise GuestFileError(f"target must be a non-empty string, got {target!r}",
                                 path=path)
        await self._call("symlink", path, target=target)

    async def _listing(self, op: str, path: str) -> AsyncGenerator[FileInfo, None]:
        """A `list` or `walk` stream: entries decoded as their bytes arrive, credit granted
        as they are handed on (so the guest produces them only as fast as we take them)."""
        stream = self._channel().open_stream()
        decoder = wire.EntryDecoder()
        done = False
        try:
            await stream.send_msg(agent.fs(op, path))
            while True:
                msg = await stream.recv()
                if msg["t"] == "data" and msg["fd"] == 1:
                    try:
                        entries = decoder.feed(msg["d"])
                    except wire.WireError as e:
                        raise ProtocolError(f"guest sent a bad {op} of {path}: {e}") from None
                    for entry in entries:
                        yield _info(entry)
                    await stream.consumed(1, len(msg["d"]))
                elif msg["t"] == "eof":
                    try:
                        decoder.finish()
                    except wire.WireError as e:
                        raise ProtocolError(f"guest sent a bad {op} of {path}: {e}") from None
                    agent.parse_value(op, path, await _final(stream, op, path))
                    done = True
                    return
                else:  # the guest's error ends the stream; anything else is nonsense
                    done = msg["t"] == "error"
                    agent.parse_result(msg, op, path)
                    raise ProtocolError(f"guest answered {op} of {path} with a result "
                                        "before the end of its entries")
        finally:
            await _abandon(stream, done)

    # ---- contents ------------------------------------------------------------------------

    async def iter_read(self, path: str) -> AsyncGenerator[bytes, None]:
        """The file's bytes in chunks, as they arrive (constant memory for any size)."""
        async with contextlib.aclosing(self._read(self._path(path))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _read(self, path: str, limit: int | None = None) -> AsyncGenerator[bytes, None]:
        """A `read` stream; with `limit` the guest sends at most that many bytes, and a guest
        that sends more is cut off."""
        stream = self._channel().open_stream()
        received = 0
        done = False
        try:
            await stream.send_msg(agent.read(path, limit))
            while True:
                msg = await stream.recv()
                if msg["t"] == "data" and msg["fd"] == 1:
                    received += len(msg["d"])
                    if limit is not None and received > limit:
                        raise ProtocolError(f"guest sent more than the {limit} bytes asked "
                                            f"for from {path}")
                    yield msg["d"]
                    await stream.consumed(1, len(msg["d"]))
                elif msg["t"] == "eof":
                    agent.parse_size(await _final(stream, "read", path), f"read of {path}")
                    done = True
                    return
                else:  # the guest's error ends the stream; anything else is nonsense
                    done = msg["t"] == "error"
                    agent.parse_result(msg, "read", path)
                    raise ProtocolError(f"guest answered read of {path} with a result "
                                        "before the end of its data")
        finally:
            await _abandon(stream, done)

    async def read(self, path: str) -> bytes:
        async with contextlib.aclosing(self.iter_read(path)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def write(self, path: str, data: Any, *, mode: int | None = None,
                    append: bool = False) -> int:
        """Write str, bytes, a binary file-like object, or an (async) iterator of bytes to
        the guest file, creating parent directories. Returns the bytes written."""
        path = self._path(path)
        if mode is not None:
            mode = _mode(mode, path)
        stream = self._channel().open_stream()
        try:
            await stream.send_msg(agent.write(path, mode=mode, append=append, parents=True))
            sender = asyncio.create_task(_send_all(stream, data))
            # The guest may refuse at open (or fail midway); its answer wins over sending.
            answer = asyncio.create_task(_final(stream, "write", path))
            done, _ = await asyncio.wait({sender, answer}, return_when=asyncio.FIRST_COMPLETED)
            if answer in done:
                sender.cancel()
                result = answer.result()  # raises the guest's error if there was one
                raise ProtocolError(f"guest answered {result!r} before the upload ended")
            try:
                sender.result()
            except BaseException:
                answer.cancel()
                raise
            await stream.send_msg(agent.eof(0))
            return agent.parse_size(await answer, f"write of {path}")
        finally:
            stream.close()

    # ---- host <-> guest ------------------------------------------------------------------

    async def upload(self, host_path: str | os.PathLike, path: str) -> None:
        """Copy a host file or directory tree to `path` in the guest. `host_path` itself may
        be a link (you named it); inside the tree, symlinks are recreated as symlinks with
        the same target text and never followed, so nothing outside the tree is read.
        Sockets, FIFOs and devices are skipped with a ShuruWarning."""
        dest = self._path(path)
        src = os.fspath(host_path)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise _host_error("upload", src, e) from None
        try:
            mode = os.fstat(fd).st_mode
        except OSError as e:
            os.close(fd)
            raise _host_error("upload", src, e) from None
        if st.S_ISREG(mode):
            await self._upload_file(_open_fd(fd, src), dest, src)
        elif st.S_ISDIR(mode):
            await self.mkdir(dest)
            async with _Pool() as pool:
                await self._upload_tree(fd, dest, src, pool)
        else:
            os.close(fd)
            raise ShuruError(f"upload: {src} is not a regular file or a directory")

    async def _upload_tree(self, dir_fd: int, dest: str, src: str, pool: "_Pool") -> None:
        """Upload what the open directory `dir_fd` holds (and close it). Every name is
        opened relative to its directory with O_NOFOLLOW, so a link swapped in midway is
        not followed either."""
        try:
            try:
                with os.scandir(dir_fd) as it:
                    names = [(e.name, e.is_symlink()) for e in it]
            except OSError as e:
                raise _host_error("upload", src, e) from None
            for name, is_link in sorted(names):
                host, guest = f"{src}/{name}", f"{dest.rstrip('/')}/{name}"
                if is_link:
                    try:
                        target = os.readlink(name, dir_fd=dir_fd)
                    except OSError as e:
                        raise _host_error("upload", host, e) from None
                    await pool.submit(self.symlink(guest, target))
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                 | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError as e:
                    raise _host_error("upload", host, e) from None
                try:
                    mode = os.fstat(fd).st_mode
                except OSError as e:
                    os.close(fd)
                    raise _host_error("upload", host, e) from None
                if st.S_ISDIR(mode):
                    try:
                        await self.mkdir(guest)
                    except BaseException:
                        os.close(fd)
                        raise
                    await self._upload_tree(fd, guest, host, pool)
                elif st.S_ISREG(mode):
                    f = _open_fd(fd, host)
                    await pool.submit(self._upload_file(f, guest, host), cleanup=f.close)
                else:
                    os.close(fd)
                    warnings.warn(f"upload: skipped {host}: not a regular file, directory "
                                  "or symlink", ShuruWarning, stacklevel=3)
        finally:
            os.close(dir_fd)

    async def _upload_file(self, f, dest: str, src: str) -> None:
        with f:
            try:
                mode = os.fstat(f.fileno()).st_mode & 0o7777
            except OSError as e:
                raise _host_error("upload", src, e) from None
            await self.write(dest, _HostFile(f, src), mode=mode)

    async def download(self, path: str, host_path: str | os.PathLike, *,
                       max_size: int | None = MAX_DOWNLOAD) -> None:
        """Copy a guest file or directory tree to `host_path`. Each file is copied up to the
        size it had when listed (a file that grows meanwhile is cut there), and the whole
        call writes at most `max_size` bytes (default MAX_DOWNLOAD, 4 GiB; None for no cap):
        a file that would go past it raises GuestFileError (code EFBIG) naming the cap
        before any of it is written; files copied before it stay. `path` itself may be a
        link; inside a tree only regular files and directories are copied (links and special
        files are skipped), and only inside `host_path`, whatever names the guest reports."""
        src = self._path(path)
        dest = Path(host_path)
        budget = _Budget(max_size)
        info = _info(await self._call("stat", src, follow=True))  # the path named may be a link
        if not info.is_dir:
            if not info.is_file:
                raise GuestFileError(f"download: {src} is a {info.type}, not a regular file "
                                     "or a directory", path=src, code="EINVAL")
            budget.take(src, info.size)
            await self._download_file(src, dest, info.size)
            return
        try:
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
        except OSError as e:
            raise _host_error("download", str(dest), e) from None
        prefix = src.rstrip("/") + "/"
        async with _Pool() as pool, contextlib.aclosing(self.walk(src)) as entries:
            async for entry in entries:
                target = _target(root, prefix, entry)
                if entry.is_dir:
                    try:
                        target.mkdir(parents=True, exist_ok=True)
                    except OSError as e:
                        raise _host_error("download", str(target), e) from None
                elif entry.is_file:
                    budget.take(entry.path, entry.size)
                    await pool.submit(self._download_file(entry.path, target, entry.size))

    async def _download_file(self, src: str, dest: Path, size: int) -> None:
        tmp = dest.with_name(f".{dest.name}.shuru-part")
        try:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            except OSError as e:
                raise _host_error("download", str(dest), e) from None
            with f:
                if size:
                    await self._copy_out(src, f, size, dest)
            try:
                os.replace(tmp, dest)
            except OSError as e:
                raise _host_error("download", str(dest), e) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

    async def _copy_out(self, src: str, f, size: int, dest: Path) -> None:
        async with contextlib.aclosing(self._read(src, limit=size)) as chunks:
            async for chunk in chunks:
                try:
                    f.write(chunk)
                except OSError as e:
                    raise _host_error("download", str(dest), e) from None


def _open_fd(fd: int, path: str):
    """A binary file object that owns `fd` (closing it twice is harmless)."""
    try:
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError as e:
        os.close(fd)
        raise _host_error("upload", path, e) from None


def _host_error(action: str, path: str, e: OSError) -> ShuruError:
    return ShuruError(f"{action}: {path}: {e.strerror or e} (on the host)")


def _target(root: Path, prefix: str, entry: FileInfo) -> Path:
    """Where a walked guest entry goes on the host: under `root`, or a ProtocolError. The
    name is checked as text (no "..", no empty part) and the result once more after
    resolving, so a link already in the destination cannot lead out of it either."""
    rel = entry.path[len(prefix):] if entry.path.startswith(prefix) else ""
    parts = PurePosixPath(rel).parts if rel and not rel.startswith("/") else ()
    if not parts or any(p in ("..", ".") for p in parts) or "//" in rel:
        raise ProtocolError(f"guest listed {entry.path!r} outside {prefix.rstrip('/')!r}")
    target = (root / Path(*parts)).resolve()
    if target == root or root not in target.parents:
        raise ProtocolError(f"guest listed {entry.path!r}, which leads outside {root}")
    return target


class _Budget:
    """The bytes a download may still write (None: no cap)."""

    def __init__(self, cap: int | None):
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
            raise ShuruError(f"download: max_size must be a non-negative int or None, "
                             f"got {cap!r}")
        self.cap = cap
        self.used = 0

    def take(self, path: str, size: int) -> None:
        if self.cap is not None and self.used + size > self.cap:
            raise GuestFileError(
                f"download: {path} is {size} bytes, which would take the download past its "
                f"max_size cap of {self.cap} bytes ({self.used} already copied); pass a "
                "larger max_size= (or None) to copy it", path=path, code="EFBIG")
        self.used += size


class _Pool:
    """Runs up to PARALLEL copies at once. The first failure wins: it is raised by the next
    submit or on leaving the block, and the copies still running are cancelled."""

    def __init__(self, size: int = PARALLEL):
        self._slots = asyncio.Semaphore(size)
        self._tasks: set[asyncio.Task] = set()
        self._error: BaseException | None = None

    async def __aenter__(self) -> "_Pool":
        return self

    async def submit(self, coro, cleanup: Callable[[], None] | None = None) -> None:
        """Run `coro` when a slot is free; `cleanup` runs once it ended or was dropped
        (a coroutine cancelled before it started never runs its own `finally`)."""
        try:
            self._check()
            await self._slots.acquire()
        except BaseException:
            coro.close()
            if cleanup:
                cleanup()
            raise
        task = asyncio.create_task(self._run(coro))
        self._tasks.add(task)

        def ended(task: asyncio.Task) -> None:  # also when cancelled before it started
            self._tasks.discard(task)
            coro.close()
            if cleanup:
                cleanup()
            self._slots.release()

        task.add_done_callback(ended)

    async def _run(self, coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            if self._error is None:
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def wait_idle(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        self._check()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            await self.wait_idle()
            return
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))


class _HostFile:
    """A host file handed to `write`: its read errors become ShuruError naming it."""

    def __init__(self, f, path: str):
        self._f = f
        self._path = path

    def read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except OSError as e:
            raise _host_error("upload", self._path, e) from None


async def _abandon(stream: Stream, done: bool) -> None:
    """End our side of a read or listing stream; one left midway (the caller stopped
    iterating, or failed) is cancelled in the guest too, so it stops producing."""
    stream.close()
    if not done and stream.channel.is_open:
        with contextlib.suppress(ShuruError):
            await stream.send_msg(agent.cancel())


async def _final(stream: Stream, what: str, path: str) -> object:
    """Wait for the stream's closing `result` (or `error`) and return its value; anything
    else the guest sends there is a ProtocolError."""
    return agent.parse_result(await stream.recv(), what, path)


async def _chunks(data) -> AsyncIterator[bytes]:
    if isinstance(data, str):
        data = data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            yield bytes(view[i:i + CHUNK])
    elif hasattr(data, "read"):
        while chunk := await asyncio.to_thread(data.read, CHUNK):
            yield chunk.encode() if isinstance(chunk, str) else chunk
    elif hasattr(data, "__aiter__"):
        async for chunk in data:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    elif hasattr(data, "__iter__"):
        for chunk in data:
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    else:
        raise TypeError(f"cannot write a {type(data).__name__}: use str, bytes, a file or an "
                        "iterator of bytes")


async def _send_all(stream: Stream, data) -> None:
    async for chunk in _chunks(data):
        await stream.send_data(0, chunk)


class Watch:
    """A running watch; events go to the callback until `stop()`. A callback that raises
    ends the watch (the guest stops watching): `stop()` and `wait()` raise its exception,
    and if neither is ever called asyncio reports it as never retrieved. `error` holds
    whatever ended the watch other than `stop()`."""

    def __init__(self, stream: Stream, path: str, callback: Callable):
        self._stream = stream
        self.path = path
        self._callback = callback
        self.error: BaseException | None = None
        self._callback_failed = False
        self._stopped = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                msg = await self._stream.recv()
                fields = agent.parse_event(msg, self.path)
                if fields is None:  # the end: stopped, or the guest's error
                    try:
                        agent.parse_result(msg, "watch", self.path)
                    except ShuruError as e:
                        self.error = e
                    return
                if not self._stopped:
                    event = WatchEvent(*fields)
                    try:
                        result = self._callback(event)
                        if inspect.isawaitable(result):
                            await result
                    except Exception as e:
                        self.error, self._callback_failed = e, True
                        break
        except ShuruError as e:  # the channel failed or the guest broke the protocol
            self.error = e
            return
        finally:
            if not self._callback_failed:
                self._stream.close()
        # The callback failed: the guest stops watching, what it still sends is dropped.
        self._stream.discard()
        with contextlib.suppress(ShuruError):
            await self._stream.send_msg(agent.cancel())
        raise self.error

    async def wait(self, timeout: float | None = None) -> None:
        """Wait until the watch ends: returns after `stop()` or when the guest ended it;
        raises the error that ended it otherwise (a callback's exception, GuestFileError,
        ProtocolError, SandboxDiedError)."""
        await asyncio.wait_for(asyncio.wait({self._task}), timeout)
        self._retrieve()
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        """Stop watching; raises a callback's exception if one ended the watch. Safe to call
        more than once, after the sandbox stopped, and from the watch's own callback."""
        self._stopped = True  # no event reaches the callback after this
        if asyncio.current_task() is self._task:
            # From the callback: the guest's answer to `cancel` ends the watch's loop.
            with contextlib.suppress(ShuruError):
                await self._stream.send_msg(agent.cancel())
            return
        if not self._task.done():
            try:
                await self._stream.send_msg(agent.cancel())
                await asyncio.wait_for(asyncio.wait({self._task}), 10)
            except (ShuruError, asyncio.TimeoutError):
                self._task.cancel()
                await asyncio.wait({self._task})
        self._retrieve()
        if self._callback_failed:
            raise self.error

    def _retrieve(self) -> None:
        if not self._task.cancelled():
            self._task.exception()  # it is reported here, not as "never retrieved"


async def start_watch(channel: Channel, path: str, callback: Callable,
                      recursive: bool = True, cwd: str | None = None) -> Watch:
    path = guest_path(path, cwd=cwd or HOME)
    stream = channel.open_stream()
    await stream.send_msg(agent.watch(path, recursive))
    try:
        await _final(stream, "watch", path)  # the watch is in place once this returns
    except BaseException:
        stream.close()
        raise
    return Watch(stream, path, callback)
