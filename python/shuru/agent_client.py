"""The agent protocol's vocabulary on the host: every message the host sends is built here,
and every answer it waits for is checked here (`protocol/PROTOCOL.md`).

Framing and each message type's field types are `shuru_guest.wire`'s: the channel's reader
validates every guest frame before anyone reads it. What only the context knows is checked
here: which answers an op may get (anything else is a ProtocolError naming the op, never a
silent wait or a KeyError), and the shape of each answer's `value` (an entry, a bool, a
`{size}`, a `{count}`, a mount's `{upper}`). The guest is untrusted; a request the host
builds is not, so builders only drop the fields that are not set, which keeps every frame
the golden vectors' (`protocol/vectors/agent.json`).

Builders return the message as a dict without its stream id (`Stream.send_msg` adds it);
parsers take the message as the channel delivered it. Defaults live here and nowhere else:
`HOME` (where relative guest paths start when the sandbox has no working directory), the
exec fields the guest fills in itself when absent (cwd: the user's home, env: PATH, HOME...,
user: root), and the entropy a restored clone is given (`RESUME_ENTROPY`).
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Mapping, Sequence

from shuru_guest import wire

from .errors import ExecError, ProtocolError, ShuruError, guest_file_error

# Relative guest paths' base when the sandbox has no working directory configured: the
# home of root, whom the guest runs commands as unless told otherwise.
HOME = "/root"
# Bytes of host CSPRNG output a restored clone mixes into its kernel's pool (16..512).
RESUME_ENTROPY = 64
MIN_ENTROPY, MAX_ENTROPY = 16, 512
FS_OPS = ("stat", "exists", "list", "walk", "mkdir", "remove", "rename", "copy", "chmod",
          "symlink")
LISTINGS = ("list", "walk")
WATCH_KINDS = ("create", "modify", "delete", "rename", "overflow")

Msg = dict[str, Any]


def _set(t: str, **fields: Any) -> Msg:
    """A message of type `t` with the fields that are set (None means: the guest's default)."""
    return {"t": t, **{k: v for k, v in fields.items() if v is not None}}


# ---- control stream (0) ----------------------------------------------------------------------


def hello() -> Msg:
    return {"t": "hello", "version": wire.VERSION}


def resume(entropy: bytes | None = None, time_ns: int | None = None) -> Msg:
    """What a restored clone is told first: fresh entropy from the host's CSPRNG and the
    host's wall clock, unless given (tests)."""
    entropy = secrets.token_bytes(RESUME_ENTROPY) if entropy is None else entropy
    if not MIN_ENTROPY <= len(entropy) <= MAX_ENTROPY:
        raise ValueError(f"resume entropy must be {MIN_ENTROPY} to {MAX_ENTROPY} bytes, "
                         f"got {len(entropy)}")
    return {"t": "resume", "entropy": bytes(entropy),
            "time_ns": time.time_ns() if time_ns is None else time_ns}


def ping(ping_id: int) -> Msg:
    return {"t": "ping", "id": ping_id}


def pong(ping_id: int) -> Msg:
    """The answer to `ping`: what a relay standing in for the agent (a detached sandbox's
    supervisor) replies itself."""
    return {"t": "pong", "id": ping_id}


def shutdown() -> Msg:
    return {"t": "shutdown"}


def park() -> Msg:
    return {"t": "park"}


def ack_key(msg: Msg) -> tuple:
    """What a control-stream request waits for, and what an answer on stream 0 settles:
    `pong` with the ping's id, `shutdown`, `parked`."""
    t = msg["t"]
    if t in ("ping", "pong"):
        return ("pong", msg["id"])
    return ({"park": "parked"}.get(t, t),)


def parse_hello(msg: Msg) -> Msg:
    """The guest's hello, checked: first on the channel, and our protocol version."""
    if msg["t"] != "hello":
        raise ProtocolError(f"guest agent sent {msg['t']!r} before hello")
    if msg["version"] != wire.VERSION:
        raise ProtocolError(
            f"guest agent speaks protocol version {msg['version']}, this host speaks "
            f"{wire.VERSION}: rebuild the guest image with `shuru init --force`")
    return msg


# ---- processes -------------------------------------------------------------------------------


def exec_(argv: Sequence[str], *, cwd: str | None = None, env: Mapping[str, str] | None = None,
          user: str | None = None, stdin: bool | None = None, tty: bool | None = None,
          rows: int | None = None, cols: int | None = None) -> Msg:
    """Start a process. Fields left None are the guest's defaults: cwd the user's home, the
    guest's base environment (PATH, HOME, USER, LOGNAME, LANG), user root, stdin open."""
    return _set("exec", argv=list(argv), env=None if env is None else dict(env), cwd=cwd,
                user=user, stdin=stdin, tty=tty, rows=rows, cols=cols)


def data(fd: int, d: bytes) -> Msg:
    return {"t": "data", "fd": fd, "d": d}


def eof(fd: int = 0) -> Msg:
    return {"t": "eof", "fd": fd}


def credit(fd: int, n: int) -> Msg:
    return {"t": "credit", "fd": fd, "n": n}


def signal(sig: int, group: bool = True) -> Msg:
    return {"t": "signal", "sig": int(sig), "group": bool(group)}


def resize(rows: int, cols: int) -> Msg:
    return {"t": "resize", "rows": rows, "cols": cols}


def cancel() -> Msg:
    """End a read, write, watch or listing stream (answered by `result`)."""
    return {"t": "cancel"}


def close() -> Msg:
    """End a connection or mount stream."""
    return {"t": "close"}


def parse_started(msg: Msg, argv: Sequence[str]) -> int:
    """The answer to `exec`: the pid; ExecError for the guest's refusal."""
    if msg["t"] == "started":
        return msg["pid"]
    if msg["t"] == "error":
        raise ExecError(f"cannot start {argv[0]!r} in the guest: {msg['message']}")
    raise ProtocolError(f"guest answered exec of {argv[0]!r} with {msg['t']!r}")


def exec_output(msg: Msg) -> Msg | None:
    """A message on a started process's stream: `data` (stdout or stderr, the channel checked
    the fd and window) or `exit`; None for one that needs nothing (`eof` of an output)."""
    if msg["t"] in ("data", "exit"):
        return msg
    if msg["t"] == "eof":
        return None
    raise ProtocolError(f"guest sent {msg['t']!r} on the stream of a running process")


def exit_status(msg: Msg) -> tuple[int, int | None]:
    """An `exit` as (code, signal): shell convention, a process killed by signal N exits with
    128 + N. Exactly one of the two must be set."""
    code, sig = msg["code"], msg["signal"]
    if (code is None) == (sig is None):
        raise ProtocolError(f"guest sent an exit with code {code!r} and signal {sig!r}: "
                            "exactly one must be set")
    if sig is not None:
        if not 0 < sig < 128:
            raise ProtocolError(f"guest sent an exit by signal {sig}")
        return 128 + sig, sig
    return code, None


# ---- files -----------------------------------------------------------------------------------


def fs(op: str, path: str, **fields: Any) -> Msg:
    """One `fs` op on an absolute guest path; per op: mkdir {parents, mode}, remove
    {recursive}, rename/copy {dest}, chmod {mode}, symlink {target}, stat {follow}."""
    if op not in FS_OPS:
        raise ValueError(f"unknown fs op {op!r}")
    return _set("fs", op=op, path=path, **fields)


def read(path: str, limit: int | None = None) -> Msg:
    return {"t": "read", "path": path, "limit": limit}


def write(path: str, *, mode: int | None = None, append: bool = False,
          parents: bool = True) -> Msg:
    return {"t": "write", "path": path, "mode": mode, "append": bool(append),
            "parents": bool(parents)}


def watch(path: str, recursive: bool = True) -> Msg:
    return {"t": "watch", "path": path, "recursive": bool(recursive)}


def guest_error(msg: Msg, fallback_path: str) -> ShuruError:
    """A guest's `error` answer to a file op, as the GuestFileError for its errno name."""
    return guest_file_error(msg.get("code"), msg.get("message"),
                            msg.get("path") or fallback_path)


def parse_result(msg: Msg, what: str, path: str) -> Any:
    """The `value` of the `result` that ends a file stream; the guest's `error` raised as a
    GuestFileError; anything else is a ProtocolError naming the op (`what`)."""
    if msg["t"] == "result":
        return msg.get("value")
    if msg["t"] == "error":
        raise guest_error(msg, path)
    raise ProtocolError(f"guest answered {what} of {path} with {msg['t']!r}")


def parse_entry(value: object) -> Msg:
    """A file entry (`stat`'s value, an item of a listing), every field checked."""
    try:
        return wire.check_entry(value)
    except wire.WireError as e:
        raise ProtocolError(f"guest sent a bad file entry: {e}") from None


def parse_value(op: str, path: str, value: object) -> Any:
    """An fs op's result value, checked against what the op answers: `stat` an entry,
    `exists` a bool, `list`/`walk` {count}, the others nothing."""
    if op == "stat":
        return parse_entry(value)
    if op == "exists":
        if not isinstance(value, bool):
            raise ProtocolError(f"guest answered exists of {path} with {_shape(value)}")
        return value
    if op in LISTINGS:
        return _counted(value, "count", f"{op} of {path}")
    if value is not None:
        raise ProtocolError(f"guest answered {op} of {path} with {_shape(value)}, not nil")
    return None


def parse_size(value: object, what: str) -> int:
    """A `read` or `write` result: {size}, the bytes the guest read or wrote."""
    return _counted(value, "size", what)


def _counted(value: object, key: str, what: str) -> int:
    n = value.get(key) if isinstance(value, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ProtocolError(f"guest answered {what} with {_shape(value)}, not {{{key}: int}}")
    return n


def parse_event(msg: Msg, path: str) -> tuple[str, str, str | None, bool] | None:
    """A message on a watch's stream: an event as (kind, path, dest, is_dir); None for the
    `result` or `error` that ends the watch (the caller reads it with `parse_result`)."""
    if msg["t"] in ("result", "error"):
        return None
    if msg["t"] != "event":
        raise ProtocolError(f"guest sent {msg['t']!r} on the watch of {path}")
    if msg["kind"] not in WATCH_KINDS:
        raise ProtocolError(f"guest sent a watch event of kind {msg['kind']!r}")
    return msg["kind"], msg["path"], msg.get("dest"), bool(msg.get("is_dir", False))


# ---- network, ports, mounts ------------------------------------------------------------------


def net(ca_bundle: str | None = None) -> Msg:
    return _set("net", ca_bundle=ca_bundle)


def parse_net(msg: Msg) -> str | None:
    """The answer to `net`: None once capture is on, the guest's message if it could not."""
    if msg["t"] == "error":
        return str(msg["message"])
    if msg["t"] != "result":
        raise ProtocolError(f"guest answered the network request with {msg['t']!r}")
    return None


def dns_answer(d: bytes) -> Msg:
    return {"t": "dns", "d": d}


def tcp_connect(port: int) -> Msg:
    """Connect to `port` on the guest's loopback (the caller checked it: ports.py)."""
    return {"t": "tcp_connect", "port": port}


def parse_tcp_answer(msg: Msg) -> bool | None:
    """A message on a `tcp_connect` stream: True for `result` (connected), False for `error`
    (refused; the message says why), None for the relay's own (data, eof, credit, close)."""
    t = msg["t"]
    if t == "result":
        return True
    if t == "error":
        return False
    if t in ("data", "eof", "credit", "close"):
        return None
    raise ProtocolError(f"guest answered tcp_connect with {t!r}")


def mount(path: str, rw: bool) -> Msg:
    return {"t": "mount", "path": path, "rw": bool(rw)}


def fsreply(op_id: int, answer: Mapping[str, Any]) -> Msg:
    """The answer to one `fsop`: {"value": ...} or {"err": errno name}."""
    return {"t": "fsreply", "id": op_id, **answer}


def parse_fsop(msg: Msg) -> Msg | None:
    """A guest's request on a mount's stream; None for what is not one (dropped)."""
    if msg["t"] == "fsop" and not isinstance(msg["id"], bool):
        return msg
    return None


def parse_mount_ready(value: object) -> str | None:
    """A mount's `result` value: {upper} (the overlay's upper dir in the guest, nil for rw)."""
    upper = value.get("upper") if isinstance(value, dict) else None
    if value is not None and not (isinstance(value, dict) and
                                  (upper is None or isinstance(upper, str))):
        raise ProtocolError(f"guest answered mount with {_shape(value)}, not {{upper}}")
    return upper


def _shape(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"a {type(value).__name__}"
