"""HTTP/1.1 request heads and bodies, as far as secret injection needs them. Pure.

`rewrite_head` replaces placeholders in the request target and in header values (a Basic
`Authorization` credential is decoded, rewritten and re-encoded) and says which secrets it
used. `body_framer` tells from a head how long its body is, and the framers count body bytes
as they pass, untouched, so several requests on one connection are each found and rewritten.
Parsing is strict where lenience would let a guest smuggle a second request past us
(conflicting lengths, bare line feeds, folded headers) and every size is bounded.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote

from ..errors import HTTPError
from . import names

MAX_HEAD = 64 * 1024
MAX_HEADERS = 256
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VERSION = re.compile(rb"HTTP/1\.[01]\Z")


@dataclass(frozen=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def values(self, name: bytes) -> list[bytes]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def encode(self) -> bytes:
        lines = [b" ".join((self.method, self.target, self.version))]
        lines += [k + b": " + v for k, v in self.headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"


def head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The length of the head at the start of `buffer` (through the blank line), or -1
    while it is incomplete. HTTPError once it is longer than MAX_HEAD. `start` is where
    to resume looking (the old length minus 3), so a head trickling in byte by byte costs
    linear time, not quadratic."""
    end = buffer.find(b"\r\n\r\n", max(0, start), MAX_HEAD + 4)
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HTTPError(f"request head longer than {MAX_HEAD} bytes", status=431)
        return -1
    return end + 4


