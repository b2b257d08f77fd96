"""Masking real secret values in what intercepted hosts send back. Pure.

A server that reflects its request (an echo endpoint, an error message quoting a header)
would otherwise hand the guest the very value it must never see. Masking must not become
an oracle itself: a scrubber that holds back "a tail that could still become the value"
tells a guest that makes the server echo its guesses how much of each guess was right.
So nothing here depends on the value except which bytes get masked:

- `Masker` finds the value in the forms a server plausibly reflects it in: as sent; with
  any of its non-alphanumeric bytes percent-encoded, JSON-escaped (`\\/`, `\\u002f`) or
  HTML-escaped (`&#47;`, `&amp;`); and base64 or base64url encoded at each of the three
  alignments (with those escapes too), the characters shared with the neighbouring bytes
  included. Every match becomes asterisks of the same length, so framing stays valid.
- `Scrubber` masks a stream, holding back a fixed number of bytes (`hold_for`: a function
  of the values' lengths only), so a match is always complete before its first byte leaves.
- `ResponseScrubber` reads the upstream's side as HTTP/1.1 responses (http.ResponseParser):
  a head is masked whole before it is parsed (so no parsing decision sees a value), a body
  as a stream that is flushed at the end of its message, so held-back bytes never wait for
  the next response; chunked bodies are re-chunked as they leave. A compressed or
  transfer-encoded response, a protocol switch or broken framing ends the connection (with
  a 502 when the guest is still waiting for a head).

So what reaches the guest, bytes and boundaries, is the same for any two values of the same
length, except where the response holds one of them (the README's Security section says
exactly what that covers). A transformation outside these forms (compression inside a
body, hex, a substring) is not recognised.
"""

from __future__ import annotations

import base64
import re
from typing import Callable, Iterable

from . import http

MASK = b"*"
# The longest escape of one byte: \u002f, &#x2f; and &quot; are six bytes each.
MAX_UNIT = 6
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_JSON = {ord('"'): [b'\\"'], ord("\\"): [b"\\\\"], ord("/"): [b"\\/"], ord("\t"): [b"\\t"],
         ord("\b"): [b"\\b"], ord("\f"): [b"\\f"]}
_HTML = {ord("&"): [b"&amp;"], ord("<"): [b"&lt;"], ord(">"): [b"&gt;"],
         ord('"'): [b"&quot;"], ord("'"): [b"&apos;"]}


def _alternatives(byte: int) -> list[bytes]:
    """How a server may write one byte of a value: alphanumerics only as themselves (no
    encoder escapes them), anything else also percent-encoded, and if ASCII also as a JSON
    or HTML escape (a space also as `+`)."""
    if byte < 0x80 and bytes([byte]).isalnum():
        return [bytes([byte])]
    forms = {bytes([byte]), b"%%%02x" % byte}
    if byte < 0x80:
        forms |= {b"\\u%04x" % byte, b"&#%d;" % byte, b"&#x%x;" % byte}
        forms.update(_JSON.get(byte, ()))
        forms.update(_HTML.get(byte, ()))
        if byte == 0x20:
            forms.add(b"+")
    return sorted(forms, key=lambda f: (-len(f), f))


def _unit(byte: int) -> bytes:
    forms = _alternatives(byte)
    if len(forms) == 1:
        return re.escape(forms[0])
    # Hex digits and entity names in either case; only escapes have letters here.
    return b"(?i:" + b"|".join(re.escape(f) for f in forms) + b")"


def _units(data: bytes) -> bytes:
    return b"".join(_unit(b) for b in data)


def _any_of(alphabet: bytes) -> re.Pattern:
    """One base64 character (escaped or not), as a pattern that must match whole."""
    plain = [bytes([b]) for b in alphabet if bytes([b]).isalnum()]
    special = [_unit(b) for b in alphabet if not bytes([b]).isalnum()]
    return re.compile(b"(?:" + b"|".join(special) + b"|[" + b"".join(plain) + b"])")


class _Form:
    """One way a value may appear: `core` must match; for base64, `left`/`right` are
    the characters it shares with the bytes around it, masked with it."""

    def __init__(self, core: bytes, left: re.Pattern | None = None,
                 right: re.Pattern | None = None):
        self.core = re.compile(_units(core))
        self.left, self.right = left, right

    def spans(self, data: bytes | bytearray, start: int) -> Iterable[tuple[int, int]]:
        pos = start
        while (m := self.core.search(data, pos)) is not None:
            pos = m.start() + 1
            s, e = m.span()
            if self.left is not None:
                for k in range(MAX_UNIT, 0, -1):
                    if s - k >= 0 and self.left.fullmatch(data, s - k, s):
                        s -= k
                        break
                else:
                    continue
            if self.right is not None:
                r = self.right.match(data, e)
                if r is None:
                    continue
                e = r.end()
            yield s, e


