"""The host end of the agent channel: frames in and out, streams, credit.

One `Channel` per VM wraps an asyncio byte stream (the virtio-serial chardev socket, or a
socketpair to an agent subprocess). It performs the hello handshake, runs one reader task
that decodes and validates every guest frame (`shuru_guest.wire`), routes messages to
`Stream`s by id, and enforces flow control both ways: the host never sends more stdin than
the guest granted, and a guest that sends more output than the host granted is cut off as a
protocol violation. A guest is untrusted; nothing it sends may crash or exhaust the host:
data travels on fixed fds only (to the host on 1 and 2, to the guest on 0), each stream keeps
at most a window of unread bytes per fd and MAX_QUEUED other messages, and what the host
writes without waiting for the guest (`send_nowait`) is bounded by _MAX_UNREAD.

With networking on (`accept_guest_streams`), the guest may open streams of its own (even
ids): one per captured TCP connection (`connect`) or DNS query (`dns`). Those become
`GuestStream`s, at most MAX_GUEST_STREAMS at a time, whose bytes are kept in one buffer the
window bounds; without networking, or beyond the bound, the host answers `close`.

Credit is one rule, kept by `Inflow` (what the guest may still send on one fd: at most the
window beyond what the host granted back, returned in batches of a quarter window as it is
consumed) and `Outflow` (what the host may still send on fd 0), for every kind of stream.
What the messages say is `agent_client`'s; when the channel is open is `engine.RunState`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools

from shuru_guest import wire

from . import agent_client as agent
from .engine import Runstate, RunState
from .errors import ProtocolError, SandboxDiedError

_CLOSED = {"t": "_closed", "s": -1}
MAX_GUEST_STREAMS = 256
# Refusals and credit for discarded data are written without waiting for the guest to read
# them (`send_nowait`); a guest that keeps sending without reading its channel is cut off
# before this much piles up.
_MAX_UNREAD = 4 * 1024 * 1024


# Unread messages one stream may hold besides data (whose bytes the window bounds, kept per
# fd in one buffer each, so frame sizes do not matter): a run of `started` or `result`
# frames is a protocol error, a run of watch events that nobody reads becomes one `overflow`
# event, as the kernel's inotify does.
MAX_QUEUED = 4096
_OVERFLOW = {"t": "event", "kind": "overflow", "path": "", "is_dir": False, "_uncounted": True}
# The only fds that carry data from the guest on a host-opened stream: stdout and stderr (a
# file being read arrives as fd 1). Anything else is a protocol error, so no guest can make
# the host keep an entry per fd number it invents.
GUEST_FDS = (1, 2)


class _Inbox:
    """A stream's unread messages, bounded whatever the guest sends. Data waits per fd (at
    most the window each: `Stream._deliver` checks it) as chunks of at most CHUNK bytes, a
    small frame merged into the chunk before it, so a run of tiny or empty frames costs no
    more than the bytes they carry; every other message waits in a queue (at most
    MAX_QUEUED, watch events counted apart so an overflowing watch still gets its `result`)
    and remembers how much data of each fd came before it, so each fd's bytes stay in order
    and nothing overtakes the data sent before it. Between fds, the one whose unread bytes
    are oldest goes first."""

    def __init__(self, stream_id: int):
        self._id = stream_id
        self._items: collections.deque[tuple[dict, dict[int, int]]] = collections.deque()
        self._data: dict[int, collections.deque] = {}  # fd -> unread chunks
        self._got: dict[int, int] = {}  # fd -> bytes received in all
        self._taken: dict[int, int] = {}  # fd -> bytes handed out (or dropped) in all
        self._pending: list[int] = []  # fds with unread bytes, oldest first
        self._ready = asyncio.Event()
        self._counts = {"event": 0, "other": 0}

    def put_nowait(self, msg: dict) -> None:
        if msg["t"] == "data":
            fd, data = msg["fd"], msg["d"]
            if data:
                chunks = self._data.setdefault(fd, collections.deque())
                if not chunks:
                    self._pending.append(fd)
                    chunks.append(data)
                elif len(chunks[-1]) + len(data) <= wire.CHUNK:
                    if not isinstance(chunks[-1], bytearray):
                        chunks[-1] = bytearray(chunks[-1])
                    chunks[-1] += data
                else:
                    chunks.append(data)
                self._got[fd] = self._got.get(fd, 0) + len(data)
                self._ready.set()
            return
        kind = "event" if msg["t"] == "event" else "other"
        if self._counts[kind] >= MAX_QUEUED and msg is not _CLOSED:
            if kind == "other":
                raise ProtocolError(f"guest sent more than {MAX_QUEUED} unread messages on "
                                    f"stream {self._id}")
            last = self._items[-1][0] if self._items else None
            if last is None or last.get("kind") != "overflow":
                self._items.append((dict(_OVERFLOW, s=self._id), dict(self._got)))
            return
        if msg is not _CLOSED:
            self._counts[kind] += 1
        self._items.append((msg, dict(self._got)))
        self._ready.set()

    def _next(self) -> dict | None:
        marks = self._items[0][1] if self._items else None
        for fd in self._pending:
            # Data that arrived before the next message goes first.
            due = (self._got[fd] if marks is None else marks.get(fd, 0)) - self._taken.get(fd, 0)
            if due > 0:
                chunks = self._data[fd]
                data = chunks[0]
                n = min(len(data), wire.CHUNK, due)
                if n < len(data):
                    chunks[0] = data[n:]
                    data = data[:n]
                else:
                    chunks.popleft()
                self._taken[fd] = self._taken.get(fd, 0) + n
                self._pending.remove(fd)
                if chunks:
                    self._pending.append(fd)  # the rest waits its turn behind the others
                return {"t": "data", "s": self._id, "fd": fd, "d": bytes(data)}
        if not self._items:
            return None
        msg = self._items.popleft()[0]
        if msg is not _CLOSED and not msg.pop("_uncounted", False):
            self._counts["event" if msg["t"] == "event" else "other"] -= 1
        return msg

    async def get(self) -> dict:
        while (msg := self._next()) is None:
            self._ready.clear()
            await self._ready.wait()
        return msg

    def clear(self) -> None:
        """Drop everything unread."""
        for fd, chunks in self._data.items():
            self._taken[fd] = self._taken.get(fd, 0) + sum(len(c) for c in chunks)
        self._data.clear()
        self._pending.clear()
        self._items.clear()
        self._counts = {"event": 0, "other": 0}

    def qsize(self) -> int:
        """Unread messages, counting each fd's unread data as the chunks it is kept in."""
        return len(self._items) + sum(len(chunks) for chunks in self._data.values())