def parse_head(head: bytes) -> RequestHead:
    """A request head (as `head_end` delimited it). HTTPError when it is malformed."""
    lines = head[:-4].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line or b"\0" in line for line in lines):
        raise HTTPError("bare CR, LF or NUL in the request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1] \
            or not _VERSION.match(parts[2]):
        raise HTTPError("malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HTTPError(f"more than {MAX_HEADERS} header fields", status=431)
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise HTTPError("malformed header field (or obsolete line folding)")
        headers.append((name, value.strip(b" \t")))
    return RequestHead(parts[0], parts[1], parts[2], tuple(headers))


def _replace(data: bytes, replacements: Mapping[bytes, bytes], used: set[bytes]) -> bytes:
    for placeholder, value in replacements.items():
        if placeholder in data:
            data = data.replace(placeholder, value)
            used.add(placeholder)
    return data


def _rewrite_value(value: bytes, replacements: Mapping[bytes, bytes], used: set[bytes]) -> bytes:
    scheme, space, credential = value.partition(b" ")
    if space and scheme.lower() == b"basic":
        try:
            decoded = base64.b64decode(credential.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = None
        if decoded is not None:
            rewritten = _replace(decoded, replacements, used)
            if rewritten != decoded:
                return scheme + b" " + base64.b64encode(rewritten)
    return _replace(value, replacements, used)


def rewrite_head(head: RequestHead, replacements: Mapping[bytes, bytes]
                 ) -> tuple[RequestHead, set[bytes]]:
    """`head` with every placeholder (a key of `replacements`) replaced by its value, in
    the request target (percent-encoded) and in header values; and the placeholders used."""
    used: set[bytes] = set()
    in_url = {p: quote(v, safe="-._~").encode("ascii") for p, v in replacements.items()}
    target = _replace(head.target, in_url, used)
    headers = tuple((k, _rewrite_value(v, replacements, used)) for k, v in head.headers)
    return RequestHead(head.method, target, head.version, headers), used


def basic_credential(user: str, password: str) -> bytes:
    """The value of an `Authorization` header for Basic auth."""
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


# ---- bodies ----------------------------------------------------------------------------

class LengthFramer:
    """A body of a known length."""

    def __init__(self, length: int):
        self.remaining = length

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def feed(self, data: bytes | memoryview) -> int:
        """How many bytes at the start of `data` belong to the body."""
        n = min(len(data), self.remaining)
        self.remaining -= n
        return n


class ChunkedFramer:
    """A chunked body, recognised as it passes: size lines, data, trailers."""

    def __init__(self):
        self._state = "size"
        self._line = bytearray()
        self._remaining = 0
        self._trailer_bytes = 0
        self.done = False

    def feed(self, data: bytes | memoryview) -> int:
        """How many bytes at the start of `data` belong to the body; HTTPError if the
        chunked coding is broken."""
        data = memoryview(data)
        i = 0
        while i < len(data) and not self.done:
            if self._state == "data":
                n = min(len(data) - i, self._remaining)
                i += n
                self._remaining -= n
                if self._remaining == 0:
                    self._state = "crlf"
                continue
            byte = data[i]
            i += 1
            self._line.append(byte)
            if self._state == "crlf":
                if len(self._line) == 2:
                    if self._line != b"\r\n":
                        raise HTTPError("chunk data not followed by CRLF")
                    self._line.clear()
                    self._state = "size"
                continue
            if self._state == "trailer":
                self._trailer_bytes += 1
                if self._trailer_bytes > MAX_TRAILERS:
                    raise HTTPError("chunked trailers too long")
            elif len(self._line) > MAX_CHUNK_LINE:
                raise HTTPError("chunk size line too long")
            if byte == 0x0A:
                self._end_line()
        return i

    def _end_line(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r\n"):
            raise HTTPError("bare LF in chunked body")
        line = line[:-2]
        if self._state == "trailer":
            if not line:
                self.done = True
            return
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
            raise HTTPError("bad chunk size")
        self._remaining = int(size, 16)
        self._state = "data" if self._remaining else "trailer"


class RestFramer:
    """Everything until the guest stops sending (after an Upgrade the connection is no
    longer HTTP, so nothing more is rewritten)."""

    done = False

    def feed(self, data: bytes | memoryview) -> int:
        return len(data)


def _host_of(authority: bytes) -> str:
    authority = authority.strip().lower().decode("latin-1")
    if authority.startswith("["):
        return authority[1:].partition("]")[0]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


def check_authority(head: RequestHead, host: str) -> None:
    """HTTPError (421) unless every authority in `head` (the Host header, an absolute-form
    target) names `host`. Secrets go only to the host the connection was opened for;
    a different Host on a shared front end (a CDN) could route them somewhere else."""
    authorities = head.values(b"host")
    if len(authorities) > 1:
        raise HTTPError("more than one Host header")
    target = head.target
    if b"://" in target[:16]:
        authorities.append(target.split(b"://", 1)[1].split(b"/", 1)[0].split(b"?", 1)[0])
    for authority in authorities:
        if authority.rpartition(b"@")[2] != authority or \
                names.normalize(_host_of(authority)) != host:
            raise HTTPError(f"the request is addressed to another host than {host}",
                            status=421)


def body_framer(head: RequestHead):
    """The framer for the body that follows `head`; HTTPError for ambiguous framing."""
    encodings = b",".join(head.values(b"transfer-encoding"))
    lengths = head.values(b"content-length")
    if encodings:
        if lengths:
            raise HTTPError("both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for c in encodings.split(b",") if c.strip()]
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            raise HTTPError("a request's Transfer-Encoding must end with chunked")
        return ChunkedFramer()
    if lengths:
        values = {v.strip() for joined in lengths for v in joined.split(b",")}
        if len(values) != 1 or not re.fullmatch(rb"[0-9]{1,18}", next(iter(values))):
            raise HTTPError("bad or conflicting Content-Length")
        return LengthFramer(int(next(iter(values))))
    return LengthFramer(0)


def is_upgrade(head: RequestHead) -> bool:
    """Whether the guest asks to leave HTTP/1.1 (WebSocket, h2c) or tunnel (CONNECT)."""
    return head.method == b"CONNECT" or bool(head.values(b"upgrade"))


REASONS = {400: "Bad Request", 403: "Forbidden", 421: "Misdirected Request",
           431: "Request Header Fields Too Large", 502: "Bad Gateway"}


def simple_response(status: int, body: str) -> bytes:
    """A complete `Connection: close` response with a plain-text body."""
    data = body.encode()
    return (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
