"""`sandbox.files`: the guest's filesystem from the host, and copying between the two.

Every call is one stream: `fs` ops answer with a `result`; `read` streams the file back as
data within our credit; `write` streams data to the guest within its credit, so a file of any
size goes either way without either side holding it in memory. Guest failures keep the
guest's message and become the GuestFileError subclass for its errno name (errors.py),
carrying the guest path.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from .channel import Channel, Stream
from .errors import GuestFileError, ProtocolError, ShuruError, guest_file_error

CHUNK = 1024 * 1024  # how much we read from a host file or iterator per step


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


def guest_path(path: str | os.PathLike, field: str = "path") -> str:
    """Check a guest path on the host side before anything is sent."""
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
    if not text.startswith("/"):
        raise GuestFileError(f"{field} must be an absolute guest path, got {text!r}", path=text)
    if "\0" in text:
        raise GuestFileError(f"{field} contains a NUL byte", path=text)
    return text


def guest_error(msg: dict, fallback_path: str) -> ShuruError:
    return guest_file_error(msg.get("code"), msg.get("message"),
                            msg.get("path") or fallback_path)


def _info(value: dict) -> FileInfo:
    return FileInfo(**{k: value[k] for k in FileInfo.__dataclass_fields__ if k in value})


class Files:
    """Filesystem operations on a running sandbox. Get one as `sandbox.files`."""

    def __init__(self, channel_getter: Callable[[], Channel]):
        self._channel = channel_getter

    async def _call(self, op: str, path: str, **fields) -> object:
        stream = self._channel().open_stream()
        try:
            await stream.send("fs", op=op, path=path, **fields)
            return await _final(stream, path)
        finally:
            stream.close()

    # ---- metadata ------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        return _info(await self._call("stat", guest_path(path)))

    async def exists(self, path: str) -> bool:
        return bool(await self._call("exists", guest_path(path)))

    async def list(self, path: str) -> list[FileInfo]:
        return [_info(v) for v in await self._call("list", guest_path(path))]

    async def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> None:
        await self._call("mkdir", guest_path(path), parents=parents, mode=mode)

    async def remove(self, path: str, *, recursive: bool = True) -> None:
        await self._call("remove", guest_path(path), recursive=recursive)

    async def rename(self, path: str, dest: str) -> None:
        await self._call("rename", guest_path(path), dest=guest_path(dest, "dest"))

    async def copy(self, path: str, dest: str) -> None:
        """Copy a file or a directory tree inside the guest."""
        await self._call("copy", guest_path(path), dest=guest_path(dest, "dest"))

    async def chmod(self, path: str, mode: int) -> None:
        await self._call("chmod", guest_path(path), mode=mode)

    # ---- contents ------------------------------------------------------------------------

    async def iter_read(self, path: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks, as they arrive (constant memory for any size)."""
        path = guest_path(path)
        stream = self._channel().open_stream()
        try:
            await stream.send("read", path=path)
            while True:
                msg = await stream.recv()
                if msg["t"] == "data" and msg["fd"] == 1:
                    yield msg["d"]
                    await stream.consumed(1, len(msg["d"]))
                elif msg["t"] == "eof":
                    await _final(stream, path)
                    return
                elif msg["t"] == "error":
                    raise guest_error(msg, path)
        finally:
            stream.close()

    async def read(self, path: str) -> bytes:
        return b"".join([chunk async for chunk in self.iter_read(path)])

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def write(self, path: str, data, *, mode: int | None = None,
                    append: bool = False) -> int:
        """Write str, bytes, a binary file-like object, or an (async) iterator of bytes to
        the guest file, creating parent directories. Returns the bytes written."""
        path = guest_path(path)
        stream = self._channel().open_stream()
        try:
            await stream.send("write", path=path, mode=mode, append=append, parents=True)
            sender = asyncio.create_task(_send_all(stream, data))
            # The guest may refuse at open (or fail midway); its answer wins over sending.
            answer = asyncio.create_task(_final(stream, path))
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
            await stream.send("eof", fd=0)
            result = await answer
            size = result.get("size", 0) if isinstance(result, dict) else 0
            if isinstance(size, bool) or not isinstance(size, int):
                raise ProtocolError(f"guest answered a write of {path} with size {size!r}")
            return size
        finally:
            stream.close()

    # ---- host <-> guest ------------------------------------------------------------------

    async def upload(self, host_path: str | os.PathLike, path: str) -> None:
        """Copy a host file or directory tree to `path` in the guest."""
        src = Path(host_path)
        dest = guest_path(path)
        if not src.exists():
            raise ShuruError(f"upload: {src}: no such file or directory on the host")
        if src.is_dir():
            await self.mkdir(dest)
            for root, dirs, files in os.walk(src):
                rel = Path(root).relative_to(src)
                base = dest.rstrip("/") + ("" if str(rel) == "." else "/" + rel.as_posix())
                for d in sorted(dirs):
                    await self.mkdir(f"{base}/{d}")
                for f in sorted(files):
                    await self._upload_file(Path(root) / f, f"{base}/{f}")
        else:
            await self._upload_file(src, dest)

    async def _upload_file(self, src: Path, dest: str) -> None:
        with open(src, "rb") as f:
            await self.write(dest, f, mode=src.stat().st_mode & 0o7777)

    async def download(self, path: str, host_path: str | os.PathLike) -> None:
        """Copy a guest file or directory tree to `host_path`. Guest names are checked so a
        hostile guest cannot write outside `host_path`."""
        src = guest_path(path)
        dest = Path(host_path)
        info = await self.stat(src)
        if not info.is_dir:
            await self._download_file(src, dest)
            return
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for entry in await self._call("walk", src):
            entry = _info(entry)
            rel = entry.path[len(src.rstrip("/")) + 1:] if entry.path.startswith(src) else None
            target = (root / rel).resolve() if rel else None
            if target is None or (target != root and root not in target.parents):
                raise ProtocolError(f"guest listed {entry.path!r} outside {src!r}")
            if entry.is_dir:
                target.mkdir(parents=True, exist_ok=True)
            elif entry.is_file:
                await self._download_file(entry.path, target)

    async def _download_file(self, src: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.shuru-part")
        try:
            with open(tmp, "wb") as f:
                async for chunk in self.iter_read(src):
                    f.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


async def _final(stream: Stream, path: str) -> object:
    """Wait for the stream's closing `result` (or `error`) and return its value."""
    while True:
        msg = await stream.recv()
        if msg["t"] == "result":
            return msg.get("value")
        if msg["t"] == "error":
            raise guest_error(msg, path)


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
                if msg["t"] == "event" and not self._stopped:
                    event = WatchEvent(msg["kind"], msg["path"], msg.get("dest"),
                                       bool(msg.get("is_dir", False)))
                    try:
                        result = self._callback(event)
                        if inspect.isawaitable(result):
                            await result
                    except Exception as e:
                        self.error, self._callback_failed = e, True
                        break
                elif msg["t"] == "result":
                    return
                elif msg["t"] == "error":
                    self.error = guest_error(msg, self.path)
                    return
        except ShuruError as e:  # the channel failed or the guest broke the protocol
            self.error = e
            return
        finally:
            if not self._callback_failed:
                self._stream.close()
        # The callback failed: the guest stops watching, what it still sends is dropped.
        self._stream.discard()
        with contextlib.suppress(ShuruError):
            await self._stream.send("cancel")
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
                await self._stream.send("cancel")
            return
        if not self._task.done():
            try:
                await self._stream.send("cancel")
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
                      recursive: bool = True) -> Watch:
    path = guest_path(path)
    stream = channel.open_stream()
    await stream.send("watch", path=path, recursive=recursive)
    try:
        await _final(stream, path)  # the watch is in place once this returns
    except BaseException:
        stream.close()
        raise
    return Watch(stream, path, callback)
