"""The helper protocol (`protocol/HELPER.md`) as pure functions: frames, decode limits and the
message schema. No I/O.

`backends/helper.py` speaks it to `shuru-helper`; tests use it to build fake helpers. The Swift
twin is `helper/Sources/ShuruHelperCore/Schema.swift`, and `protocol/vectors/helper.json` pins
both to the same bytes. Framing is the agent protocol's (`shuru_guest.wire`); the decode limits
add a nesting bound, because the helper's messages are small and a deep frame can only be hostile.
"""

from __future__ import annotations

import msgpack

from shuru_guest.wire import HEADER, MAX_FRAME, FrameDecoder, WireError

VERSION = 1
MAX_DEPTH = 32  # containers nested deeper than this are refused; the frame's map is depth 1
MAX_CONTAINER = 65536

STATES = ("unconfigured", "created", "starting", "running", "pausing", "paused", "resuming",
          "saving", "restoring", "stopping", "stopped", "error")

# Field types per message, in the style of `shuru_guest.wire.SCHEMA`: a key ending in "?" is
# optional; STRS is a list of str. Extra keys are allowed; unknown ops and events are not.
_INT, _STR, _BOOL, _BIN, _MAP, _NONE = int, str, bool, bytes, dict, type(None)
STRS = "list[str]"

REQUESTS: dict[str, dict[str, object]] = {
    "hello": {"version": _INT},
    "create": {"config": _MAP},
    "start": {},
    "stop": {"grace_ms?": _INT},
    "pause": {},
    "resume": {},
    "save_state": {"path": _STR},
    "restore_state": {"path": _STR},
    "connect": {"port": _INT},
}
CONFIG: dict[str, object] = {
    "kernel": _STR,
    "initrd": (_STR, _NONE),
    "disk": _STR,
    "cpus": _INT,
    "memory_mb": _INT,
    "cmdline": _STR,
    "network": _STR,
    "agent_port": _INT,
    "console": _BOOL,
    "agent_command?": STRS,
    "allow?": STRS,
    "secrets?": STRS,
    "machine_id?": (_BIN, _NONE),
}
REPLY: dict[str, object] = {
    "id": _INT,
    "ok": _BOOL,
    "error?": _MAP,
    "version?": _INT,
    "helper?": _STR,
    "driver?": _STR,
    "capabilities?": _MAP,
    "machine_id?": _BIN,
}
ERROR: dict[str, object] = {"code": _STR, "message": _STR}
EVENTS: dict[str, dict[str, object]] = {
    "state": {"state": _STR, "message?": _STR},
    "console": {"line": _STR},
}

_UNPACK_LIMITS = dict(
    max_bin_len=MAX_FRAME,
    max_str_len=MAX_FRAME,
    max_array_len=MAX_CONTAINER,
    max_map_len=MAX_CONTAINER,
    max_ext_len=0,
)


def encode(msg: dict) -> bytes:
    """One message as a frame."""
    payload = msgpack.packb(msg, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise WireError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(payload)) + payload


def request(request_id: int, op: str, **fields) -> bytes:
    return encode({"id": request_id, "op": op, **fields})


def decode_payload(payload: bytes) -> object:
    """One frame payload as a value, within the limits (not yet checked against the schema)."""
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise WireError(f"undecodable frame: {e}") from None
    if _depth(value) > MAX_DEPTH:
        raise WireError(f"msgpack nesting deeper than {MAX_DEPTH} levels")
    return value


def _depth(value: object) -> int:
    # Iterative, so a hostile frame cannot exhaust Python's recursion limit either.
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _check(value: object, fields: dict[str, object], context: str) -> None:
    if not isinstance(value, dict):
        raise WireError(f"{context} is a {type(value).__name__}, not a map")
    for key in value:
        if not isinstance(key, str):
            raise WireError(f"{context} has a non-string key of type {type(key).__name__}")
    for key, kind in fields.items():
        name = key.rstrip("?")
        if name not in value:
            if key.endswith("?"):
                continue
            raise WireError(f"{context}: missing field {name!r}")
        if not _admits(kind, value[name]):
            raise WireError(f"{context}: field {name!r} has type {type(value[name]).__name__}")


def _admits(kind: object, value: object) -> bool:
    if kind == STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass; an int field must not accept True/False.
    if isinstance(value, bool) and _BOOL not in kinds:
        return False
    return isinstance(value, kinds)


def _check_id(msg: dict) -> None:
    value = msg.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise WireError("'id' must be an integer in [0, 2^32)")


def validate(msg: object, kind: str) -> None:
    """Check a decoded message of kind "request", "reply" or "event" against the schema."""
    if kind == "request":
        _check(msg, {"id": _INT, "op": _STR}, "request")
        _check_id(msg)
        fields = REQUESTS.get(msg["op"])
        if fields is None:
            raise WireError(f"unknown op {msg['op']!r}")
        _check(msg, fields, msg["op"])
        if msg["op"] == "create":
            _check(msg["config"], CONFIG, "create.config")
    elif kind == "reply":
        _check(msg, REPLY, "reply")
        _check_id(msg)
        if msg["ok"] is False:
            if "error" not in msg:
                raise WireError("reply: 'ok' is false but there is no 'error'")
            _check(msg["error"], ERROR, "reply.error")
    elif kind == "event":
        _check(msg, {"event": _STR}, "event")
        fields = EVENTS.get(msg["event"])
        if fields is None:
            raise WireError(f"unknown event {msg['event']!r}")
        _check(msg, fields, f"{msg['event']} event")
        if msg["event"] == "state" and msg["state"] not in STATES:
            raise WireError(f"state event: unknown state {msg['state']!r}")
    else:
        raise ValueError(f"unknown message kind {kind!r}")


def validate_incoming(msg: object) -> str:
    """Validate a message from the helper; returns its kind ("reply" or "event")."""
    kind = "event" if isinstance(msg, dict) and "event" in msg else "reply"
    validate(msg, kind)
    return kind


class FrameSplitter(FrameDecoder):
    """Incremental frame splitter for helper frames: the agent protocol's framing, with this
    protocol's decoding (values come out unvalidated; `classify`/`validate` check them)."""

    def __init__(self):
        super().__init__(decode=decode_payload)
