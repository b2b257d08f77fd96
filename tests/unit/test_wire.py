"""The frame format against the golden vectors in protocol/vectors/agent.json."""

import pytest

from tests import vectors

from shuru_guest import wire

VECTORS = vectors.load("agent")


_value = vectors.value


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_golden_frame_decodes_to_value(case):
    assert wire.FrameDecoder().feed(bytes.fromhex(case["frame"])) == [_value(case["value"])]


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"])
def test_value_round_trips(case):
    value = _value(case["value"])
    assert wire.FrameDecoder().feed(wire.encode(value)) == [value]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_invalid_frames_are_refused(case):
    with pytest.raises(wire.WireError):
        wire.FrameDecoder().feed(bytes.fromhex(case["frame"]))


def test_decoder_reassembles_frames_split_anywhere():
    frames = b"".join(bytes.fromhex(c["frame"]) for c in VECTORS["valid"])
    decoder = wire.FrameDecoder()
    got = []
    for i in range(0, len(frames), 7):
        got += decoder.feed(frames[i:i + 7])
    assert got == [_value(c["value"]) for c in VECTORS["valid"]]
    assert decoder.pending == 0


def test_oversized_message_cannot_be_encoded():
    with pytest.raises(wire.WireError):
        wire.encode({"t": "data", "s": 1, "fd": 1, "d": b"x" * (wire.MAX_FRAME + 1)})
