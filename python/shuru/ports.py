"""Port forwarding: TCP connections from the host to servers inside a sandbox.

Owns the `ports` specs (`"HOST:GUEST"`, or `"GUEST"` for a free host port; the pure parsing
that the config, the `-p` flag and the SDK share), the host listeners on 127.0.0.1, and the
relay between a host socket and a `tcp_connect` stream over the agent channel (see
`protocol/PROTOCOL.md`). No network device is involved: a forward works with networking off
and on restored sandboxes, and the guest's loopback is only reachable this way.

Listeners for the configured ports are bound before the VM starts, so a host port in use is
a ConfigError at once, not after a boot; connections they accept wait for the channel. Every
buffer is bounded: the stream's credit on the channel, asyncio's flow control on the host
socket. Stopping the sandbox closes every listener and connection (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
from typing import Any, NamedTuple

from shuru_guest import wire

from . import agent_client as agent
from .channel import Channel, GuestStream, Stream
from .errors import ConfigError, PortError, ProtocolError, SandboxDiedError

HOST = "127.0.0.1"  # forwards listen on the host's loopback only: never on other interfaces


class Address(NamedTuple):
    """A host address a forward listens on; `str()` gives `127.0.0.1:PORT`."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Forward(NamedTuple):
    """One listening forward: host address → guest port."""

    host: str
    host_port: int
    guest_port: int

    @property
    def address(self) -> Address:
        return Address(self.host, self.host_port)


# ---- specs (pure) ---------------------------------------------------------------------------


