"""Masking real secret values in what intercepted hosts send back. Pure.

A server that reflects its request (an echo endpoint, an error message quoting a header)
would otherwise hand the guest the very value it must never see. `Scrubber` replaces every
occurrence, as sent and percent-encoded, with asterisks of the same length, so response
framing (Content-Length, chunk sizes) stays valid. It holds back only a tail that could
still become a value, so streamed responses are not delayed. It cannot see into
compressed or otherwise re-encoded bodies; it is a second line, not the promise.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import quote


class Scrubber:
    def __init__(self, values: Iterable[bytes]):
        forms = set()
        for value in values:
            if value:
                forms.add(value)
                forms.add(quote(value, safe="-._~").encode("ascii"))
        # Longest first, so a value containing another is masked whole.
        self._forms = sorted(forms, key=len, reverse=True)
        self._tail = b""
        self.masked = 0

    def _held(self, data: bytes) -> int:
        """How many bytes at the end of `data` could be the start of a value."""
        for k in range(min(len(data), max((len(f) for f in self._forms), default=1) - 1), 0, -1):
            suffix = data[-k:]
            if any(form.startswith(suffix) for form in self._forms):
                return k
        return 0

    def feed(self, data: bytes) -> bytes:
        """The bytes that can go to the guest now."""
        if not self._forms:
            return data
        data = self._tail + data
        for form in self._forms:
            if form in data:
                self.masked += data.count(form)
                data = data.replace(form, b"*" * len(form))
        held = self._held(data)
        self._tail = data[len(data) - held:] if held else b""
        return data[:len(data) - held]

    def flush(self) -> bytes:
        """What was held back, at the end of the stream."""
        tail, self._tail = self._tail, b""
        return tail
