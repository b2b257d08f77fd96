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


def _vector(name):
    return _value(next(c["value"] for c in VECTORS["valid"] if c["name"] == name))


def test_listing_vector_decodes_to_entries_split_anywhere():
    data = _vector("listing data")["d"]
    for step in (1, 3, 7, len(data)):
        decoder = wire.EntryDecoder()
        got = []
        for i in range(0, len(data), step):
            got += decoder.feed(data[i:i + step])
        decoder.finish()
        assert [(e["name"], e["type"], e["uid"]) for e in got] == \
            [("a.txt", "file", 0), ("src", "dir", 1000)]


def test_a_listing_cut_midway_is_refused_at_its_end():
    decoder = wire.EntryDecoder()
    assert len(decoder.feed(_vector("listing data")["d"][:-1])) == 1
    with pytest.raises(wire.WireError, match="middle"):
        decoder.finish()


def test_request_part_vectors_join_to_a_request():
    joined = _vector("request part")["d"] + _vector("request last part")["d"]
    assert wire.decode_request(joined) == {"t": "exec", "s": 9, "argv": ["echo", "hi"]}


def test_a_request_too_big_for_a_frame_goes_in_parts_that_join_back():
    small = {"t": "exec", "s": 3, "argv": ["true"]}
    assert wire.request_frames(small) == [wire.encode(small)]
    big = {"t": "exec", "s": 5, "argv": ["x" * 65536] * 16 + ["y"] * 100_000,
           "env": {"K": "v" * 100_000}}
    frames = wire.request_frames(big)
    decoder = wire.FrameDecoder()
    parts = [m for f in frames for m in decoder.feed(f)]
    assert all(len(f) <= wire.HEADER.size + wire.MAX_FRAME for f in frames)
    assert [(p["t"], p["s"], p["more"]) for p in parts] == \
        [("part", 5, True)] * (len(parts) - 1) + [("part", 5, False)]
    assert wire.decode_request(b"".join(p["d"] for p in parts)) == big


def test_a_joined_request_is_still_validated():
    with pytest.raises(wire.WireError, match="argv"):
        wire.decode_request(wire.encode({"t": "exec", "s": 1, "argv": "ls"})[4:])
    with pytest.raises(wire.WireError):
        wire.decode_request(b"\xc1")