_MAX_CREDIT = 2**40  # what a guest's grants add up to at most: no int grows without bound


class Inflow:
    """The window for data the guest sends on one fd of one stream. The guest may have at
    most WINDOW bytes outstanding beyond what the host granted back; `receive` counts a
    frame's bytes and cuts off a guest that sends more (ProtocolError). As the consumer
    takes bytes, `consume` says how much credit to grant now: nothing until a quarter window
    is due, so a guest that sends tiny frames gets few credit frames back."""

    __slots__ = ("outstanding", "unacked")

    def __init__(self) -> None:
        self.outstanding = 0  # received and not yet granted back
        self.unacked = 0  # consumed and not yet granted back

    def receive(self, n: int, where: str) -> None:
        if self.outstanding + n > wire.WINDOW:
            raise ProtocolError(f"guest sent {self.outstanding + n} bytes on {where}, beyond "
                                f"the {wire.WINDOW}-byte window it was granted")
        self.outstanding += n

    def consume(self, n: int) -> int:
        """`n` more bytes were taken; the credit to grant now (0: not yet)."""
        self.unacked += n
        if self.unacked < wire.WINDOW // 4:
            return 0
        grant, self.unacked = self.unacked, 0
        self.outstanding -= grant
        return grant

    def consume_all(self) -> int:
        """Everything received is as good as consumed (a stream being discarded)."""
        return self.consume(self.outstanding - self.unacked)

    def granted(self, n: int) -> None:
        """Someone else granted `n` back (a relay's client, whose credit passes through)."""
        self.outstanding = max(0, self.outstanding - max(0, n))


