"""HTTP/1.1 as far as secret injection needs it. Pure.

Requests: `rewrite_head` replaces placeholders in header values (a Basic credential in
`Authorization` or `Proxy-Authorization` is decoded, rewritten and re-encoded; the request
target only for a secret that opts in with `in_url`), asks for an uncompressed response, and
says which secrets it used. `body_framer` tells from a head how long its body is, and the
framers count body bytes as they pass, untouched, so several requests on one connection are
each found and rewritten.

Responses: `ResponseParser` splits what an intercepted upstream sends into heads, body bytes
and message ends (Content-Length, chunked, close-delimited; 1xx, HEAD, 204 and 304 without
bodies), so the scrubber can flush at message boundaries and never has to guess.

Parsing is strict where lenience would let a guest smuggle a second request past us
(conflicting lengths, bare line feeds, folded headers) and every size is bounded.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping
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


@dataclass(frozen=True)
class Injection:
    """What one placeholder becomes: the real `value` of the secret `name`, in header
    values always, in the request target only when `in_url`. Its repr never shows the
    value."""

    name: str
    value: bytes = field(repr=False)
    in_url: bool = False


# Only these carry credentials; decoding Basic anywhere else would let a guest have an
# echoing upstream hand back the value base64-encoded in a header of its choosing.
BASIC_HEADERS = (b"authorization", b"proxy-authorization")


def _replace(data: bytes, replacements: Mapping[bytes, bytes], used: set[bytes]) -> bytes:
    for placeholder, value in replacements.items():
        if placeholder in data:
            data = data.replace(placeholder, value)
            used.add(placeholder)
    return data


def _basic(value: bytes) -> tuple[bytes, bytes] | None:
    """(scheme, decoded credential) for a `Basic` value; None otherwise."""
    scheme, space, credential = value.partition(b" ")
    if not space or scheme.lower() != b"basic":
        return None
    try:
        return scheme, base64.b64decode(credential.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _rewrite_value(name: bytes, value: bytes, replacements: Mapping[bytes, bytes],
                   used: set[bytes]) -> bytes:
    basic = _basic(value) if name.lower() in BASIC_HEADERS else None
    if basic is not None:
        scheme, decoded = basic
        rewritten = _replace(decoded, replacements, used)
        if rewritten != decoded:
            return scheme + b" " + base64.b64encode(rewritten)
    return _replace(value, replacements, used)


IDENTITY = (b"Accept-Encoding", b"identity")


def rewrite_head(head: RequestHead, injections: Mapping[bytes, Injection]
                 ) -> tuple[RequestHead, set[bytes]]:
    """`head` with every placeholder (a key of `injections`) replaced by its value in
    header values, and in the request target (percent-encoded) for an `in_url` secret;
    `Accept-Encoding: identity` in place of the guest's, since a compressed response could
    not be scrubbed; and the placeholders used."""
    used: set[bytes] = set()
    in_url = {p: quote(i.value, safe="-._~").encode("ascii")
              for p, i in injections.items() if i.in_url}
    target = _replace(head.target, in_url, used)
    values = {p: i.value for p, i in injections.items()}
    headers = tuple((k, _rewrite_value(k, v, values, used)) for k, v in head.headers
                    if k.lower() != b"accept-encoding") + (IDENTITY,)
    return RequestHead(head.method, target, head.version, headers), used


def placeholders_in(head: RequestHead, placeholders) -> set[bytes]:
    """Which of `placeholders` appear anywhere in `head` (target, header values, a Basic
    credential in Authorization or Proxy-Authorization)."""
    found: set[bytes] = set()
    identity = {p: p for p in placeholders}
    _replace(head.target, identity, found)
    for k, v in head.headers:
        _rewrite_value(k, v, identity, found)
    return found


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
    """A chunked body, recognised as it passes: size lines, data, trailers. With
    `collect`, the chunk data goes to `payload` and the trailer lines to `trailers`;
    `mask` rewrites each size and trailer line before it is read."""

    def __init__(self, *, collect: bool = False, mask: Callable[[bytes], bytes] | None = None):
        self._collect = collect
        self._mask = mask
        self.payload: list[bytes] = []
        self.trailers = bytearray()
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
                if self._collect:
                    self.payload.append(bytes(data[i:i + n]))
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
        if self._mask is not None:
            line = self._mask(line)
        if not line.endswith(b"\r\n"):
            raise HTTPError("bare LF in chunked body")
        line = line[:-2]
        if self._state == "trailer":
            if not line:
                self.done = True
            elif self._collect:
                self.trailers += line + b"\r\n"
            return
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
            raise HTTPError("bad chunk size")
        self._remaining = int(size, 16)
        self._state = "data" if self._remaining else "trailer"


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


# ---- responses -------------------------------------------------------------------------

class ResponseError(Exception):
    """The upstream sent a response that cannot be framed, or one that cannot be scrubbed
    (content- or transfer-encoded, a protocol switch). Never leaves the proxy: the
    connection ends and `message` becomes its close event's reason."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]

    def values(self, name: bytes) -> list[bytes]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n\0]*)?\Z")


def parse_response_head(head: bytes) -> ResponseHead:
    """A response head through its blank line; ResponseError when it is malformed."""
    lines = head[:-4].split(b"\r\n")
    if any(b"\n" in line or b"\r" in line or b"\0" in line for line in lines):
        raise ResponseError("bare CR, LF or NUL in the upstream's response head")
    status = _STATUS_LINE.match(lines[0])
    if not status:
        raise ResponseError("malformed status line from the upstream")
    if len(lines) - 1 > MAX_HEADERS:
        raise ResponseError(f"more than {MAX_HEADERS} header fields from the upstream")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ResponseError("malformed header field from the upstream")
        headers.append((name, value.strip(b" \t")))
    return ResponseHead(int(status.group(1)), tuple(headers))


