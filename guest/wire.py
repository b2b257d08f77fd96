"""The agent channel's wire format: frames, message schema, limits. Shared by host and guest.

This module is the executable half of `protocol/PROTOCOL.md`. It is pure (no I/O), depends only
on the standard library and msgpack, and is imported by the guest agent inside the VM and by
the host package (`shuru.channel`), so both ends agree by construction.

A frame is a 4-byte big-endian payload length followed by that many bytes holding one msgpack
map. Every map has ``t`` (message type, str) and ``s`` (stream id, int). The receiver checks
the frame size, the msgpack limits, and each field's type before acting on a message: the
guest is untrusted, and a bad frame is an error, never a crash or an unbounded allocation.
"""

from __future__ import annotations

import struct

import msgpack

VERSION = 1

HEADER = struct.Struct(">I")
# One data chunk per frame is at most CHUNK bytes; the frame limit leaves room for the map.
CHUNK = 64 * 1024
MAX_FRAME = CHUNK + 4096
# Bytes a sender may have in flight per stream and direction before the receiver grants more.
WINDOW = 1024 * 1024
# A request too big for one frame (an exec whose argv and environment run to megabytes) goes
# as `part` messages the guest joins; this bounds the joined request. Linux itself never
# takes more than 6 MiB of argv and environment (3/4 of the 8 MiB stack-limit cap), so
# every command it would run fits.
MAX_REQUEST = 8 * 1024 * 1024

CONTROL = 0  # stream 0 carries hello, ping/pong, resume and shutdown

# Field types per message type. Values are a type or a tuple of types; a key ending in "?"
# is optional. Unknown message types are rejected; unknown extra keys are ignored so that a
# newer peer can add optional fields without a version bump.
_STR, _INT, _BIN, _BOOL, _LIST, _MAP, _NONE = str, int, bytes, bool, list, dict, type(None)
SCHEMA: dict[str, dict[str, object]] = {
    "hello": {"version": _INT, "agent?": _STR, "kernel?": _STR, "pid?": _INT},
    "ping": {"id": _INT},
    "pong": {"id": _INT},
    "shutdown": {},
    # fast start: the template host parks the idle agent before saving the machine; the
    # host of a restored clone sends resume (its entropy and wall clock) before hello
    "park": {},
    "parked": {},
    "resume": {"entropy": _BIN, "time_ns": _INT},
    "exec": {
        "argv": _LIST,
        "env?": _MAP,
        "cwd?": (_STR, _NONE),
        "user?": (_STR, _NONE),
        "tty?": _BOOL,
        "rows?": _INT,
        "cols?": _INT,
        "stdin?": _BOOL,
    },
    "started": {"pid": _INT},
    "data": {"fd": _INT, "d": _BIN},
    "eof": {"fd": _INT},
    "credit": {"fd": _INT, "n": _INT},
    "signal": {"sig": _INT, "group?": _BOOL},
    "resize": {"rows": _INT, "cols": _INT},
    "exit": {"code": (_INT, _NONE), "signal": (_INT, _NONE)},
    "error": {"code": _STR, "message": _STR, "path?": _STR},
    # files and watches
    "fs": {"op": _STR},  # further fields depend on op; the agent checks them
    "result": {},  # "value": the op's result (any msgpack value)
    "read": {"path": _STR, "limit?": (_INT, _NONE)},
    "write": {"path": _STR, "mode?": (_INT, _NONE), "append?": _BOOL, "parents?": _BOOL},
    "watch": {"path": _STR, "recursive?": _BOOL},
    "event": {"kind": _STR, "path": _STR, "dest?": _STR, "is_dir?": _BOOL},
    "cancel": {},
    # network (allow_net): the host enables capture; the guest opens one even stream per
    # captured TCP connection or DNS query
    "net": {"ca_bundle?": (_STR, _NONE)},
    "connect": {"ip": _STR, "port": _INT},
    "dns": {"d": _BIN},
    "close": {},
    # port forwarding: the host opens an odd stream to a TCP port on the guest's loopback
    "tcp_connect": {"port": _INT},
    # host folders: the host opens an odd stream that mounts a folder at `path`; the guest
    # sends the FUSE requests it needs answered as `fsop`s, the host answers `fsreply`
    "mount": {"path": _STR, "rw?": _BOOL},
    "fsop": {"id": _INT, "op": _STR},  # further fields depend on op
    "fsreply": {"id": _INT, "err?": (_STR, _NONE)},  # "value": the op's result
    # a host request too big for one frame, in pieces (see request_frames)
    "part": {"d": _BIN, "more": _BOOL},
}

_UNPACK_LIMITS = dict(
    max_bin_len=MAX_FRAME,
    max_str_len=MAX_FRAME,
    max_array_len=65536,
    max_map_len=65536,
    max_ext_len=0,
)


# A joined request may hold many small strings (Linux takes ~200,000 one-letter arguments).
_REQUEST_LIMITS = dict(
    max_bin_len=MAX_REQUEST,
    max_str_len=MAX_REQUEST,
    max_array_len=MAX_REQUEST,
    max_map_len=MAX_REQUEST,
    max_ext_len=0,
)


class WireError(ValueError):
    """A frame or message that breaks the protocol."""


def encode(msg: dict) -> bytes:
    """One message as a frame (header + msgpack payload)."""
    payload = msgpack.packb(msg, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(payload)) + payload