def parse_spec(value: Any) -> tuple[int | None, int]:
    """`"HOST:GUEST"`, `"GUEST"` or an int GUEST as (host_port or None, guest_port);
    ValueError saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError("expected HOST:GUEST or GUEST port numbers")
    if isinstance(value, int):
        return None, _port(value, "guest port")
    if not isinstance(value, str):
        raise ValueError(f"expected a string HOST:GUEST or a port number, got a "
                         f"{type(value).__name__}")
    parts = value.strip().split(":")
    if len(parts) == 1:
        return None, _port(_int(parts[0]), "guest port")
    if len(parts) == 2:
        return _port(_int(parts[0]), "host port"), _port(_int(parts[1]), "guest port")
    raise ValueError("expected HOST:GUEST (two port numbers) or GUEST")


def _int(text: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a port number")
    return int(text)


def _port(n: int, what: str) -> int:
    if not 0 < n < 65536:
        raise ValueError(f"{what} {n} is outside 1-65535")
    return n


def spec_text(host_port: int | None, guest_port: int) -> str:
    return f"{host_port}:{guest_port}" if host_port else str(guest_port)


def spec_problems(label: str, value: Any) -> list[str]:
    """Problems with a list of specs, each naming `label` (a field or a flag)."""
    if isinstance(value, (str, int)) or not isinstance(value, (list, tuple)):
        return [f"{label} must be a list of \"HOST:GUEST\" strings (or GUEST ports), "
                f"got {_show(value)}"]
    problems, seen = [], {}
    for i, item in enumerate(value):
        try:
            host_port, _ = parse_spec(item)
        except ValueError as e:
            problems.append(f"{label}[{i}] {_show(item)}: {e}")
            continue
        if host_port is not None:
            if host_port in seen:
                problems.append(f"{label}[{i}] {_show(item)}: host port {host_port} is "
                                f"already forwarded by {_show(seen[host_port])}")
            seen[host_port] = item
    return problems


def normalize(value: Any) -> tuple[str, ...]:
    """Valid specs in one spelling (`"8080:8000"`, `"8000"`)."""
    return tuple(spec_text(*parse_spec(item)) for item in value)


def parse_flags(values: list[str], flag: str = "-p") -> tuple[str, ...]:
    """`-p` values from the command line, every malformed one reported with the flag."""
    problems, seen = [], {}
    for text in values:
        try:
            host_port, _ = parse_spec(text)
        except ValueError as e:
            problems.append(f"{flag} {text}: {e}")
            continue
        if host_port is not None and host_port in seen:
            problems.append(f"{flag} {text}: host port {host_port} is already forwarded by "
                            f"{flag} {seen[host_port]}")
        seen.setdefault(host_port, text)
    if problems:
        raise ConfigError(problems)
    return normalize(values)


def relabel(error: ConfigError, flag: str = "-p") -> ConfigError:
    """A ports problem found at start (a host port in use) as the command line said it."""
    return ConfigError([flag + p[len("ports"):] if p.startswith("ports") else p
                        for p in error.problems], source=error.source)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int)) else f"a {type(value).__name__}"


# ---- the stream -----------------------------------------------------------------------------


class PortStream(GuestStream):
    """A `tcp_connect` stream: the same byte relay as a guest-opened connection (fd 0 to the
    guest server, fd 1 from it), opened by the host. `answered` is set by the guest's
    `result` (connected) or `error` (nothing listens), or when the channel goes away. Any
    other answer is nonsense: the stream ends at once (the guest is told `close`) and `bad`
    holds the ProtocolError; the channel goes on."""

    def __init__(self, channel: Channel, stream_id: int):
        super().__init__(channel, stream_id, {"t": "tcp_connect"})
        self.answered = asyncio.Event()
        self.connected = False
        self.refusal: dict | None = None
        self.bad: ProtocolError | None = None

    def _deliver(self, msg: dict) -> None:
        if self.bad is not None:
            return
        try:
            answer = agent.parse_tcp_answer(msg)
        except ProtocolError as e:
            self.bad, self.reset = e, True
            self.answered.set()
            self._readable.set()
            self.outflow.changed.set()
            self.channel.send_nowait(self.id, agent.close())
            return
        if answer is True:
            self.connected = True
            self.answered.set()
            return
        if answer is False:
            self.refusal = msg
            self.answered.set()
        super()._deliver(msg)

    def _wake(self) -> None:
        super()._wake()
        self.answered.set()

    def close(self) -> None:
        Stream.close(self)  # host-opened: not counted against the guest's stream limit


async def open_stream(channel: Channel, guest_port: int) -> PortStream:
    """Ask the agent to connect to `guest_port`; returns at once (bytes may follow before
    the answer: the guest holds them, within credit, until it is connected)."""
    stream = channel.open_stream(PortStream)
    try:
        await stream.send_msg(agent.tcp_connect(guest_port))
    except BaseException:
        stream.close()
        raise
    return stream


async def relay(stream: PortStream, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """Move bytes between a host socket and a stream until both sides are done or either
    resets; half-closes are passed on. Always ends the stream and closes the socket."""

    async def up() -> None:  # host client -> guest server
        while data := await reader.read(wire.CHUNK):
            await stream.write(data)
        await stream.write_eof()

    async def down() -> None:  # guest server -> host client
        while data := await stream.read():
            writer.write(data)
            await writer.drain()
        if not stream.eof or stream.reset or not writer.can_write_eof():
            raise ConnectionResetError("the guest reset the connection")
        writer.write_eof()

    up_task = asyncio.create_task(up())
    down_task = asyncio.create_task(down())
    clean = False
    try:
        _, pending = await asyncio.wait({up_task, down_task},
                                        return_when=asyncio.FIRST_COMPLETED)
        # A side that failed (or a guest reset) ends both at once. One that ended cleanly
        # leaves the other running: a half-close, as TCP has it.
        if not any(_failed(t) for t in (up_task, down_task) if t.done()):
            if pending:
                await asyncio.wait(pending)
            clean = not _failed(up_task) and not _failed(down_task)
    finally:
        for task in (up_task, down_task):
            task.cancel()
        for task in (up_task, down_task):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await stream.finish()  # `close`: graceful after our eof, a reset before it
        if not clean:
            _abort(writer)
        with contextlib.suppress(Exception):
            writer.close()
            await writer.wait_closed()


def _failed(task: asyncio.Task) -> bool:
    return task.cancelled() or task.exception() is not None


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close the host socket with a reset, so its client learns at once."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ---- the forwards of one sandbox ------------------------------------------------------------


class PortForwards:
    """The listeners and connections of one sandbox. Bind first (before boot), `attach`
    the channel once the agent answers, `close` when the sandbox stops."""

    def __init__(self):
        self._channel: Channel | None = None
        self._ready = asyncio.Event()
        self._servers: dict[int, tuple[Forward, asyncio.AbstractServer]] = {}  # by host port
        self._tasks: dict[asyncio.Task, int] = {}  # connection task -> its host port (0: none)
        self._closed = False

    @property
    def forwards(self) -> list[Forward]:
        return [fwd for fwd, _ in self._servers.values()]

    async def bind_all(self, specs: tuple[str, ...]) -> None:
        """The configured forwards; a host port in use is a ConfigError naming the entry."""
        for text in specs:
            host_port, guest_port = parse_spec(text)
            try:
                await self.expose(guest_port, host_port)
            except PortError as e:
                raise ConfigError([f"ports {text!r}: {e.message}"]) from None

    def attach(self, channel: Channel) -> None:
        self._channel = channel
        self._ready.set()

    async def expose(self, guest_port: int, host_port: int | None = None) -> Address:
        _check_port(guest_port, "guest_port")
        if host_port is not None:
            _check_port(host_port, "host_port")
            if host_port in self._servers:
                raise PortError(f"host port {host_port} already forwards to guest port "
                                f"{self._servers[host_port][0].guest_port}", port=host_port)

        async def accepted(reader, writer) -> None:
            task = asyncio.current_task()
            self._tasks[task] = bound
            try:
                await self._serve(guest_port, reader, writer)
            finally:
                self._tasks.pop(task, None)

        sock = _listen(host_port)
        bound = sock.getsockname()[1]
        server = await asyncio.start_server(accepted, sock=sock, limit=wire.CHUNK)
        self._servers[bound] = (Forward(HOST, bound, guest_port), server)
        return Address(HOST, bound)

    async def unexpose(self, guest_port: int, host_port: int | None = None) -> None:
        """Close the listeners forwarding to `guest_port` (only the one on `host_port` if
        given) and the connections they accepted."""
        ports = [hp for hp, (fwd, _) in self._servers.items()
                 if fwd.guest_port == guest_port and host_port in (None, hp)]
        if not ports:
            where = f" from host port {host_port}" if host_port else ""
            raise PortError(f"guest port {guest_port} is not exposed{where}", port=guest_port)
        for hp in ports:
            await self._close_listener(hp)

    async def connect(self, guest_port: int) -> socket.socket:
        """One connection to `guest_port`, as the user's end of a socketpair whose other end
        is relayed; PortError if nothing listens there."""
        _check_port(guest_port, "guest_port")
        channel = self._channel
        assert channel is not None
        stream = await open_stream(channel, guest_port)
        await stream.answered.wait()
        if not stream.connected:
            stream.close()
            if stream.bad is not None:
                raise stream.bad
            if stream.refusal is None:
                channel.check_open()
                raise SandboxDiedError("the sandbox's agent channel closed")
            raise _refused(guest_port, stream.refusal)
        mine, theirs = socket.socketpair()
        try:
            reader, writer = await asyncio.open_connection(sock=theirs, limit=wire.CHUNK)
        except BaseException:
            mine.close()
            theirs.close()
            await stream.finish()
            raise
        task = asyncio.create_task(relay(stream, reader, writer))
        self._tasks[task] = 0
        task.add_done_callback(lambda t: self._tasks.pop(t, None))
        return mine

    async def _serve(self, guest_port: int, reader, writer) -> None:
        try:
            await self._ready.wait()
            if self._closed or self._channel is None or not self._channel.is_open:
                _abort(writer)
                return
            stream = await open_stream(self._channel, guest_port)
        except (SandboxDiedError, ProtocolError):
            _abort(writer)
            return
        await relay(stream, reader, writer)

    async def _close_listener(self, host_port: int) -> None:
        _, server = self._servers.pop(host_port)
        server.close()
        tasks = [t for t, hp in self._tasks.items() if hp == host_port]
        await _cancel(tasks)
        with contextlib.suppress(Exception):
            await server.wait_closed()

    async def close(self) -> None:
        self._closed = True
        self._ready.set()  # connections waiting for a channel that never came end now
        for host_port in list(self._servers):
            await self._close_listener(host_port)
        await _cancel(list(self._tasks))


def _listen(host_port: int | None) -> socket.socket:
    """A listening socket on HOST (bound here, so its port is known before any accept)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Not SO_REUSEADDR's Windows meaning: on Linux it only allows a port whose last
        # connections are in TIME_WAIT, never one another program listens on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, host_port or 0))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortError(f"host port {host_port} is already in use on {HOST}",
                            port=host_port,
                            hint="pick another host port, or none for a free one") from None
        raise PortError(f"cannot listen on {HOST}:{host_port or 0}: {e.strerror or e}",
                        port=host_port) from None
    return sock


async def _cancel(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


def _check_port(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise PortError(f"{name} must be a port number (1-65535), got {value!r}", port=None)


def _refused(guest_port: int, reply: dict) -> PortError:
    code = reply.get("code")
    if code == "ECONNREFUSED":
        message = f"nothing listens on port {guest_port} in the sandbox (127.0.0.1 or ::1)"
    else:
        message = f"cannot connect to port {guest_port} in the sandbox: {reply.get('message')}"
    return PortError(message, port=guest_port, code=code)