class Outflow:
    """The credit the guest granted for data the host sends on fd 0 of one stream."""

    __slots__ = ("credit", "changed")

    def __init__(self) -> None:
        self.credit = wire.WINDOW
        self.changed = asyncio.Event()

    def grant(self, n: int) -> None:
        self.credit = min(self.credit + max(0, n), _MAX_CREDIT)
        self.changed.set()

    async def wait(self) -> None:
        self.changed.clear()
        await self.changed.wait()

    def take(self, n: int) -> int:
        """Up to `n` bytes (and a chunk) of the credit, spent."""
        n = min(n, wire.CHUNK, self.credit)
        self.credit -= n
        return n


class Stream:
    """One multiplexed conversation the host opened (an exec, a file transfer, a watch).

    What the guest sends waits in the inbox until `recv`; data on fd 1 and 2 only, never
    more per fd than the window, which the consumer reopens with `consumed`. A stream whose
    reader gives up while the guest's end still runs (a process being killed) is `discard`ed:
    it drops what arrives, keeps granting credit so the guest can finish, and ends at the
    guest's final message."""

    def __init__(self, channel: "Channel", stream_id: int):
        self.channel = channel
        self.id = stream_id
        self.inbox = _Inbox(stream_id)
        self.outflow = Outflow()  # what the host may send on fd 0
        self._inflows: dict[int, Inflow] = {}  # what the guest may send, per fd
        self.closed = False
        self.discarding = False
        self.broken = asyncio.Event()  # set when the channel failed under this stream

    async def send(self, t: str, **fields) -> None:
        await self.channel.send(t, self.id, **fields)

    async def send_msg(self, msg: dict) -> None:
        """Send a message built by `agent_client` on this stream."""
        await self.channel.send_msg(self.id, msg)

    def inflow(self, fd: int) -> Inflow:
        flow = self._inflows.get(fd)
        if flow is None:
            flow = self._inflows[fd] = Inflow()
        return flow

    async def _send_within_credit(self, data: bytes, blocked, send) -> None:
        """Send bytes on fd 0 in chunks, never beyond the credit the guest granted; while
        there is none, `blocked()` raises, or returns True to drop the rest."""
        view = memoryview(data)
        while view:
            while self.outflow.credit <= 0:
                if blocked():
                    return
                await self.outflow.wait()
            if blocked():
                return
            n = self.outflow.take(len(view))
            await send(agent.data(0, bytes(view[:n])))
            view = view[n:]

    async def send_data(self, fd: int, data: bytes) -> None:
        """Send bytes to the guest (stdin, a file being written) within its credit. Once
        the stream has ended (the process exited) the rest is dropped, as the guest drops
        what a process that closed its stdin will never read."""
        if fd != 0:
            raise ValueError(f"the host sends data on fd 0 only, not {fd}")

        def blocked() -> bool:
            self.channel.check_open()
            return self.closed

        await self._send_within_credit(data, blocked, self.send_msg)

    async def recv(self) -> dict:
        msg = await self.inbox.get()
        if msg is _CLOSED:
            self.inbox.put_nowait(_CLOSED)  # every later recv sees it too
            raise self.channel.closed_error()
        return msg

    async def consumed(self, fd: int, n: int) -> None:
        """The application took `n` bytes of `fd` off our hands: grant the guest more."""
        if self.discarding:
            return  # discard() already counted everything received as consumed
        grant = self.inflow(fd).consume(n)
        if grant and not self.closed:
            with contextlib.suppress(SandboxDiedError):
                await self.send_msg(agent.credit(fd, grant))

    def _count_guest_data(self, msg: dict) -> None:
        """The one check of what the guest sends a stream: `data` and `eof` only on stdout
        and stderr, and `data` only within the window the host granted, whose bytes are
        then counted as received. ProtocolError when the guest breaks either rule."""
        t = msg["t"]
        if t in ("data", "eof") and msg["fd"] not in GUEST_FDS:
            raise ProtocolError(f"guest sent {t} on fd {msg['fd']} of stream {self.id}: only "
                                "stdout (1) and stderr (2) carry data to the host")
        if t == "data":
            self.inflow(msg["fd"]).receive(len(msg["d"]), f"stream {self.id} fd {msg['fd']}")

    def _deliver(self, msg: dict) -> None:
        t = msg["t"]
        self._count_guest_data(msg)
        if t == "data":
            if self.discarding:
                self._grant_now(msg["fd"])
                return
        elif t == "credit":
            if msg["fd"] != 0:
                raise ProtocolError(f"guest granted credit on fd {msg['fd']} of stream "
                                    f"{self.id}: the host sends data on fd 0 only")
            self.outflow.grant(msg["n"])
            return
        elif self.discarding:
            if t in ("exit", "result", "error"):  # the guest's end is over
                self.close()
            return
        self.inbox.put_nowait(msg)

    def discard(self) -> None:
        """Nobody will read this stream again, but the guest's end goes on: drop what is
        unread and whatever still comes, granting its credit back as it arrives (so a
        process being killed can flush its pipes and exit, and the guest forget the
        stream), until the guest's final message closes the stream."""
        if self.closed or self.discarding:
            return
        self.discarding = True
        self.inbox.clear()
        try:
            for fd in GUEST_FDS:
                self._grant_now(fd)
        except ProtocolError as e:  # the guest does not read: end the channel as the reader would
            self.channel._fail(e)

    def _grant_now(self, fd: int) -> None:
        """Everything received on `fd` is as good as consumed: grant it back (in batches),
        without waiting (from the reader's own path)."""
        grant = self.inflow(fd).consume_all()
        if grant:
            self.channel.send_nowait(self.id, agent.credit(fd, grant))

    def close(self) -> None:
        self.closed = True
        self.channel.streams.pop(self.id, None)
        self.outflow.changed.set()  # a sender waiting for credit will get none now

    def _wake(self) -> None:
        """The channel failed: every waiter must see it."""
        self.inbox.put_nowait(_CLOSED)
        self.outflow.changed.set()
        self.broken.set()


