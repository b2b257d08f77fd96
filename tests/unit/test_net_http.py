"""Request heads: placeholder rewriting (headers, Basic auth, URLs by opt-in) and body
framing; response heads and framing, hostile ones included."""

import base64

import pytest

from shuru.net import http

TOKEN = b"shuru_tok_0123456789abcdef0123456789abcdef"
OTHER = b"shuru_tok_ffffffffffffffffffffffffffffffff"
REAL = b"sk-real/value+1"
REPLACEMENTS = {TOKEN: http.Injection("KEY", REAL)}
IN_URL = {TOKEN: http.Injection("KEY", REAL, in_url=True)}


def head(text: bytes) -> http.RequestHead:
    end = http.head_end(text)
    assert end == len(text)
    return http.parse_head(text)


def test_header_values_are_rewritten_and_reported_and_the_url_is_not_by_default():
    target = b"/v1/x?key=" + TOKEN + b"&o=" + OTHER
    h = head(b"GET " + target + b" HTTP/1.1\r\nHost: api.x.io\r\n"
             b"Authorization: Bearer " + TOKEN + b"\r\nX-Other: " + OTHER + b"\r\n\r\n")
    new, used = http.rewrite_head(h, REPLACEMENTS)
    assert used == {TOKEN}
    assert new.target == target  # URLs end up in logs and redirects: opt-in only
    assert new.values(b"authorization") == [b"Bearer " + REAL]
    assert new.values(b"x-other") == [OTHER]  # not ours to replace: unchanged
    assert REAL not in new.encode().split(b"\r\n")[0]


def test_the_url_is_rewritten_for_a_secret_that_opts_in():
    h = head(b"GET /v1/x?key=" + TOKEN + b" HTTP/1.1\r\nX-Key: " + TOKEN + b"\r\n\r\n")
    new, used = http.rewrite_head(h, IN_URL)
    # In the URL the value is percent-encoded, as a client would have sent it.
    assert new.target == b"/v1/x?key=sk-real%2Fvalue%2B1" and used == {TOKEN}
    assert new.values(b"x-key") == [REAL]
    assert http.rewrite_head(head(b"GET /?k=" + TOKEN + b" HTTP/1.1\r\n\r\n"),
                             IN_URL)[1] == {TOKEN}
    assert http.rewrite_head(head(b"GET /?k=" + TOKEN + b" HTTP/1.1\r\n\r\n"),
                             REPLACEMENTS)[1] == set()


def test_every_rewritten_head_asks_for_an_uncompressed_response():
    h = head(b"GET / HTTP/1.1\r\nAccept-Encoding: gzip, br\r\naccept-encoding: zstd\r\n"
             b"X: y\r\n\r\n")
    new, used = http.rewrite_head(h, {})
    assert new.values(b"accept-encoding") == [b"identity"] and not used
    assert new.values(b"x") == [b"y"]


@pytest.mark.parametrize("name", [b"Authorization", b"Proxy-Authorization", b"authorization"])
def test_basic_auth_is_decoded_rewritten_and_reencoded(name):
    h = head(b"GET / HTTP/1.1\r\n" + name + b": "
             + http.basic_credential("x-access-token", TOKEN.decode()) + b"\r\n\r\n")
    new, used = http.rewrite_head(h, REPLACEMENTS)
    scheme, credential = new.values(name)[0].split(b" ")
    assert scheme == b"Basic" and used == {TOKEN}
    assert base64.b64decode(credential) == b"x-access-token:" + REAL


def test_basic_is_decoded_in_no_other_header():
    # An upstream that echoes X-Anything would hand back the value base64-encoded.
    for name in (b"X-Anything", b"Cookie", b"WWW-Authenticate"):
        value = b"Basic " + base64.b64encode(TOKEN)
        new, used = http.rewrite_head(head(b"GET / HTTP/1.1\r\n" + name + b": " + value
                                           + b"\r\n\r\n"), REPLACEMENTS)
        assert new.values(name) == [value] and not used


def test_placeholders_are_found_wherever_they_are():
    basic = http.basic_credential("u", TOKEN.decode())
    found = http.placeholders_in(
        head(b"GET /?" + OTHER + b" HTTP/1.1\r\nAuthorization: " + basic + b"\r\n\r\n"),
        [TOKEN, OTHER])
    assert found == {TOKEN, OTHER}
    assert http.placeholders_in(head(b"GET / HTTP/1.1\r\nX: y\r\n\r\n"), [TOKEN]) == set()


def test_an_injection_never_shows_its_value():
    assert REAL not in repr(http.Injection("KEY", REAL)).encode()