def _base64_forms(value: bytes) -> list[_Form]:
    forms = []
    for alphabet, encode in ((_B64 + b"+/", base64.b64encode),
                             (_B64 + b"-_", base64.urlsafe_b64encode)):
        edge = _any_of(alphabet)
        for a in range(3):
            # Characters entirely inside the value's bits; a partial one on either side
            # also carries some of them, so it is masked too (and must be there).
            first, end = -(-8 * a // 6), (8 * (a + len(value))) // 6
            core = encode(b"\0" * a + value + b"\0\0")[first:end]
            if len(core) >= 8:
                forms.append(_Form(core, edge if 8 * a % 6 else None,
                                   edge if 8 * (a + len(value)) % 6 else None))
    return forms


def hold_for(lengths: Iterable[int]) -> int:
    """How many bytes the scrubber always holds back for values of these lengths: one
    less than the longest match any value of those lengths could have."""
    longest = 0
    for n in lengths:
        units = max([n] + [-(-8 * (a + n) // 6) - 8 * a // 6 for a in range(3)])
        longest = max(longest, units * MAX_UNIT)
    return max(0, longest - 1)


class Masker:
    """Finds and masks every form of `values` in complete pieces of data."""

    def __init__(self, values: Iterable[bytes]):
        values = [v for v in values if v]
        self.forms = [f for v in values for f in [_Form(v)] + _base64_forms(v)]
        self.hold = hold_for(len(v) for v in values)
        self.masked = 0

    def spans(self, data: bytes | bytearray, start: int = 0) -> list[tuple[int, int]]:
        found = [span for form in self.forms for span in form.spans(data, start)]
        self.masked += len(found)
        return found

    def mask(self, data: bytes) -> bytes:
        return apply(data, self.spans(data))


def apply(data: bytes | bytearray, spans: Iterable[tuple[int, int]], offset: int = 0) -> bytes:
    """`data` with the byte ranges `spans` (shifted by -`offset`) turned into asterisks."""
    out = bytearray(data)
    for s, e in spans:
        s, e = max(0, s - offset), min(len(out), e - offset)
        if s < e:
            out[s:e] = MASK * (e - s)
    return bytes(out)


class Scrubber:
    """A masked stream: `feed` returns all but the last `hold` bytes seen (masked), a
    count that depends on nothing but lengths; `flush` returns the rest at the end of a
    message."""

    def __init__(self, masker: Masker):
        self._masker = masker
        self.hold = masker.hold
        self._pending = bytearray()
        self._base = 0  # stream offset of _pending[0]
        self._spans: list[tuple[int, int]] = []  # stream offsets, still to apply

    def feed(self, data: bytes) -> bytes:
        if not self._masker.forms:
            return data
        old = len(self._pending)
        self._pending += data
        # A match not seen before ends in the new bytes, so it starts no earlier than this.
        start = max(0, old - self.hold)
        self._spans += [(s + self._base, e + self._base)
                        for s, e in self._masker.spans(self._pending, start)]
        return self._take(max(0, len(self._pending) - self.hold))

    def flush(self) -> bytes:
        return self._take(len(self._pending))

    def _take(self, n: int) -> bytes:
        out = apply(self._pending[:n], self._spans, self._base)
        del self._pending[:n]
        self._base += n
        self._spans = [span for span in self._spans if span[1] > self._base]
        return out


class ResponseScrubber:
    """The upstream's side of an intercepted connection, masked message by message.
    `feed` takes what one read returned and gives what to send the guest (b"" for
    nothing); `eof` gives the rest when the upstream closes. After a problem `error`
    says what it was and `done` is true: the connection is to end."""

    def __init__(self, values: Iterable[bytes], next_method: Callable[[], bytes]):
        self._masker = Masker(values)
        self._body = Scrubber(self._masker)
        self._parser = http.ResponseParser(next_method, self._masker.mask)
        self._chunked = False
        self.error: str | None = None
        self.done = False

    @property
    def masked(self) -> int:
        return self._masker.masked

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        events: list = []
        out = bytearray()
        at_head = False
        try:
            self._parser.feed(data, events)
        except http.ResponseError as e:
            self.error, self.done = e.message, True
            at_head = self._parser.at_head
        for event in events:
            self._emit(event, out)
        if self.done and at_head:
            out += http.simple_response(502, f"shuru: {self.error}\n")
        return bytes(out)

    def eof(self) -> bytes:
        """The held-back rest of a close-delimited (or cut-off) body."""
        if self.done:
            return b""
        self.done = True
        if self._parser.in_body is None:
            return b""
        return self._chunk(self._body.flush())

    def _chunk(self, data: bytes) -> bytes:
        if not self._chunked or not data:
            return data
        return b"%x\r\n" % len(data) + data + b"\r\n"

    def _emit(self, event: tuple, out: bytearray) -> None:
        if event[0] == "head":  # heads and trailers come masked
            out += event[1]
            self._chunked = event[2] == http.CHUNKED
        elif event[0] == "body":
            out += self._chunk(self._body.feed(event[1]))
        else:
            out += self._chunk(self._body.flush())
            if self._chunked:
                out += b"0\r\n" + event[1] + b"\r\n"
            self._chunked = False