class GuestStream(Stream):
    """A stream the guest opened: a captured TCP connection or one DNS query (`first` is the
    message that opened it). Bytes from the guest (fd 1) collect in one buffer that its
    window bounds; `eof` and `close` only set flags, so no run of guest frames can grow host
    memory. Bytes to the guest go on fd 0 within the credit it grants."""

    def __init__(self, channel: "Channel", stream_id: int, first: dict):
        super().__init__(channel, stream_id)
        self.first = first
        self._buf = bytearray()
        self.eof = False  # the guest program will send no more
        self.reset = False  # the guest ended the stream (`close`)
        self._eof_sent = False
        self._readable = asyncio.Event()

    def _deliver(self, msg: dict) -> None:
        t = msg["t"]
        if t in ("data", "eof", "credit") and msg["fd"] != (0 if t == "credit" else 1):
            raise ProtocolError(f"guest sent {t} on fd {msg['fd']} of connection stream "
                                f"{self.id}: its bytes go on fd 1, the host's on fd 0")
        if t == "data":
            if self.eof or self.reset:
                return
            self.inflow(1).receive(len(msg["d"]), f"stream {self.id}")
            self._buf += msg["d"]
        elif t == "eof":
            self.eof = True
        elif t in ("close", "error"):
            self.reset = True
            self.outflow.changed.set()
        elif t == "credit":
            self.outflow.grant(msg["n"])
            return
        else:
            return  # nothing else belongs on such a stream; ignore rather than trust
        self._readable.set()

    def _wake(self) -> None:
        super()._wake()
        self._readable.set()

    async def read(self) -> bytes:
        """The next bytes from the guest; b"" once it sent eof, reset, or the VM is gone."""
        while not self._buf:
            if self.eof or self.reset or self.closed or not self.channel.is_open:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self._buf)
        self._buf.clear()
        grant = self.inflow(1).consume(len(data))
        if grant and not (self.closed or self.reset):
            with contextlib.suppress(SandboxDiedError, ProtocolError):
                await self.send_msg(agent.credit(1, grant))
        return data

    def _check_writable(self) -> None:
        if self.reset or self.closed:
            raise ConnectionResetError(f"the guest closed connection stream {self.id}")
        if not self.channel.is_open:
            raise ConnectionResetError("the sandbox's agent channel is closed")

    async def write(self, data: bytes) -> None:
        """Send bytes to the guest program within the credit the guest grants."""
        await self._send_within_credit(data, self._check_writable, self._send_guarded)

    async def write_eof(self) -> None:
        if not self._eof_sent and not (self.reset or self.closed):
            self._eof_sent = True
            await self._send_guarded(agent.eof(0))

    async def _send_guarded(self, msg: dict) -> None:
        try:
            await self.send_msg(msg)
        except (SandboxDiedError, ProtocolError) as e:
            raise ConnectionResetError(str(e)) from None

    async def finish(self) -> None:
        """End the stream (idempotent): the guest closes the program's socket, gracefully
        after our eof, with a reset before it."""
        if self.closed:
            return
        self.close()
        if not self.reset:
            with contextlib.suppress(SandboxDiedError, ProtocolError):
                await self.send_msg(agent.close())

    def close(self) -> None:
        if not self.closed:
            self.channel._guest_open -= 1
        super().close()


