"""The supervisor of a detached sandbox: the process that owns its VM instead of the caller.

`AsyncSandbox.start(detach=True)` (through `shuru.named.remote.spawn`) runs
`python -m shuru.named.supervisor READY_FD` in a session of its own, with the sandbox's spec as
JSON on stdin; it forks once more so that nobody has to wait for it (no zombie in the
creator), takes the name in the registry (`shuru.named.registry`), starts an ordinary
`AsyncSandbox` (so QEMU dies with the supervisor through PDEATHSIG, as it dies with any
owner), listens on the slot's socket, and writes one JSON line on READY_FD: the sandbox's
info, or the error that stopped it.

Each client connection starts with the peer's uid checked (SO_PEERCRED: only the user who
owns the supervisor; the socket also lives in the user's 0700 runtime directory) and one JSON
request line. Most requests get one JSON answer line (`stop`, `pause`, `resume`, `metrics`,
`set_timeout`, `checkpoint`, `expose`, `unexpose`, `network_log`, `console_tail`, `info`).
`attach` turns the connection into an agent channel: the supervisor says hello as the guest
did and then relays frames both ways (`Relay`), giving each client's streams fresh ids on the
VM's channel, so several clients share one sandbox and each has the whole API. The guest is
as untrusted here as anywhere: every guest frame is checked by the VM's `Channel`, a stream's
window is enforced on the way through, and a client that stops reading is cut off rather
than buffered without bound.

Lifetimes are the supervisor's, kept with or without a client: `lifetime` (seconds from the
start, movable with `set_timeout`) and `idle_timeout` (seconds without a relayed frame while
no relayed stream is open; a paused sandbox is never idle).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback

from shuru_guest import wire

from .. import agent_client as agent, errors
from . import registry
from .. import config as cfg
from ..channel import GUEST_FDS, Channel, Stream
from ..errors import ProtocolError, ShuruError

# Per-client cap on what waits to be written to it: a client that stops reading its socket
# is cut off before this much piles up in the supervisor.
MAX_CLIENT_BACKLOG = 8 * 1024 * 1024
MAX_REQUEST_LINE = 64 * 1024
# The requests a client may open a stream with (mounts and network belong to the sandbox).
OPENERS = ("exec", "read", "write", "fs", "watch", "tcp_connect")
# The guest message that ends a relayed stream, by the request that opened it.
_ENDS = {"tcp_connect": ("close", "error")}
_DEFAULT_ENDS = ("exit", "result", "error")
# Requests that only look: they do not count as activity for idle_timeout.
QUERIES = ("info", "metrics", "ports", "network_log", "console_tail")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def refusal(peer: int, owner: int) -> str | None:
    """Why a peer with uid `peer` may not use a sandbox owned by uid `owner`; None if it may."""
    if peer == owner:
        return None
    return (f"permission denied: this sandbox belongs to uid {owner}, and you are uid {peer}; "
            "only the user who started a sandbox can use it")


def error_reply(e: BaseException) -> dict:
    if isinstance(e, ShuruError):
        return {"ok": False, "kind": type(e).__name__, "error": e.message, "hint": e.hint}
    return {"ok": False, "kind": "ShuruError", "error": f"{type(e).__name__}: {e}"}


def config_to_json(config: cfg.SandboxConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_json(data: dict) -> cfg.SandboxConfig:
    fields = {f.name for f in dataclasses.fields(cfg.SandboxConfig)}
    values = {k: v for k, v in data.items() if k in fields}
    for name in ("command", "ports", "mounts"):
        if name in values:
            values[name] = tuple(values[name])
    return cfg.SandboxConfig(**values)


class RelayStream(Stream):
    """One client stream on the VM's channel: what the guest sends goes to the client under
    the client's own id. Data still counts against the window the client granted (its credit
    frames pass through `credited`), so a guest that ignores it is cut off here too."""

    def __init__(self, channel: Channel, stream_id: int, relay: "Relay", client_id: int,
                 kind: str):
        super().__init__(channel, stream_id)
        self.relay = relay
        self.client_id = client_id
        self.kind = kind
        self.orphaned = False  # the client left: drop, grant credit, wait for the end

    def credited(self, fd: int, n: int) -> None:
        self.inflow(fd).granted(n)

    def _deliver(self, msg: dict) -> None:
        t = msg["t"]
        self._count_guest_data(msg)  # the window the client granted, checked as Stream does
        if t == "data" and self.orphaned:
            self._grant_now(msg["fd"])
        if not self.orphaned:
            self.relay.to_client(dict(msg, s=self.client_id))
        if t in _ENDS.get(self.kind, _DEFAULT_ENDS):
            self.end()

    def end(self) -> None:
        self.close()
        self.relay.streams.pop(self.client_id, None)
        self.relay.supervisor.touch()

    def _wake(self) -> None:
        super()._wake()
        self.relay.drop()  # the VM's channel failed: the client's ends with it


class Relay:
    """One attached client: frames from it go to the VM under ids of the VM channel's own,
    frames from the guest come back under the client's."""

    def __init__(self, supervisor: "Supervisor", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.supervisor = supervisor
        self.reader = reader
        self.writer = writer
        self.streams: dict[int, RelayStream] = {}
        self._parts: dict[int, bytearray] = {}
        self._gone = False

    def to_client(self, msg: dict) -> None:
        if self._gone or self.writer.is_closing():
            return
        try:
            frame = wire.encode(msg)
        except wire.WireError:  # a guest frame at the size limit, grown by its new id
            self.drop()
            return
        self.writer.write(frame)
        if self.writer.transport.get_write_buffer_size() > MAX_CLIENT_BACKLOG:
            self.drop()

    def drop(self) -> None:
        if not self._gone:
            self._gone = True
            self.writer.transport.abort()

    async def run(self, hello: dict) -> None:
        self.writer.write(wire.encode(dict(hello, t="hello", s=wire.CONTROL)))
        decoder = wire.FrameDecoder()
        try:
            while not self._gone:
                data = await self.reader.read(256 * 1024)
                if not data:
                    break
                for msg in decoder.feed(data):
                    await self._forward(msg)
        except (wire.WireError, ConnectionError, OSError, ProtocolError, errors.SandboxDiedError):
            pass
        finally:
            self.drop()
            await self._orphan_all()

    async def _forward(self, msg: dict) -> None:
        s, t = msg["s"], msg["t"]
        if s == wire.CONTROL:
            if t == "ping":
                self.to_client({**agent.pong(msg["id"]), "s": wire.CONTROL})
            return  # hello; shutdown and park belong to the supervisor, never a client
        if s % 2 == 0:
            return  # even ids are the guest's
        if t == "part":
            buf = self._parts.setdefault(s, bytearray())
            buf += msg["d"]
            if len(buf) > wire.MAX_REQUEST:
                raise wire.WireError(f"request on stream {s} exceeds {wire.MAX_REQUEST} bytes")
            if msg["more"]:
                return
            msg = wire.decode_request(bytes(self._parts.pop(s)))
            t = msg["t"]
            if msg["s"] != s:
                raise wire.WireError("a joined request names another stream")
        stream = self.streams.get(s)
        if stream is None:
            if t not in OPENERS:
                return  # late: the stream already ended
            channel = self.supervisor.channel
            stream = channel.open_stream(
                lambda ch, sid: RelayStream(ch, sid, self, s, t))
            self.streams[s] = stream
        if t == "credit" and msg["fd"] in GUEST_FDS:
            stream.credited(msg["fd"], msg["n"])
        self.supervisor.touch()
        fields = {k: v for k, v in msg.items() if k not in ("t", "s")}
        await stream.send(t, **fields)
        if t == "close" and stream.kind == "tcp_connect":
            stream.end()

    async def _orphan_all(self) -> None:
        """The client left: end what it started (kill its processes, cancel its watches and
        transfers, close its connections) and drop what still comes."""
        for stream in list(self.streams.values()):
            stream.orphaned = True
            stream.inbox.clear()
            for fd in GUEST_FDS:
                with contextlib.suppress(ShuruError):
                    stream._grant_now(fd)
            with contextlib.suppress(ShuruError):
                if stream.kind == "exec":
                    await stream.send_msg(agent.signal(signal.SIGKILL, group=True))
                elif stream.kind == "tcp_connect":
                    await stream.send_msg(agent.close())
                    stream.end()
                else:
                    await stream.send_msg(agent.cancel())
        self.supervisor.touch()


class Supervisor:
    def __init__(self, sandbox, claim: registry.Claim, spec: dict):
        self.sandbox = sandbox
        self.claim = claim
        self.name = claim.slot.name
        self.spec = spec
        self.started = time.time()
        self.lifetime: float | None = spec.get("lifetime")
        self.deadline = self.started + self.lifetime if self.lifetime else None
        self.idle_timeout: float | None = spec.get("idle_timeout")
        self.last_activity = time.monotonic()
        self.relays: set[Relay] = set()
        self.requests: set[asyncio.Task] = set()  # requests being answered (not attaches)
        self.done = asyncio.Event()
        self.reason = ""
        self.id = os.urandom(6).hex()
        self.paused = False

    @property
    def channel(self) -> Channel:
        # Not `_live_channel()`: a paused VM's channel still takes frames (they wait).
        channel = self.sandbox._channel
        channel.check_open()
        return channel

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def busy(self) -> bool:
        return any(relay.streams for relay in self.relays)

    # ---- the record and the info a client gets ----------------------------------------

    def record(self) -> dict:
        c = self.sandbox.config
        return {
            "name": self.name, "id": self.id, "state": "paused" if self.paused else "running",
            "started": self.started, "from": c.from_, "cpus": c.cpus, "memory": c.memory,
            "ports": [f"{f.host}:{f.host_port}->{f.guest_port}" for f in self.sandbox.ports],
            "owner_pid": self.spec.get("owner_pid"), "supervisor_pid": os.getpid(),
            "detached": not self.spec.get("bound_to_owner"),
            "qemu_pid": self.sandbox._machine.pid if self.sandbox._machine else None,
            "lifetime": self.lifetime, "deadline": self.deadline,
            "idle_timeout": self.idle_timeout, "accel": self.sandbox.accel,
        }

    def save_record(self) -> None:
        self.claim.slot.write(self.record())

    def info(self) -> dict:
        sb = self.sandbox
        return dict(self.record(), config=config_to_json(sb.config),
                    guest_env=sb._net.guest_env if sb._net else {},
                    restored=sb.restored)

    # ---- lifetimes ----------------------------------------------------------------------

    async def watch_lifetimes(self) -> None:
        while not self.done.is_set():
            now = time.time()
            if self.deadline is not None and now >= self.deadline:
                return self.finish("its lifetime ended")
            idle = time.monotonic() - self.last_activity
            if (self.idle_timeout is not None and not self.paused and not self.busy()
                    and idle >= self.idle_timeout):
                return self.finish(f"it was idle for {self.idle_timeout:g} s")
            await asyncio.sleep(0.2)

    def set_timeout(self, lifetime: float | None, idle_timeout: float | None) -> dict:
        if lifetime is not None:
            self.lifetime = time.time() - self.started + lifetime
            self.deadline = time.time() + lifetime
        if idle_timeout is not None:
            self.idle_timeout = idle_timeout
            self.touch()
        self.save_record()
        return {"deadline": self.deadline, "idle_timeout": self.idle_timeout}

    def finish(self, reason: str) -> None:
        if not self.done.is_set():
            self.reason = reason
            print(f"shuru supervisor: stopping {self.name}: {reason}", file=sys.stderr,
                  flush=True)
            self.done.set()

    # ---- clients ------------------------------------------------------------------------

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            # The request is read before the peer is refused, so that the refusal is what
            # the peer reads, not a broken pipe under its request.
            line = await asyncio.wait_for(reader.readline(), 30)
            problem = refusal(peer_uid(writer.get_extra_info("socket")), os.getuid())
            if problem:
                await self._answer(writer, {"ok": False, "kind": "AccessError", "error": problem})
                return
            try:
                request = json.loads(line)
                op = request["op"]
            except (ValueError, KeyError, TypeError):
                await self._answer(writer, {"ok": False, "kind": "ProtocolError",
                                            "error": "bad request to the supervisor"})
                return
            if op == "attach":
                await self._attach(reader, writer)
                return
            # The sandbox is not torn down under a request in flight (a checkpoint stops
            # the VM itself, which ends the supervisor, and still owes its answer).
            self.requests.add(asyncio.current_task())
            try:
                value = await self.handle(op, request)
                reply = {"ok": True, "value": value}
            except Exception as e:  # every failure goes back to the client, named
                reply = error_reply(e)
            await self._answer(writer, reply)
        except (ConnectionError, OSError, asyncio.TimeoutError, ValueError):
            pass
        finally:
            self.requests.discard(asyncio.current_task())
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, reply: dict) -> None:
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()

    async def _attach(self, reader, writer) -> None:
        await self._answer(writer, {"ok": True, "value": self.info()})
        relay = Relay(self, reader, writer)
        self.relays.add(relay)
        self.touch()
        try:
            hello = {k: v for k, v in self.sandbox._channel.guest_hello.items()
                     if k not in ("t", "s")}
            await relay.run(hello)
        finally:
            self.relays.discard(relay)

    async def handle(self, op: str, request: dict):
        sb = self.sandbox
        if op not in QUERIES:
            self.touch()
        if op == "info":
            return self.info()
        if op == "stop":
            self.finish("a client stopped it")
            return None
        if op == "pause":
            await sb.pause()
            self.paused = True
            self.save_record()
            return None
        if op == "resume":
            await sb.resume()
            self.paused = False
            self.touch()
            self.save_record()
            return None
        if op == "metrics":
            return await sb.metrics()
        if op == "set_timeout":
            lifetime, idle = request.get("lifetime"), request.get("idle_timeout")
            for label, value in (("lifetime", lifetime), ("idle_timeout", idle)):
                if value is not None and (isinstance(value, bool)
                                          or not isinstance(value, (int, float)) or value <= 0):
                    raise cfg.ConfigError([f"{label} must be a positive number of seconds, "
                                           f"got {value!r}"])
            return self.set_timeout(lifetime, idle)
        if op == "checkpoint":
            for relay in list(self.relays):
                relay.drop()
            cp = await sb.checkpoint(request["name"], overwrite=bool(request.get("overwrite")))
            self.finish(f"it was saved as checkpoint {cp.name}")
            return cp.name
        if op == "expose":
            addr = await sb.expose(request["guest_port"], request.get("host_port"))
            self.save_record()
            return list(addr)
        if op == "unexpose":
            await sb.unexpose(request["guest_port"], request.get("host_port"))
            self.save_record()
            return None
        if op == "ports":
            return [list(f) for f in sb.ports]
        if op == "network_log":
            return sb.network_log()
        if op == "console_tail":
            return sb.console_tail(int(request.get("lines", 40)))
        raise errors.ProtocolError(f"unknown request {op!r} to the supervisor")


