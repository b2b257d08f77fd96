"""The helper protocol against its golden vectors (protocol/vectors/helper.json), which
`swift test` loads too, so Python and the Swift helper agree on every byte."""

import msgpack
import pytest

from tests import vectors

from shuru.backends.helper import protocol as hp
from shuru_guest.wire import WireError

VECTORS = vectors.load("helper")


_value = vectors.value


def _decode_and_validate(frame: bytes, kind: str) -> object:
    values = hp.FrameSplitter().feed(frame)
    assert len(values) == 1, "a golden frame holds exactly one message"
    hp.validate(values[0], kind)
    return values[0]


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: f"{c['kind']}: {c['name']}")
def test_golden_frame_decodes_to_value(case):
    assert _decode_and_validate(bytes.fromhex(case["frame"]), case["kind"]) == _value(case["value"])


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: f"{c['kind']}: {c['name']}")
def test_value_encodes_to_the_golden_frame(case):
    # JSON keeps key order, so the reference encoder reproduces the exact bytes.
    assert hp.encode(_value(case["value"])).hex() == case["frame"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: f"{c['kind']}: {c['name']}")
def test_invalid_frames_are_refused(case):
    with pytest.raises(WireError):
        _decode_and_validate(bytes.fromhex(case["frame"]), case["kind"])


def test_every_op_and_event_has_a_valid_vector():
    ops = {c["value"]["op"] for c in VECTORS["valid"] if c["kind"] == "request"}
    events = {c["value"]["event"] for c in VECTORS["valid"] if c["kind"] == "event"}
    assert ops == set(hp.REQUESTS)
    assert events == set(hp.EVENTS)


def test_incoming_messages_are_classified():
    assert hp.validate_incoming({"event": "state", "state": "running"}) == "event"
    assert hp.validate_incoming({"id": 3, "ok": True}) == "reply"
    with pytest.raises(WireError):
        hp.validate_incoming({"id": 3})


def test_splitter_reassembles_frames_split_anywhere():
    frames = b"".join(bytes.fromhex(c["frame"]) for c in VECTORS["valid"])
    splitter, got = hp.FrameSplitter(), []
    for i in range(0, len(frames), 5):
        got += splitter.feed(frames[i:i + 5])
    assert got == [_value(c["value"]) for c in VECTORS["valid"]]
    assert splitter.pending == 0


def test_container_longer_than_the_limit_is_refused():
    payload = msgpack.packb({"id": 1, "op": "start", "x": [None] * (hp.MAX_CONTAINER + 1)})
    with pytest.raises(WireError):
        hp.decode_payload(payload)


def test_oversized_message_cannot_be_encoded():
    with pytest.raises(WireError):
        hp.encode({"event": "console", "line": "x" * (hp.MAX_FRAME + 1)})