def _codings(head: ResponseHead, name: bytes) -> list[bytes]:
    return [c.strip().lower() for v in head.values(name) for c in v.split(b",") if c.strip()]


# What a response's body is framed by.
NO_BODY, LENGTH, CHUNKED, CLOSE = "none", "length", "chunked", "close"


def response_framing(head: ResponseHead, method: bytes) -> tuple[str, int]:
    """(kind, length) of the body after `head`, which answers a `method` request;
    ResponseError for ambiguous framing and for encodings the scrubber cannot see
    through (a compressed body would carry a reflected value past it)."""
    if head.status == 101:
        raise ResponseError("the upstream switched protocols, which shuru does not pass on "
                            "a host a secret is sent to")
    if head.status < 200 or method == b"HEAD" or head.status in (204, 304):
        return NO_BODY, 0
    encodings = [c for c in _codings(head, b"content-encoding") if c != b"identity"]
    if encodings:
        raise ResponseError(f"the upstream sent a compressed response (Content-Encoding: "
                            f"{b', '.join(encodings).decode('latin-1')[:64]}) although "
                            f"shuru asked for identity; it cannot be checked for secrets")
    transfer = _codings(head, b"transfer-encoding")
    lengths = head.values(b"content-length")
    if transfer:
        if transfer != [b"chunked"]:
            raise ResponseError(f"the upstream sent a transfer-encoded response "
                                f"({b', '.join(transfer).decode('latin-1')[:64]}); "
                                f"only chunked can be checked for secrets")
        if lengths:
            raise ResponseError("the upstream sent both Transfer-Encoding and Content-Length")
        return CHUNKED, 0
    if lengths:
        values = {v.strip() for joined in lengths for v in joined.split(b",")}
        if len(values) != 1 or not re.fullmatch(rb"[0-9]{1,18}", next(iter(values))):
            raise ResponseError("bad or conflicting Content-Length from the upstream")
        return LENGTH, int(next(iter(values)))
    return CLOSE, 0


class ResponseParser:
    """Splits the upstream's side of a connection into messages, as bytes arrive.

    `feed` appends events to a list: ("head", raw head, kind) for each head (1xx included),
    ("body", bytes) for body content (chunked coding removed), ("end", trailers) when a
    message is complete (trailers: the raw trailer lines of a chunked body, else b"").
    `next_method` tells which request the next final response answers. `mask` rewrites
    each head, chunk size line and trailer line before it is parsed, so what the parser
    decides never depends on a secret that landed there (heads and trailers are passed on
    masked). ResponseError ends the connection; `at_head` then says whether the guest is
    still waiting for a head.
    Buffers are bounded: a head by MAX_HEAD, a chunk line by MAX_CHUNK_LINE, trailers by
    MAX_TRAILERS; body bytes are passed on as they come.
    """

    def __init__(self, next_method: Callable[[], bytes],
                 mask: Callable[[bytes], bytes] = bytes):
        self._next_method = next_method
        self._mask = mask
        self._head = bytearray()
        self._scanned = 0
        self._kind = NO_BODY
        self._remaining = 0
        self._chunks: ChunkedFramer | None = None

    @property
    def at_head(self) -> bool:
        return self._kind == NO_BODY

    @property
    def in_body(self) -> str | None:
        """The framing of the body being read, if one is."""
        return None if self._kind == NO_BODY else self._kind

    def feed(self, data: bytes, events: list) -> None:
        while data:
            if self._kind == NO_BODY:
                data = self._feed_head(data, events)
            elif self._kind == LENGTH:
                n = min(len(data), self._remaining)
                events.append(("body", data[:n]))
                data = data[n:]
                self._remaining -= n
                if not self._remaining:
                    self._end(events, b"")
            elif self._kind == CHUNKED:
                try:
                    n = self._chunks.feed(data)
                except HTTPError as e:
                    raise ResponseError(f"broken chunked body from the upstream: "
                                        f"{e.message}") from None
                data = data[n:]
                events.extend(("body", piece) for piece in self._chunks.payload if piece)
                self._chunks.payload.clear()
                if self._chunks.done:
                    self._end(events, bytes(self._chunks.trailers))
            else:
                events.append(("body", data))
                return

    def _feed_head(self, data: bytes, events: list) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n", max(0, self._scanned - 3), MAX_HEAD + 4)
        if end < 0:
            if len(self._head) > MAX_HEAD:
                raise ResponseError(f"response head from the upstream longer than "
                                    f"{MAX_HEAD} bytes")
            self._scanned = len(self._head)
            return b""
        raw, rest = self._mask(bytes(self._head[:end + 4])), bytes(self._head[end + 4:])
        self._head.clear()
        self._scanned = 0
        head = parse_response_head(raw)
        method = self._next_method() if head.status >= 200 else b""
        kind, length = response_framing(head, method)
        events.append(("head", raw, kind))
        if kind == NO_BODY:
            events.append(("end", b""))
        elif kind == LENGTH and length == 0:
            events.append(("end", b""))
        else:
            self._kind, self._remaining = kind, length
            self._chunks = ChunkedFramer(collect=True, mask=self._mask) \
                if kind == CHUNKED else None
        return rest

    def _end(self, events: list, trailers: bytes) -> None:
        events.append(("end", trailers))
        self._kind, self._remaining, self._chunks = NO_BODY, 0, None
