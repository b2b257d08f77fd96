"""Guest text made safe to show: control sequences neutralised, the words kept.

The guest is hostile, and a terminal obeys what it prints: an escape sequence in a console
line can set the user's clipboard (OSC 52), retitle the window, rewrite what is on screen or,
on some terminals, answer back as if typed. So guest bytes bound for the user's terminal
(`shuru run --console`) or for an error message (a console tail) pass through here first:
newlines and tabs stay, and every other control character (C0, DEL, C1, and the Unicode
bidirectional overrides that reorder what is shown) becomes visible text such as `\\x1b`.
A run of CRs just before a newline is part of the line end (the serial console ends lines
with CRLF). Bytes that are not UTF-8 show as `\\xNN` too, so a bare 8-bit C1 byte (0x9b:
CSI on some terminals) cannot act either.

`neutralise` is the pure core for whole texts; `StreamNeutraliser` applies it to a byte
stream whose chunks may split a character or a line end anywhere.
"""

from __future__ import annotations

import codecs
import re

_UNSAFE = re.compile(r"\r*\n|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def neutralise(text: str, *, line_end: str = "\n") -> str:
    """`text` with its control characters made visible (newlines and tabs kept); a line end
    (LF, or CRs then LF) becomes `line_end`."""
    return _UNSAFE.sub(lambda m: line_end if m.group().endswith("\n") else _visible(m.group()),
                       text)


class StreamNeutraliser:
    """`neutralise` over a byte stream: `feed(chunk)` returns the safe bytes to write so far
    (line ends as CRLF, which a terminal in raw mode needs too), `flush()` the rest. A
    character or a CR split across chunks is held until the next one decides it."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._held = ""

    def feed(self, data: bytes) -> bytes:
        text = self._held + self._decoder.decode(data)
        kept = len(text) - len(text.rstrip("\r"))
        self._held = text[len(text) - kept:] if kept else ""
        return neutralise(text[:len(text) - kept], line_end="\r\n").encode()

    def flush(self) -> bytes:
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return neutralise(text, line_end="\r\n").encode()
