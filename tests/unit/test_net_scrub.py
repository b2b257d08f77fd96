"""Masking real values in responses: the forms a server may reflect a value in, a hold-back
that depends on lengths only, responses read message by message (hostile ones included),
and the property that matters: what reaches the guest does not depend on the value."""

import base64
import html
import json
import random
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shuru.net import http
from shuru.net.scrub import Masker, ResponseScrubber, Scrubber, hold_for

VALUE = b"sk-real/value+1"


def run(scrubber: Scrubber, data: bytes, step: int) -> bytes:
    out = b"".join(scrubber.feed(data[i:i + step]) for i in range(0, len(data), step))
    return out + scrubber.flush()


def stars(n: int) -> bytes:
    return b"*" * n


# ---- forms ------------------------------------------------------------------------------

def test_values_are_masked_at_the_same_length_however_the_stream_is_split():
    data = b'{"echo": "Bearer ' + VALUE + b'", "url": "/x?k=sk-real%2Fvalue%2B1"} ' + VALUE
    expected = data.replace(VALUE, stars(len(VALUE))).replace(b"sk-real%2Fvalue%2B1", stars(19))
    for step in range(1, len(data) + 1):
        assert run(Scrubber(Masker([VALUE])), data, step) == expected, step


@pytest.mark.parametrize("form", [
    b"sk-real%2Fvalue%2b1",          # percent-encoded, lower-case hex
    b"sk-real\\/value+1",             # JSON (PHP) escapes the slash
    b"sk\\u002Dreal\\u002fvalue\\u002B1",  # JSON (.NET) escapes
    b"sk-real&#47;value&#x2B;1",      # HTML entities
    b"sk%2Dreal/value%2B1",           # some characters escaped, some not
])
def test_escaped_forms_are_masked(form):
    data = b"before " + form + b" after"
    assert Masker([VALUE]).mask(data) == b"before " + stars(len(form)) + b" after"