def message(t: str, s: int = CONTROL, **fields) -> bytes:
    """Build and encode a message in one step."""
    return encode({"t": t, "s": s, **fields})


def request_frames(msg: dict) -> list[bytes]:
    """A host request as frames: one frame when it fits, else `part` messages on its stream
    whose `d`s joined are the request's msgpack encoding (the last has `more` false). The
    receiver joins at most MAX_REQUEST bytes; what is bigger still goes, and is refused there
    (the guest names its limit)."""
    payload = msgpack.packb(msg, use_bin_type=True)
    if len(payload) <= MAX_FRAME:
        return [HEADER.pack(len(payload)) + payload]
    s = msg["s"]
    return [encode({"t": "part", "s": s, "d": payload[i:i + CHUNK],
                    "more": i + CHUNK < len(payload)})
            for i in range(0, len(payload), CHUNK)]


def decode_request(payload: bytes) -> dict:
    """Decode and validate a request joined from `part`s (larger limits than one frame)."""
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_REQUEST_LIMITS)
    except Exception as e:
        raise WireError(f"undecodable request: {e}") from None
    validate(msg)
    return msg


def decode_payload(payload: bytes) -> dict:
    """Decode and validate one frame payload (without its header)."""
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireError(f"undecodable frame: {e}") from None
    validate(msg)
    return msg


def validate(msg: object) -> None:
    """Check a decoded message against SCHEMA; raise WireError naming the bad field."""
    if not isinstance(msg, dict):
        raise WireError(f"frame is a {type(msg).__name__}, not a map")
    t, s = msg.get("t"), msg.get("s")
    if not isinstance(t, str):
        raise WireError("frame has no string 't' (message type)")
    if not isinstance(s, int) or isinstance(s, bool) or s < 0 or s >= 2**32:
        raise WireError(f"{t}: 's' (stream id) must be an integer in [0, 2^32)")
    fields = SCHEMA.get(t)
    if fields is None:
        raise WireError(f"unknown message type {t!r}")
    for key, kind in fields.items():
        optional = key.endswith("?")
        name = key.rstrip("?")
        if name not in msg:
            if optional:
                continue
            raise WireError(f"{t}: missing field {name!r}")
        value = msg[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int subclass; an int field must not accept True/False.
        if isinstance(value, bool) and _BOOL not in kinds:
            raise WireError(f"{t}: field {name!r} has type bool")
        if not isinstance(value, kinds):
            raise WireError(f"{t}: field {name!r} has type {type(value).__name__}")


# ---- listings ------------------------------------------------------------------------------
# `fs` list and walk answer with a byte stream on fd 1 (data within credit, like `read`): the
# concatenated msgpack encodings of one entry map after another. A listing of any length thus
# flows with bounded memory on both sides, and an entry may straddle two data frames.

ENTRY_FIELDS = {"name": _STR, "path": _STR, "type": _STR, "size": _INT, "mode": _INT,
                "mtime": (int, float), "uid": _INT, "gid": _INT}
# An entry holds at most a PATH_MAX path and a NAME_MAX name, well under this.
MAX_ENTRY = 16 * 1024


def pack_entry(entry: dict) -> bytes:
    return msgpack.packb(entry, use_bin_type=True)


class EntryDecoder:
    """Incremental decoder for a listing's byte stream: feed data chunks, get entries out.
    Each entry is checked against ENTRY_FIELDS; a bad or oversized one raises WireError."""

    def __init__(self):
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=True, max_buffer_size=MAX_ENTRY + CHUNK,
            max_bin_len=0, max_str_len=MAX_ENTRY, max_array_len=0, max_map_len=64,
            max_ext_len=0)
        self._fed = 0
        self._end = 0  # where the last whole entry ended

    def feed(self, data: bytes) -> list[dict]:
        out = []
        view = memoryview(data)
        while view:  # in steps the buffer can take, since a merged chunk may be larger
            piece, view = view[:CHUNK], view[CHUNK:]
            self._fed += len(piece)
            try:
                self._unpacker.feed(piece)
                for entry in self._unpacker:
                    out.append(check_entry(entry))
                    self._end = self._unpacker.tell()  # past a partial one, tell() runs on
            except WireError:
                raise
            except Exception as e:  # msgpack raises several unrelated types
                raise WireError(f"undecodable listing entry: {e}") from None
        return out

    def finish(self) -> None:
        """The stream ended: nothing may be left half-sent."""
        if self._end != self._fed:
            raise WireError("listing ended in the middle of an entry")


def check_entry(entry: object) -> dict:
    if not isinstance(entry, dict):
        raise WireError(f"listing entry is a {type(entry).__name__}, not a map")
    for name, kind in ENTRY_FIELDS.items():
        value = entry.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise WireError(f"listing entry: field {name!r} missing or of the wrong type")
    return entry


class FrameDecoder:
    """Incremental frame splitter: feed bytes as they arrive, get whole messages out.
    `decode` turns one payload into a message (another protocol on the same framing, such as
    the helper's, passes its own)."""

    def __init__(self, max_frame: int = MAX_FRAME, decode=None):
        self._buf = bytearray()
        self._max = max_frame
        self._decode = decode or decode_payload

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buf)
            if length == 0 or length > self._max:
                raise WireError(f"frame length {length} outside 1..{self._max}")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            out.append(self._decode(payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)