async def serve(spec: dict, ready_fd: int) -> int:
    from ..sandbox import AsyncSandbox

    def report(message: dict) -> None:
        nonlocal ready_fd
        if ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(ready_fd, json.dumps(message).encode() + b"\n")
            os.close(ready_fd)
            ready_fd = -1

    claim = None
    sandbox = None
    server = None

    async def clean_up() -> None:
        nonlocal claim, sandbox, server
        if server is not None:
            server.close()
            server = None
        if sandbox is not None:
            with contextlib.suppress(Exception):
                await sandbox.stop()
            sandbox = None
        if claim is not None:
            claim.release()
            claim = None

    owner = None
    try:
        if spec.get("bound_to_owner"):
            # Opened before the boot, so an owner that dies meanwhile is still seen (a pidfd
            # stays readable once its process has ended) and a reused pid never fools it.
            owner = owner_pidfd(spec.get("owner_pid"))
        claim = registry.claim(spec["name"])
        sandbox = AsyncSandbox(config_from_json(spec["config"]))
        await sandbox._boot()
        sup = Supervisor(sandbox, claim, spec)
        server = await asyncio.start_unix_server(sup.on_client, path=str(claim.slot.sock),
                                                 limit=MAX_REQUEST_LINE)
        os.chmod(claim.slot.sock, 0o600)
        sup.save_record()
        sandbox._machine.exited.add_done_callback(lambda _f: sup.finish("its VM exited"))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, sup.finish, "it got SIGTERM")
        if owner is not None:
            loop.add_reader(owner, sup.finish, "its owner exited")
        watcher = asyncio.create_task(sup.watch_lifetimes())
        report({"ok": True, "value": sup.info()})
        await sup.done.wait()
        watcher.cancel()
        server.close()
        for relay in list(sup.relays):
            relay.drop()
        if sup.requests:
            await asyncio.wait(set(sup.requests), timeout=120)
        return 0
    except BaseException as e:
        traceback.print_exc()
        # Clean up first: once the creator hears of the failure, the name must be free.
        await clean_up()
        report(error_reply(e))
        if not isinstance(e, Exception):
            raise
        return 1
    finally:
        await clean_up()
        if owner is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(owner)
            os.close(owner)


def owner_pidfd(pid: object) -> int:
    """A pidfd for the process a bound sandbox belongs to (readable once it has ended);
    ShuruError when there is no such process any more."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise errors.ShuruError(f"a bound sandbox needs its owner's pid, got {pid!r}")
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        raise errors.ShuruError(f"the process that started this sandbox ({pid}) has ended") \
            from None
    except OSError as e:
        raise errors.HostError(f"cannot watch process {pid}: {e.strerror}") from None


def main(argv: list[str]) -> int:
    ready_fd = int(argv[0])
    spec = json.loads(sys.stdin.read())
    # Fork once more: the process the creator started exits at once (the creator reaps it),
    # and the one that lives on has no parent waiting on it.
    if os.fork() > 0:
        os.close(ready_fd)
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return asyncio.run(serve(spec, ready_fd))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