def b64_spans(prefix: bytes, value: bytes, suffix: bytes, encode=base64.b64encode):
    """A base64 reflection, and where the characters that carry any bit of `value` are."""
    encoded = encode(prefix + value + suffix)
    start, end = 8 * len(prefix) // 6, -(-8 * (len(prefix) + len(value)) // 6)
    return encoded, start, end


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b"x-access-token:"])
@pytest.mark.parametrize("suffix", [b"", b"!", b":pw"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_at_every_alignment_is_masked_with_the_characters_it_shares(prefix, suffix,
                                                                          encode):
    value = b"sk-\xfb\xff/real?value>>1"  # base64 of it holds + and / (- and _ in url)
    encoded, start, end = b64_spans(prefix, value, suffix, encode)
    out = Masker([value]).mask(b"Basic " + encoded + b"\r\n")
    assert out == b"Basic " + encoded[:start] + stars(end - start) + encoded[end:] + b"\r\n"


def test_escaped_base64_is_masked_too():
    value = b"sk-\xfb\xff/real?value>>1"
    encoded, start, end = b64_spans(b"u:", value, b"")
    escaped = json.dumps(encoded.decode()).replace("/", "\\/").encode()  # PHP's json_encode
    out = Masker([value]).mask(escaped)
    assert b"*" in out and value not in out
    assert base64.b64encode(value)[4:-4] not in out.replace(b"\\/", b"/")
    masked_chars = out.count(b"*")
    assert masked_chars >= end - start


def test_a_longer_value_containing_a_shorter_one_is_masked_whole():
    out = run(Scrubber(Masker([b"abcdefgh", b"xxabcdefghxx"])), b"1 xxabcdefghxx 2 abcdefgh", 3)
    assert out == b"1 " + stars(12) + b" 2 " + stars(8)


def test_no_values_pass_everything():
    assert Scrubber(Masker([])).feed(b"sk-") == b"sk-"
    assert hold_for([]) == 0


# ---- the hold-back ---------------------------------------------------------------------

def test_the_hold_back_depends_on_lengths_only():
    a, b = b"sk-" + b"A" * 20, b"/+%&" * 5 + b"xyz"  # same length, very different escapes
    assert Masker([a]).hold == Masker([b]).hold == hold_for([len(a)])
    for value in (a, b):
        scrubber = Scrubber(Masker([value]))
        hold = scrubber.hold
        # Whatever arrives (a possible start of the value or not), exactly `hold` stay back.
        assert scrubber.feed(value[:5]) == b""
        assert len(scrubber.feed(b"x" * (hold + 10))) == 15
        assert len(scrubber.feed(value[:7])) == 7
        assert len(scrubber.flush()) == hold


def test_a_guess_of_a_prefix_holds_back_as_much_as_a_wrong_guess():
    # The old scrubber held back exactly the part of the tail that began the value.
    outs = []
    for guess in (b"sk-real/", b"sk-wrong", b"zzzzzzzz"):
        scrubber = Scrubber(Masker([VALUE]))
        outs.append(len(scrubber.feed(b"." * 500 + guess)))
    assert len(set(outs)) == 1


# ---- responses, message by message ----------------------------------------------------------

def responses(data: bytes, methods=(), step: int | None = None, values=(VALUE,)):
    queue = list(methods)
    scrubber = ResponseScrubber(list(values), lambda: queue.pop(0) if queue else b"GET")
    step = step or len(data) or 1
    out = [scrubber.feed(data[i:i + step]) for i in range(0, len(data), step)]
    return b"".join(out) + scrubber.eof(), scrubber


def test_each_message_is_flushed_at_its_end_so_nothing_waits_for_the_next():
    body = b"echo: " + VALUE + b" and a tail the guest chose: sk-real"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    scrubber = ResponseScrubber([VALUE], lambda: b"GET")
    out = scrubber.feed(response)
    assert out == response.replace(VALUE, stars(len(VALUE)))  # all of it, tail included
    assert not scrubber.done


def test_heads_are_masked_and_parsed_masked():
    data = (b"HTTP/1.1 302 Found\r\nLocation: /x?k=sk-real%2Fvalue%2B1\r\nX-Echo: " + VALUE +
            b"\r\nContent-Length: 0\r\n\r\n")
    out, _ = responses(data)
    assert out == data.replace(VALUE, stars(15)).replace(b"sk-real%2Fvalue%2B1", stars(19))


def test_chunked_bodies_are_masked_across_chunks_and_rechunked():
    body = b'{"headers": {"authorization": "Bearer ' + VALUE + b'"}}'
    chunks = b"".join(b"%x\r\n" % len(body[i:i + 7]) + body[i:i + 7] + b"\r\n"
                      for i in range(0, len(body), 7))
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks +
            b"0\r\nX-Trailer: " + VALUE + b"\r\n\r\n")
    for step in (1, 5, len(data)):
        out, scrubber = responses(data, step=step)
        assert scrubber.error is None and VALUE not in out
        head, _, rest = out.partition(b"\r\n\r\n")
        decoded, trailers = dechunk(rest)
        assert decoded == body.replace(VALUE, stars(15))
        assert trailers == b"X-Trailer: " + stars(15) + b"\r\n"


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    out = b""
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            return out, data[:-2]
        out += data[:size]
        assert data[size:size + 2] == b"\r\n"
        data = data[size + 2:]


def test_pipelined_responses_head_204_304_1xx_and_close_delimited():
    data = (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # answers HEAD: no body
            b"HTTP/1.1 204 No Content\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n"
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end " + VALUE)
    out, scrubber = responses(data, methods=[b"POST", b"HEAD", b"GET", b"GET", b"GET"], step=3)
    assert out == data.replace(VALUE, stars(15)) and scrubber.error is None


@pytest.mark.parametrize("head, fragment", [
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\n", b"compressed"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", b"transfer-encoded"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", b"Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", b"Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", b"Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", b"both"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", b"switched"),
    (b"HTTP/2 200\r\n\r\n", b"status line"),
    (b"HTTP/1.1 200 OK\r\nBad header\r\n\r\n", b"header field"),
    (b"HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n", b"bare"),
])
def test_responses_that_cannot_be_scrubbed_are_refused_with_a_502(head, fragment):
    out, scrubber = responses(head + b"abc" + VALUE)
    assert scrubber.done and scrubber.error
    assert out.startswith(b"HTTP/1.1 502 Bad Gateway\r\n") and fragment in out
    assert VALUE not in out and b"abc" not in out


def test_a_huge_head_is_refused_once_it_passes_the_bound():
    scrubber = ResponseScrubber([VALUE], lambda: b"GET")
    assert scrubber.feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (http.MAX_HEAD - 100)) == b""
    out = scrubber.feed(b"a" * 200)
    assert out.startswith(b"HTTP/1.1 502") and b"longer than" in out and scrubber.done
    assert scrubber.feed(b"more") == b""


