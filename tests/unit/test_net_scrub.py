"""Masking real values in responses, however the stream is cut."""

from shuru.net.scrub import Scrubber

VALUE = b"sk-real/value+1"


def run(scrubber: Scrubber, data: bytes, step: int) -> bytes:
    out = b"".join(scrubber.feed(data[i:i + step]) for i in range(0, len(data), step))
    return out + scrubber.flush()


def test_values_are_masked_at_the_same_length_however_the_stream_is_split():
    data = b'{"echo": "Bearer ' + VALUE + b'", "url": "/x?k=sk-real%2Fvalue%2B1"} ' + VALUE
    expected = data.replace(VALUE, b"*" * len(VALUE)).replace(b"sk-real%2Fvalue%2B1", b"*" * 19)
    for step in range(1, len(data) + 1):
        assert run(Scrubber([VALUE]), data, step) == expected, step


def test_only_a_possible_start_of_a_value_is_held_back():
    scrubber = Scrubber([VALUE])
    assert scrubber.feed(b"data: {...}\n\n") == b"data: {...}\n\n"  # streams are not delayed
    assert scrubber.feed(b"prefix sk-re") == b"prefix "
    assert scrubber.feed(b"ally not") == b"sk-really not"
    assert scrubber.flush() == b""


def test_a_longer_value_containing_a_shorter_one_is_masked_whole():
    out = run(Scrubber([b"abc", b"xxabcxx"]), b"1 xxabcxx 2 abc", 3)
    assert out == b"1 ******* 2 ***"


def test_counts_and_no_values():
    scrubber = Scrubber([VALUE])
    scrubber.feed(VALUE + b" " + VALUE)
    assert scrubber.masked == 2
    assert Scrubber([]).feed(b"sk-") == b"sk-"
