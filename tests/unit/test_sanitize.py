"""Guest text bound for a terminal or an error message: control sequences made visible,
newlines and tabs kept, whatever the chunking."""

import pytest

from shuru.errors import BootError, SandboxDiedError
from shuru.sanitize import StreamNeutraliser, neutralise

OSC52 = "\x1b]52;c;cm0gLXJmIH4K\x07"  # "set the clipboard to `rm -rf ~`"


def test_escape_sequences_become_visible_text():
    assert neutralise(f"a{OSC52}b") == "a\\x1b]52;c;cm0gLXJmIH4K\\x07b"
    assert neutralise("\x1b[2J\x1b[31mred\x9b1m\x7f\x00") == "\\x1b[2J\\x1b[31mred\\x9b1m\\x7f\\x00"


def test_newlines_tabs_and_text_are_kept():
    text = "line 1\n\tindented — ünïcode 🙂\n"
    assert neutralise(text) == text


def test_line_ends_and_stray_carriage_returns():
    assert neutralise("a\r\nb\r\r\nc\rd") == "a\nb\nc\\x0dd"  # a lone CR cannot overwrite
    assert neutralise("a\nb\r\n", line_end="\r\n") == "a\r\nb\r\n"


def test_bidi_overrides_are_shown():
    assert neutralise("safe\u202eexe.txt\u2066") == "safe\\u202eexe.txt\\u2066"


def test_the_output_has_no_control_character_but_newline_and_tab():
    every = "".join(chr(c) for c in range(0x200)) + "\u202a\u202e\u2069"
    out = neutralise(every)
    assert {c for c in out if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f} == {"\n", "\t"}
    assert neutralise(out) == out  # applying it twice changes nothing


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_a_stream_in_any_chunking_is_neutralised_the_same(size):
    data = f"boot\r\nü {OSC52}\r\nend\r".encode() + b"\x9b\xff"
    stream = StreamNeutraliser()
    out = b"".join(stream.feed(data[i:i + size]) for i in range(0, len(data), size))
    out += stream.flush()
    assert out == b"boot\r\n\xc3\xbc \\x1b]52;c;cm0gLXJmIH4K\\x07\r\nend\\x0d\\x9b\\xff"


def test_console_tails_in_errors_are_neutralised():
    for error in (BootError("the VM stopped", console_tail=f"panic{OSC52}\r\n"),
                  SandboxDiedError("gone", console_tail=f"bye{OSC52}")):
        assert "\x1b" not in str(error) and "\x07" not in str(error)
        assert "\\x1b]52;c;" in str(error) and "\\x1b]52;c;" in error.console_tail