@pytest.mark.parametrize("body, fragment", [
    (b"zz\r\n", "bad chunk size"),
    (b"5\r\nhelloXX", "CRLF"),
    (b"1" * (http.MAX_CHUNK_LINE + 1), "too long"),
    (b"5;" + b"e" * (http.MAX_CHUNK_LINE + 10), "too long"),
    (b"0\r\n" + b"X: y\r\n" * (http.MAX_TRAILERS // 6 + 1), "trailers too long"),
])
def test_broken_chunked_bodies_end_the_connection(body, fragment):
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    out, scrubber = responses(data, step=1000)
    assert scrubber.done and fragment in scrubber.error
    assert out == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # then the end


def test_a_cut_off_body_gets_its_held_back_bytes_at_eof():
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort " + VALUE
    out, scrubber = responses(data)
    assert out == data.replace(VALUE, stars(15)) and scrubber.done


def test_buffers_stay_bounded():
    # A body of any size passes in pieces no larger than a read plus the hold-back.
    scrubber = ResponseScrubber([VALUE], lambda: b"GET")
    scrubber.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
    for _ in range(100):
        assert len(scrubber.feed(b"x" * 65536)) <= 65536 + scrubber._body.hold
        assert len(scrubber._body._pending) == scrubber._body.hold


# ---- the property: the response path is not an oracle --------------------------------------

SPECIALS = b"/+-_.~=:@ !\"&<>'%"
ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


@st.composite
def value_pair(draw):
    """Two random values of the same length. Text-like pairs have their special characters
    at the same places (so every escape has the same length in both); binary pairs are any
    bytes a header may hold. Random, not chosen: the guest does not choose the value, and
    a guest-chosen string that happens to be the value is a correct guess, which masking
    necessarily confirms."""
    n = draw(st.integers(8, 48))
    rng = random.Random(draw(st.integers(0, 2 ** 64)))
    if draw(st.booleans()):
        shape = [rng.choice(SPECIALS) if rng.random() < 0.3 else None for _ in range(n)]
        pick = lambda: bytes(c if c is not None else rng.choice(ALNUM) for c in shape)  # noqa
        return pick(), pick(), True
    allowed = [b for b in range(256) if b not in b"\r\n\0"]
    pick = lambda: bytes(rng.choice(allowed) for _ in range(n))  # noqa
    return pick(), pick(), False


def render(piece, value: bytes) -> bytes:
    if isinstance(piece, bytes):
        return piece
    encoding, prefix, suffix = piece
    return {
        "raw": lambda: prefix + value + suffix,
        "b64": lambda: base64.b64encode(prefix + value + suffix),
        "b64url": lambda: base64.urlsafe_b64encode(prefix + value + suffix),
        "pct": lambda: quote(prefix + value + suffix, safe="").encode(),
        "json": lambda: json.dumps((prefix + value + suffix).decode("latin-1"))
        .replace("/", "\\/").encode(),
        "html": lambda: html.escape((prefix + value + suffix).decode("latin-1")).encode("latin-1"),
    }[encoding]()


SAFE = st.binary(max_size=12).map(lambda b: bytes(c for c in b if c not in b"\r\n\0"))


def pieces(text: bool, in_head: bool):
    # Each encoding's length must not depend on the value (else the upstream itself tells
    # values apart): escapes only for text-like pairs, whose specials sit at the same places.
    encodings = ["b64", "b64url"] + (["raw", "pct", "json", "html"] if text else [])
    if not in_head:
        encodings += ["raw"]
    ref = st.tuples(st.sampled_from(encodings), SAFE, SAFE)
    literal = SAFE if in_head else st.binary(max_size=40)
    return st.lists(st.one_of(literal, ref), max_size=4)


@st.composite
def upstream(draw, text: bool):
    """An upstream's side of a connection as a function of the value: responses a
    reflecting server could send (the value in header values and bodies, in any of the
    encodings), or, half the time, bytes with no HTTP structure at all."""
    if draw(st.integers(0, 3)) == 0:
        return draw(pieces(text, in_head=False)), []
    stream, methods = [], []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            stream.append(b"HTTP/1.1 100 Continue\r\n\r\n")
        status = draw(st.sampled_from([200, 404, 204, 304, 500]))
        method = draw(st.sampled_from([b"GET", b"GET", b"HEAD", b"POST"]))
        methods.append(method)
        stream.append(b"HTTP/1.1 %d Reason\r\nX-Echo: " % status)
        stream += draw(pieces(text, in_head=True))
        body = draw(pieces(text, in_head=False))
        framing = draw(st.sampled_from(["length", "chunked", "close"]))
        if framing == "length":
            stream.append(("length", body))
        elif framing == "chunked":
            stream.append(("chunked", body, draw(st.lists(st.integers(1, 30), min_size=1))))
        else:
            stream.append(b"\r\n\r\n")
            stream += body
            break
    return stream, methods


def materialise(stream, value: bytes) -> bytes:
    out = b""
    for piece in stream:
        if isinstance(piece, tuple) and piece[0] == "length":
            body = b"".join(render(p, value) for p in piece[1])
            out += b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        elif isinstance(piece, tuple) and piece[0] == "chunked":
            body = b"".join(render(p, value) for p in piece[1])
            out += b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            i, sizes = 0, piece[2]
            while i < len(body):
                size = sizes[i % len(sizes)]
                out += b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n"
                i += size
            out += b"0\r\n\r\n"
        else:
            out += render(piece, value)
    return out


def scrubbed(data: bytes, reads: list[int], methods: list[bytes], values) -> list[bytes]:
    """What the guest receives, send by send, when the upstream's reads return pieces of
    `data` of the sizes in `reads` (repeated)."""
    queue = list(methods)
    scrubber = ResponseScrubber(values, lambda: queue.pop(0) if queue else b"GET")
    sends, i, k = [], 0, 0
    while i < len(data) and not scrubber.done:
        n = reads[k % len(reads)]
        sends.append(scrubber.feed(data[i:i + n]))
        i, k = i + n, k + 1
    sends.append(scrubber.eof())
    return sends


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_what_reaches_the_guest_does_not_depend_on_the_value(data):
    a, b, text = data.draw(value_pair())
    assume(a != b)
    stream, methods = data.draw(upstream(text))
    reads = data.draw(st.lists(st.integers(1, 300), min_size=1, max_size=5))
    out_a = scrubbed(materialise(stream, a), reads, methods, [a])
    out_b = scrubbed(materialise(stream, b), reads, methods, [b])
    # The same bytes in the same sends: the guest cannot tell the two values apart.
    assert out_a == out_b
    joined = b"".join(out_a)
    assert a not in joined and base64.b64encode(a)[4:-4] not in joined