def test_basic_auth_without_a_placeholder_is_left_byte_for_byte():
    original = b"basic  dXNlcjpwYXNz"
    h = head(b"GET / HTTP/1.1\r\nAuthorization: " + original + b"\r\n\r\n")
    new, used = http.rewrite_head(h, REPLACEMENTS)
    assert new.values(b"authorization") == [original] and not used
    garbage = head(b"GET / HTTP/1.1\r\nAuthorization: Basic !!notbase64\r\n\r\n")
    assert http.rewrite_head(garbage, REPLACEMENTS)[0].headers[0] == garbage.headers[0]


def test_a_head_with_no_placeholder_keeps_everything_but_accept_encoding():
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
    new, used = http.rewrite_head(head(raw), REPLACEMENTS)
    assert new.encode() == raw[:-2] + b"Accept-Encoding: identity\r\n\r\n" and not used


def test_head_end_waits_and_bounds():
    assert http.head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1
    assert http.head_end(b"GET / HTTP/1.1\r\n\r\nBODY") == 18
    with pytest.raises(http.HTTPError) as e:
        http.head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_HEAD)
    assert e.value.status == 431


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n",          # bare LF
    b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",     # obsolete folding
    b"GET /  HTTP/1.1\r\n\r\n",                        # extra space
    b"GET / HTTP/2\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (http.MAX_HEADERS + 1) + b"\r\n",
])
def test_malformed_heads_are_refused(raw):
    with pytest.raises(http.HTTPError):
        http.parse_head(raw)


@pytest.mark.parametrize("headers", [
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\nContent-Length: 4\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
])
def test_ambiguous_body_framing_is_refused(headers):
    with pytest.raises(http.HTTPError):
        http.body_framer(head(b"POST / HTTP/1.1\r\n" + headers + b"\r\n"))


def test_content_length_framing():
    framer = http.body_framer(head(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"))
    assert framer.feed(b"abc") == 3 and not framer.done
    assert framer.feed(b"deGET /") == 2 and framer.done
    assert http.body_framer(head(b"GET / HTTP/1.1\r\n\r\n")).done


def test_chunked_framing_finds_the_end_exactly_however_it_is_split():
    body = b"5;ext=1\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer: t\r\n\r\n"
    after = b"GET /next HTTP/1.1\r\n\r\n"
    for step in (1, 2, 7, len(body) + len(after)):
        framer = http.body_framer(head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"))
        data, consumed = body + after, 0
        while not framer.done:
            piece = data[consumed:consumed + step]
            consumed += framer.feed(piece)
        assert consumed == len(body), step


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXX", b"5\nhello\r\n",
                                  b"1" * (http.MAX_CHUNK_LINE + 1)])
def test_broken_chunked_bodies_are_refused(body):
    with pytest.raises(http.HTTPError):
        http.ChunkedFramer().feed(body)


def test_upgrade_and_connect_leave_http():
    assert http.is_upgrade(head(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"))
    assert http.is_upgrade(head(b"CONNECT a:443 HTTP/1.1\r\n\r\n"))
    assert not http.is_upgrade(head(b"GET / HTTP/1.1\r\n\r\n"))


def test_simple_response_is_complete():
    response = http.simple_response(403, "blocked x\n")
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"Content-Length: 10\r\n" in response and response.endswith(b"\r\n\r\nblocked x\n")


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: api.x.io\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: API.X.IO.:443\r\n\r\n",
    b"GET http://api.x.io:80/a?b HTTP/1.1\r\nHost: api.x.io\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
])
def test_requests_addressed_to_the_connections_host_pass(raw):
    http.check_authority(head(raw), "api.x.io")


@pytest.mark.parametrize("raw, status", [
    (b"GET / HTTP/1.1\r\nHost: evil.io\r\n\r\n", 421),
    (b"GET / HTTP/1.1\r\nHost: api.x.io.evil.io\r\n\r\n", 421),
    (b"GET http://evil.io/ HTTP/1.1\r\nHost: api.x.io\r\n\r\n", 421),
    (b"GET http://api.x.io@evil.io/ HTTP/1.1\r\nHost: api.x.io\r\n\r\n", 421),
    (b"GET / HTTP/1.1\r\nHost: api.x.io\r\nHost: evil.io\r\n\r\n", 400),
])
def test_requests_addressed_elsewhere_are_refused(raw, status):
    with pytest.raises(http.HTTPError) as e:
        http.check_authority(head(raw), "api.x.io")
    assert e.value.status == status


def test_head_end_resumes_where_it_stopped_even_across_the_terminator():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY"
    buffer, scanned, end = bytearray(), 0, -1
    for byte in raw:
        buffer.append(byte)
        end = http.head_end(buffer, scanned - 3)
        if end >= 0:
            break
        scanned = len(buffer)  # as the proxy does: the length before the next read
    assert end == len(raw) - 4