class Channel:
    """The agent protocol's engine: one byte stream, many streams. Its run state
    (`engine.RunState`) is IDLE until `handshake`, CONNECTING during it, RUNNING once the
    reader runs, CLOSED once it failed or was closed; the control stream's acknowledgements
    (`pong`, `shutdown`, `parked`) are its pending requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 describe_death=None):
        self.reader = reader
        self.writer = writer
        self.streams: dict[int, Stream] = {}
        self._ids = itertools.count(1, 2)  # host-opened streams are odd
        self.run = RunState("the sandbox's agent channel", gone="the sandbox is gone")
        self._reader_task: asyncio.Task | None = None
        self._write_lock = asyncio.Lock()
        self._describe_death = describe_death or (lambda: "")
        self.guest_hello: dict = {}
        self._on_guest_stream = None  # set by accept_guest_streams (networking on)
        self._guest_last = 0  # highest guest stream id seen: ids are never reused
        self._guest_open = 0

    # ---- lifecycle ---------------------------------------------------------------------

    async def handshake(self, *, resume: dict | None = None) -> dict:
        """Read the guest's hello, check its version, answer with ours, start reading.
        With `resume` (an `agent_client.resume()` message), the guest is a clone restored
        from a saved state: its agent waits for that first and only then says hello."""
        self.run.require(Runstate.IDLE)
        self.run.enter(Runstate.CONNECTING)
        if resume is not None:
            await self.send_msg(wire.CONTROL, resume)
        decoder = wire.FrameDecoder()
        msgs: list[dict] = []
        while not msgs:
            msgs = await self._read_frames(
                decoder, "the guest agent closed the channel before saying hello",
                "bad hello from the guest agent")
        self.guest_hello = agent.parse_hello(msgs[0])
        await self.send_msg(wire.CONTROL, agent.hello())
        self.run.require(Runstate.CONNECTING)  # closed meanwhile: no reader to start
        self._reader_task = asyncio.create_task(self._read_loop(decoder, msgs[1:]))
        self.run.enter(Runstate.RUNNING)
        return self.guest_hello

    async def _read_loop(self, decoder: wire.FrameDecoder, backlog: list[dict]) -> None:
        try:
            for msg in backlog:
                self._route(msg)
            while True:
                for msg in await self._read_frames(decoder, "the sandbox's agent channel closed",
                                                   "bad frame from the guest agent"):
                    self._route(msg)
        except (ConnectionError, OSError) as e:
            self._fail(SandboxDiedError(f"the sandbox's agent channel broke: {e}",
                                        console_tail=self._describe_death()))
        except asyncio.CancelledError:
            self._fail(SandboxDiedError("the sandbox was stopped"))
            raise
        except Exception as e:  # ProtocolError, SandboxDiedError
            self._fail(e)

    async def _read_frames(self, decoder: wire.FrameDecoder, closed: str, bad: str) -> list[dict]:
        """The whole frames in the next read (possibly none); EOF and bad frames raise."""
        data = await self.reader.read(256 * 1024)
        if not data:
            raise SandboxDiedError(closed, console_tail=self._describe_death())
        try:
            return decoder.feed(data)
        except wire.WireError as e:
            raise ProtocolError(f"{bad}: {e}") from None

    def _route(self, msg: dict) -> None:
        s, t = msg["s"], msg["t"]
        if s == wire.CONTROL:
            fut = self.run.take(agent.ack_key(msg))  # someone waits for it; else dropped
            if fut is not None:
                fut.set_result(None)
            return
        stream = self.streams.get(s)
        if stream is not None:
            stream._deliver(msg)
        elif s % 2 == 0 and s > self._guest_last and t in ("connect", "dns"):
            self._open_guest_stream(msg)
        # anything else is late (its stream ended) or bogus: dropped

    def accept_guest_streams(self, handler) -> None:
        """From now on, streams the guest opens go to `handler(GuestStream)`, which must not
        block (it starts a task). Until this is called, every one is refused."""
        self._on_guest_stream = handler

    def _open_guest_stream(self, msg: dict) -> None:
        s = msg["s"]
        self._guest_last = s
        if self._on_guest_stream is None or self._guest_open >= MAX_GUEST_STREAMS:
            # Networking is off, or the guest has too many open: it resets the connection.
            self.send_nowait(s, agent.close())
            return
        stream = GuestStream(self, s, msg)
        self.streams[s] = stream
        self._guest_open += 1
        self._on_guest_stream(stream)

    def _fail(self, error: BaseException) -> None:
        self.run.fail(error)  # every pending acknowledgement fails with it
        for stream in list(self.streams.values()):
            stream._wake()

    def closed_error(self) -> BaseException:
        return self.run.closed_error()

    def check_open(self) -> None:
        """Raise the error that ended the channel, if it ended."""
        if not self.run.is_open:
            raise self.closed_error()

    @property
    def is_open(self) -> bool:
        return self.run.is_open

    async def close(self) -> None:
        self.run.enter(Runstate.DISCONNECTING)
        if self._reader_task:
            self._reader_task.cancel()
            with contextlib.suppress(BaseException):
                await self._reader_task
        self._fail(SandboxDiedError("the sandbox was stopped"))
        with contextlib.suppress(Exception):
            self.writer.close()

    # ---- sending -----------------------------------------------------------------------

    async def send(self, t: str, s: int, **fields) -> None:
        await self.send_msg(s, {"t": t, **fields})

    async def send_msg(self, s: int, msg: dict) -> None:
        """Send one message (built by `agent_client`) on stream `s`."""
        self.run.require(Runstate.CONNECTING, Runstate.RUNNING)
        # A request too big for one frame (a long argv) goes in parts the guest joins.
        frame = b"".join(wire.request_frames({**msg, "s": s}))
        try:
            async with self._write_lock:
                self.writer.write(frame)
                await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self._fail(SandboxDiedError(f"the sandbox's agent channel broke: {e}",
                                        console_tail=self._describe_death()))
            raise self.closed_error() from None

    def send_nowait(self, s: int, msg: dict) -> None:
        """Queue a message from the reader's own path (a refusal, credit for discarded
        data) without waiting for the guest to read it. Each is answered to something the
        guest sent, so a guest that keeps sending without reading its channel is cut off
        before this much piles up."""
        if self.writer.transport.get_write_buffer_size() > _MAX_UNREAD:
            raise ProtocolError("the guest keeps sending without reading the host's answers")
        self.writer.write(wire.encode({**msg, "s": s}))

    def open_stream(self, factory=Stream) -> Stream:
        """A new host-opened stream; `factory(channel, id)` makes it (a Stream subclass)."""
        self.run.require(Runstate.RUNNING)
        stream = factory(self, next(self._ids))
        self.streams[stream.id] = stream
        return stream

    async def _control(self, request: dict) -> None:
        """Send a control-stream request and wait for its acknowledgement."""
        ack = agent.ack_key(request)
        fut = self.run.expect(ack)
        try:
            await self.send_msg(wire.CONTROL, request)
            await fut
        finally:
            self.run.forget(ack)

    async def shutdown(self) -> None:
        """Ask the agent to sync the disks and power off; returns once it acknowledged."""
        await self._control(agent.shutdown())

    async def park(self) -> None:
        """Ask the agent to end everything and wait, idle, to be saved as a machine state;
        returns once it is parked. Nothing may be sent on this channel afterwards."""
        await self._control(agent.park())
