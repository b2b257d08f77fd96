"""The client half of detached sandboxes: starting a supervisor and talking to one.

`spawn` starts `shuru.named.supervisor` for a resolved config and waits for its first line (the
sandbox's info, or the error that stopped its start, raised here as the same ShuruError).
`request` sends one JSON request to a named sandbox's supervisor and returns the value of its
answer; `open_channel` asks it to `attach` and returns the info and an agent `Channel` over
the same socket, through which the SDK's exec, spawn, files and watch work unchanged. The
supervisor's socket lives in the user's private runtime directory; a missing socket is a
SandboxNotFoundError, one the kernel refuses (another user's) an AccessError.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

from .. import errors
from . import registry
from ..channel import Channel
from ..errors import AccessError, SandboxNotFoundError, ShuruError

START_TIMEOUT = float(os.environ.get("SHURU_DETACH_START_TIMEOUT", "300"))


def raise_reply(reply: object, name: str):
    """The value of a supervisor's answer, or its error raised as the class it named."""
    if not isinstance(reply, dict):
        raise errors.ProtocolError(f"sandbox {name!r}: bad answer from its supervisor")
    if reply.get("ok"):
        return reply.get("value")
    kind = getattr(errors, str(reply.get("kind")), ShuruError)
    if not (isinstance(kind, type) and issubclass(kind, ShuruError)):
        kind = ShuruError
    error = kind.__new__(kind)
    ShuruError.__init__(error, str(reply.get("error")), hint=reply.get("hint"))
    raise error


def _not_found(name: str) -> SandboxNotFoundError:
    return SandboxNotFoundError(f"no sandbox named {name!r} is running", name=name,
                                hint="`shuru ps` lists the detached sandboxes")


def _translate(name: str, e: OSError) -> ShuruError:
    if isinstance(e, PermissionError):
        return AccessError(f"permission denied on sandbox {name!r}: its socket belongs to "
                           "another user; only the user who started a sandbox can use it")
    if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
        return _not_found(name)
    return errors.SandboxDiedError(f"sandbox {name!r}: its supervisor went away ({e})")


async def _connect(name: str, request: dict):
    path = registry.slot(name).sock
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    except OSError as e:
        raise _translate(name, e) from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
    except OSError:
        pass  # refused before it read us: its answer says why
    try:
        line = await reader.readline()
    except OSError as e:
        writer.close()
        raise _translate(name, e) from None
    if not line:
        writer.close()
        raise errors.SandboxDiedError(f"sandbox {name!r}: its supervisor closed the "
                                      "connection without an answer")
    try:
        reply = json.loads(line)
    except ValueError:
        writer.close()
        raise errors.ProtocolError(f"sandbox {name!r}: bad answer from its supervisor") from None
    return reader, writer, reply


async def request(name: str, op: str, /, **args):
    reader, writer, reply = await _connect(name, {"op": op, **args})
    writer.close()
    return raise_reply(reply, name)


def request_blocking(name: str, op: str, /, **args):
    """`request` for the few sync methods (`network_log`, `console_tail`)."""
    path = registry.slot(name).sock
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            with sock.makefile("rb") as f:
                line = f.readline(64 * 1024 * 1024)
    except OSError as e:
        raise _translate(name, e) from None
    try:
        reply = json.loads(line)
    except ValueError:
        raise errors.SandboxDiedError(f"sandbox {name!r}: no answer from its supervisor") from None
    return raise_reply(reply, name)


async def open_channel(name: str) -> tuple[dict, Channel]:
    reader, writer, reply = await _connect(name, {"op": "attach"})
    try:
        info = raise_reply(reply, name)
        channel = Channel(reader, writer,
                          describe_death=lambda: f"(sandbox {name!r}: its supervisor closed "
                                                 "the connection)")
        await asyncio.wait_for(channel.handshake(), 30)
    except asyncio.TimeoutError:
        writer.close()
        raise errors.SandboxDiedError(f"sandbox {name!r}: its supervisor did not say hello") from None
    except BaseException:
        writer.close()
        raise
    return info, channel


async def spawn(spec: dict) -> dict:
    """Start a supervisor for `spec` (name, config, lifetime, idle_timeout) and wait until
    its sandbox runs; returns the sandbox's info."""
    name = spec["name"]
    s = registry.slot(name)
    if s.alive():
        raise ShuruError(f"a sandbox named {name!r} is already running",
                         hint=f"stop it first (`shuru stop {name}`) or pick another name")
    r, w = os.pipe()
    try:
        log_fd = os.open(s.log, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        os.close(r)
        os.close(w)
        raise errors.HostError(f"cannot write {s.log}: {e.strerror}") from None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shuru.named.supervisor", str(w)], stdin=subprocess.PIPE,
            stdout=log_fd, stderr=log_fd, pass_fds=(w,), start_new_session=True,
            close_fds=True)
    except OSError as e:
        os.close(r)
        raise errors.HostError(f"cannot start the supervisor: {e}") from None
    finally:
        os.close(w)
        os.close(log_fd)
    pipe = os.fdopen(r, "rb", buffering=0)
    transport = None
    try:
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        await asyncio.to_thread(proc.wait)  # the first fork returns at once
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe)
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT)
        except asyncio.TimeoutError:
            raise errors.BootError(f"the supervisor of {name!r} did not report within "
                                   f"{START_TIMEOUT:.0f} s", hint=f"see {s.log}") from None
    finally:
        if transport is not None:
            transport.close()
        else:
            pipe.close()
    if not line:
        try:
            tail = s.log.read_text(errors="replace").strip()[-2000:]
        except OSError:
            tail = ""
        raise errors.BootError(f"the supervisor of {name!r} exited during start-up",
                               hint=tail or None)
    try:
        reply = json.loads(line)
    except ValueError:
        raise errors.ProtocolError(f"bad start-up line from the supervisor: {line[:200]!r}") from None
    return raise_reply(reply, name)
