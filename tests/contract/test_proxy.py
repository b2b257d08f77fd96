"""The policy proxy against real servers on 127.0.0.1: an HTTP echo server, an HTTPS echo
server with a test CA made here, a raw TCP server, and a tiny CONNECT proxy. The guest end
of each connection is one side of a socketpair, handed to `PolicyProxy.connect` the way the
agent channel hands it a guest stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import os
import socket
import ssl

import pytest
from aiohttp import web

from shuru.errors import ConfigError
from shuru.net import NetworkConfig, PolicyProxy, Secret, StreamGuestConn, network_config
from shuru.net import dns
from shuru.net.ca import CertAuthority
from shuru.net.fakeip import POOL
from shuru.net.http import basic_credential

REAL = "sk-live-REAL-VALUE-never-in-the-guest"
ENVIRON = {"REAL_KEY": REAL}


# ---- servers ----------------------------------------------------------------------------

class Servers:
    """The upstream world: everything listens on 127.0.0.1, on ports the kernel picks."""

    def __init__(self, tmp_path):
        self.ca = CertAuthority("shuru test upstream CA")
        self.cafile = str(tmp_path / "upstream-ca.pem")
        with open(self.cafile, "wb") as f:
            f.write(self.ca.cert_pem)
        self.runners: list[web.AppRunner] = []
        self.tcp_servers: list[asyncio.base_events.Server] = []
        self.connects: list[tuple[str, str | None]] = []  # (target, Proxy-Authorization)
        self.proxied: list[asyncio.Future] = []
        self.sni: list[str | None] = []  # server names TLS clients asked for
        self.seen: list[dict] = []  # the requests the echo servers received

    async def _echo(self, request: web.Request) -> web.Response:
        """Records what arrived, and sends it back (as a reflecting API would). /tail/X
        answers X as the whole body (a 404 page quoting the path); /gzip answers
        compressed whatever the client asked for."""
        body = await request.read()
        if request.path.startswith("/tail/"):
            self.seen.append({"path": request.path_qs, "headers": dict(request.headers)})
            return web.Response(body=request.path[len("/tail/"):].encode())
        if request.path.startswith("/gzip"):
            self.seen.append({"path": request.path_qs, "headers": dict(request.headers)})
            return web.Response(body=gzip.compress(request.headers.get("x-echo", "").encode()),
                                headers={"Content-Encoding": "gzip"})
        seen = {"method": request.method, "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode("latin-1"), "tls": request.secure}
        self.seen.append(seen)
        return web.json_response(seen)

    async def _site(self, ssl_context=None) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._echo)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.runners.append(runner)
        return runner.addresses[0][1]

    async def start(self) -> None:
        self.http_port = await self._site()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_verify_locations(cadata=self.ca.cert_pem.decode())
        # One certificate per name the client asks for, all from the test CA.
        def pick_certificate(ssl_object, name, _context):
            self.sni.append(name)
            ssl_object.context = self.ca.server_context(name or "localhost")

        context.sni_callback = pick_certificate
        self.https_port = await self._site(context)
        self.tcp_port = await self._tcp(self._reverse)
        self.tcp_http_port = await self._tcp(self._reverse_http)
        self.proxy_port = await self._tcp(self._connect_proxy)

    async def _tcp(self, handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        self.tcp_servers.append(server)
        return server.sockets[0].getsockname()[1]

    @staticmethod
    async def _reverse(reader, writer):
        """Reads to EOF (so it answers only after a half-close), then answers with the
        length, the digest and the bytes reversed."""
        data = await reader.read()
        writer.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode() + data[::-1])
        await writer.drain()
        writer.close()

    @staticmethod
    async def _reverse_http(reader, writer):
        """Like _reverse, answering as HTTP/1.0 with the bytes reversed as the body."""
        data = await reader.read()
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + data[::-1])
        await writer.drain()
        writer.close()

    async def _connect_proxy(self, reader, writer):
        done = asyncio.get_running_loop().create_future()
        self.proxied.append(done)
        try:
            await self._connect_proxy_run(reader, writer)
        finally:
            done.set_result(None)

    async def _connect_proxy_run(self, reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ")
        auth = next((l.split(": ", 1)[1] for l in lines[1:] if l.lower().startswith("proxy-authorization:")), None)
        self.connects.append((target, auth))
        host, port = target.rsplit(":", 1)
        assert method == "CONNECT" and host == "127.0.0.1"
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src, dst):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        writer.close()
        up_writer.close()

    def closed_port(self) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    async def close(self) -> None:
        # The proxy has aborted its side of every CONNECT by now, so each one ends.
        await asyncio.gather(*self.proxied)
        for server in self.tcp_servers:
            server.close()
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def servers(tmp_path):
    s = Servers(tmp_path)
    await s.start()
    yield s
    await s.close()


def make_proxy(servers: Servers, *, allow=("api.test", "other.test", "raw.test", "*.svc.test"),
               secret_hosts=("api.test",), environ=None, trust_test_ca=True, extra_resolve=None):
    resolve = {}
    for name in ("api.test", "other.test"):
        resolve[f"{name}:443"] = f"127.0.0.1:{servers.https_port}"
        resolve[f"{name}:80"] = f"127.0.0.1:{servers.http_port}"
    resolve["raw.test"] = "127.0.0.1"
    resolve.update(extra_resolve or {})
    config = network_config({"allow": list(allow), "resolve": resolve},
                            {"KEY": {"from": "REAL_KEY", "hosts": list(secret_hosts)}})
    proxy = PolicyProxy(config, environ={**ENVIRON, **(environ or {})},
                        upstream_cafile=servers.cafile if trust_test_ca else None)
    CREATED.append(proxy)
    return proxy


CREATED: list[PolicyProxy] = []


@pytest.fixture(autouse=True)
async def no_values_anywhere():
    """After every test, no proxy it made shows the real value in its audit log, its
    repr or its attributes' reprs; and each is closed."""
    CREATED.clear()
    yield
    for proxy in CREATED:
        await proxy.close()
        text = json.dumps(proxy.audit) + repr(proxy) + repr(proxy.__dict__)
        assert REAL not in text


@pytest.fixture
async def proxy(servers):
    return make_proxy(servers)


# ---- the guest's side -------------------------------------------------------------------

async def lookup(proxy: PolicyProxy, name: str) -> str:
    rcode, addresses = dns.read_answer(await proxy.dns(dns.build_query(name)))
    assert rcode == dns.NOERROR, name
    return addresses[0]


class Guest:
    """One captured connection: `reader`/`writer` are the guest program's socket, the
    other end runs in `proxy.connect`."""

    def __init__(self, proxy, ip, port):
        self.proxy, self.ip, self.port = proxy, ip, port

    async def open(self, *, tls: ssl.SSLContext | None = None, server_hostname=None):
        ours, theirs = socket.socketpair()
        r, w = await asyncio.open_connection(sock=theirs)
        self.task = asyncio.ensure_future(self.proxy.connect(self.ip, self.port, StreamGuestConn(r, w)))
        self.reader, self.writer = await asyncio.open_connection(
            sock=ours, ssl=tls, server_hostname=server_hostname)
        return self

    async def finish(self) -> None:
        self.writer.close()
        await self.task


async def open_guest(proxy, name, port, *, tls=None):
    ip = name if name[0].isdigit() else await lookup(proxy, name)
    return await Guest(proxy, ip, port).open(tls=tls, server_hostname=name if tls else None)


def sandbox_trust(proxy: PolicyProxy) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=proxy.ca_cert_pem.decode())
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def read_response(reader) -> tuple[int, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    return status, head, await reader.readexactly(length)


def events(proxy, kind):
    return [e for e in proxy.audit if e["event"] == kind]


# ---- DNS ----------------------------------------------------------------------------------

async def test_dns_answers_allowed_names_with_fake_ips_and_refuses_the_rest(proxy):
    ip = await lookup(proxy, "API.test.")
    assert ip in [str(a) for a in POOL.hosts()][:10]
    assert await lookup(proxy, "api.test") == ip
    assert await lookup(proxy, "deep.a.svc.test") != ip
    for name in ("evil.test", "svc.test", "api.test.evil.test"):
        assert dns.read_answer(await proxy.dns(dns.build_query(name))) == (dns.REFUSED, [])
    assert dns.read_answer(await proxy.dns(dns.build_query("api.test", dns.AAAA))) == (dns.NOERROR, [])
    assert dns.read_answer(await proxy.dns(dns.build_query("evil.test", dns.AAAA)))[0] == dns.REFUSED
    assert dns.read_answer(await proxy.dns(b"\x00\x01\x01\x00\x00\x02"))[0] == dns.FORMERR
    assert await proxy.dns(b"\x00") == b""
    denied = [e["host"] for e in events(proxy, "deny")]
    assert denied == ["evil.test", "svc.test", "api.test.evil.test", "evil.test"]
    assert {(e["host"], e["ip"], e["port"]) for e in events(proxy, "dns")} >= {("api.test", ip, 53)}


async def test_fake_ips_belong_to_one_sandbox(servers, proxy):
    other = make_proxy(servers)
    ip = await lookup(other, "raw.test")
    guest = await Guest(proxy, ip, servers.tcp_port).open()
    assert await guest.reader.read() == b""
    await guest.finish()
    assert events(proxy, "deny")[-1]["ip"] == ip


# ---- denial --------------------------------------------------------------------------------

async def test_a_hard_coded_ip_on_port_80_gets_a_403_that_says_why(proxy):
    guest = await open_guest(proxy, "127.0.0.1", 80)
    guest.writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, head, body = await read_response(guest.reader)
    assert status == 403 and b"shuru's network policy blocked 127.0.0.1" in body
    assert await guest.reader.read() == b""
    await guest.finish()
    deny = events(proxy, "deny")[-1]
    assert (deny["host"], deny["ip"], deny["port"]) == (None, "127.0.0.1", 80)
    assert "hard-coded" in deny["reason"]
    assert not events(proxy, "connect")


async def test_a_hard_coded_ip_on_port_443_gets_a_403_over_tls(proxy):
    trust = ssl.create_default_context(cadata=proxy.ca_cert_pem.decode())
    guest = await open_guest(proxy, "127.0.0.1", 443, tls=trust)  # verified: an IP SAN
    guest.writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, _, body = await read_response(guest.reader)
    await guest.finish()
    assert status == 403 and b"shuru's network policy blocked 127.0.0.1" in body
    assert events(proxy, "deny")[-1]["port"] == 443 and not events(proxy, "connect")


async def test_an_address_never_handed_out_is_closed_at_once(proxy, servers):
    guest = await open_guest(proxy, "198.18.200.1", servers.tcp_port)
    assert await guest.reader.read() == b""
    await guest.finish()
    assert events(proxy, "deny")[-1]["ip"] == "198.18.200.1"


# ---- tunnels --------------------------------------------------------------------------------

async def test_tunnel_is_byte_for_byte_and_respects_half_close(proxy, servers):
    placeholder = proxy.placeholders["KEY"].encode()
    data = os.urandom(1 << 20) + placeholder
    guest = await open_guest(proxy, "raw.test", servers.tcp_port)
    guest.writer.write(data)
    guest.writer.write_eof()  # the server answers only after it sees our EOF
    header = await guest.reader.readline()
    assert header == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    assert await guest.reader.read() == data[::-1]
    await guest.finish()
    connect, close = events(proxy, "connect")[-1], events(proxy, "close")[-1]
    assert connect["reason"] == "tunnel" and connect["host"] == "raw.test"
    assert close["bytes_up"] == len(data) and close["bytes_down"] == len(header) + len(data)
    assert not events(proxy, "inject")


async def test_placeholder_to_a_host_without_the_secret_goes_out_unchanged(proxy, servers):
    upstream_trust = ssl.create_default_context(cafile=servers.cafile)
    guest = await open_guest(proxy, "other.test", 443, tls=upstream_trust)
    # The guest talks TLS with the real server: the tunnel does not intercept.
    assert guest.writer.get_extra_info("peercert")["issuer"][-1][0][1] == "shuru test upstream CA"
    token = proxy.placeholders["KEY"]
    guest.writer.write(f"GET /?k={token} HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer {token}\r\n"
                       f"Connection: close\r\n\r\n".encode())
    await read_response(guest.reader)
    seen = servers.seen[-1]
    assert seen["path"] == f"/?k={token}" and seen["headers"]["authorization"] == f"Bearer {token}"
    await guest.finish()
    assert not events(proxy, "inject")


# ---- interception ---------------------------------------------------------------------------

async def test_intercepted_tls_injects_the_secret_in_every_request_on_a_connection(proxy, servers):
    token = proxy.placeholders["KEY"]
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    ssl_object = guest.writer.get_extra_info("ssl_object")
    assert ssl_object.selected_alpn_protocol() == "http/1.1"
    cert = guest.writer.get_extra_info("peercert")
    assert cert["subjectAltName"] == (("DNS", "api.test"),)
    assert dict(x[0] for x in cert["issuer"])["commonName"].startswith("shuru sandbox CA")

    body = f"payload with {token} stays".encode()
    chunked = b"5\r\nhello\r\n" + f"{len(token):x}\r\n{token}\r\n0\r\n\r\n".encode()
    guest.writer.write(
        f"POST /v1/x?key={token} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body +
        b"PUT /two HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nAuthorization: " +
        basic_credential("user", token) + b"\r\n\r\n" + chunked +
        b"GET /three HTTP/1.1\r\nHost: api.test\r\nX-Plain: no secret here\r\nConnection: close\r\n\r\n")
    replies = [(await read_response(guest.reader))[2] for _ in range(3)]
    await guest.finish()
    first, second, third = servers.seen

    assert first["tls"] and first["path"] == f"/v1/x?key={token}"  # URLs: opt-in only
    assert first["headers"]["authorization"] == f"Bearer {REAL}"
    assert first["headers"]["accept-encoding"] == "identity"
    assert first["body"] == body.decode()  # the body is untouched
    assert second["path"] == "/two" and second["body"] == "hello" + token
    assert second["headers"]["authorization"] == basic_credential("user", REAL).decode()
    assert third["path"] == "/three" and third["headers"]["x-plain"] == "no secret here"
    injects = events(proxy, "inject")
    assert [(e["host"], e["port"], e["secrets"]) for e in injects] == [("api.test", 443, ["KEY"])] * 2
    assert events(proxy, "connect")[-1]["reason"] == "intercept tls"
    assert servers.sni == ["api.test"]  # upstream TLS names the real host
    # The echo reflected the real value; the guest sees it masked, framing intact.
    assert all(REAL.encode() not in reply for reply in replies)
    assert json.loads(replies[0])["headers"]["authorization"] == "Bearer " + "*" * len(REAL)


async def test_a_tls_1_2_guest_is_intercepted_too(proxy, servers):
    trust = sandbox_trust(proxy)
    trust.maximum_version = ssl.TLSVersion.TLSv1_2
    guest = await open_guest(proxy, "api.test", 443, tls=trust)
    assert guest.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    guest.writer.write(f"GET / HTTP/1.1\r\nHost: api.test\r\nX-Key: {proxy.placeholders['KEY']}\r\n"
                       f"Connection: close\r\n\r\n".encode())
    await read_response(guest.reader)
    await guest.finish()
    assert servers.seen[-1]["headers"]["x-key"] == REAL


async def test_a_secret_opted_in_to_urls_is_injected_there_too(servers):
    config = network_config({"allow": ["api.test"], "resolve": {
        "api.test:443": f"127.0.0.1:{servers.https_port}"}},
        {"KEY": {"from": "REAL_KEY", "hosts": ["api.test"], "in_url": True}})
    proxy = PolicyProxy(config, environ=ENVIRON, upstream_cafile=servers.cafile)
    CREATED.append(proxy)
    token = proxy.placeholders["KEY"]
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(f"GET /v1?key={token} HTTP/1.1\r\nHost: api.test\r\n"
                       f"Connection: close\r\n\r\n".encode())
    reply = (await read_response(guest.reader))[2]
    await guest.finish()
    assert servers.seen[-1]["path"] == f"/v1?key={REAL}" and REAL.encode() not in reply


async def test_basic_is_decoded_only_in_authorization_headers(proxy, servers):
    token = proxy.placeholders["KEY"]
    encoded = base64.b64encode(token.encode()).decode()
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(f"GET / HTTP/1.1\r\nHost: api.test\r\nX-Anything: Basic {encoded}\r\n"
                       f"Connection: close\r\n\r\n".encode())
    reply = (await read_response(guest.reader))[2]
    await guest.finish()
    assert servers.seen[-1]["headers"]["x-anything"] == f"Basic {encoded}"  # untouched
    assert base64.b64encode(REAL.encode())[:-4] not in reply
    assert not events(proxy, "inject")


async def test_plain_http_never_carries_a_secret_and_says_why(proxy, servers):
    token = proxy.placeholders["KEY"]
    for header in (f"X-Key: {token}", "Authorization: " + basic_credential("u", token).decode()):
        guest = await open_guest(proxy, "api.test", 80)
        guest.writer.write(f"GET /p HTTP/1.1\r\nHost: api.test\r\n{header}\r\n\r\n".encode())
        status, _, body = await read_response(guest.reader)
        await guest.finish()
        assert status == 403 and b"the secret KEY is sent only over HTTPS" in body
        assert b"https://api.test" in body
    assert servers.seen == [] and not events(proxy, "inject")
    assert "sent only over HTTPS" in events(proxy, "close")[-1]["reason"]
    # Without a placeholder plain HTTP works, and what comes back is scrubbed all the same.
    guest = await open_guest(proxy, "api.test", 80)
    guest.writer.write(f"GET /tail/{REAL} HTTP/1.1\r\nHost: api.test\r\n"
                       f"Connection: close\r\n\r\n".encode())
    status, _, body = await read_response(guest.reader)
    await guest.finish()
    assert status == 200 and body == b"*" * len(REAL)


async def test_a_kept_alive_connection_tells_a_guessing_guest_nothing(proxy, servers):
    # The guest makes the server end each response with its guess; the old scrubber held
    # back exactly the part of the guess that began the value, so the count of missing
    # bytes told it how much it had right.
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    received = {}
    guesses = (REAL[:1], REAL[:8], REAL[:-1], "x", "sk-live-WRONG", "zzzzzzzzzzzzzz")
    for guess in guesses:
        close = "Connection: close\r\n" if guess == guesses[-1] else ""
        guest.writer.write(f"GET /tail/{guess} HTTP/1.1\r\nHost: api.test\r\n{close}\r\n"
                           .encode())
        status, head, body = await read_response(guest.reader)  # complete: nothing held
        received[guess] = body
    await guest.finish()
    assert all(body == guess.encode() for guess, body in received.items())


async def test_a_compressed_response_is_refused(proxy, servers):
    token = proxy.placeholders["KEY"]
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(f"GET /gzip HTTP/1.1\r\nHost: api.test\r\nX-Echo: {token}\r\n"
                       f"Accept-Encoding: gzip\r\n\r\n".encode())
    status, _, body = await read_response(guest.reader)
    assert await guest.reader.read() == b""
    await guest.finish()
    assert servers.seen[-1]["headers"]["Accept-Encoding"] == "identity"
    assert status == 502 and b"compressed" in body and gzip.compress(REAL.encode()) not in body
    assert "compressed" in events(proxy, "close")[-1]["reason"]


async def test_protocol_upgrades_are_refused_on_a_secret_host(proxy, servers):
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(b"GET /ws HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\n\r\n")
    status, _, body = await read_response(guest.reader)
    await guest.finish()
    assert status == 403 and b"protocol upgrades" in body and servers.seen == []


async def test_a_half_close_reaches_an_intercepted_upstream(servers):
    # Upstream here answers only once it has seen EOF, with the request reversed.
    proxy = make_proxy(servers,
                       extra_resolve={"api.test:80": f"127.0.0.1:{servers.tcp_http_port}"})
    guest = await open_guest(proxy, "api.test", 80)
    guest.writer.write(b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nabc")
    guest.writer.write_eof()
    await guest.reader.readuntil(b"\r\n\r\n")
    echoed_back = (await guest.reader.read())[::-1]
    await guest.finish()
    assert echoed_back == b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n" \
                          b"Accept-Encoding: identity\r\n\r\nabc"


async def test_a_malformed_request_to_an_intercepted_host_gets_400(proxy):
    guest = await open_guest(proxy, "api.test", 80)
    guest.writer.write(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    status, _, body = await read_response(guest.reader)
    assert status == 400 and b"Content-Length" in body
    await guest.finish()
    assert "refused the guest's request" in events(proxy, "close")[-1]["reason"]


async def test_a_request_for_another_host_never_gets_the_secret(proxy):
    # A shared front end (a CDN) routes by Host, so a Host naming somewhere else could
    # carry the real value to that somewhere else.
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(f"GET / HTTP/1.1\r\nHost: other.test\r\nX-Key: {proxy.placeholders['KEY']}\r\n"
                       f"\r\n".encode())
    status, _, body = await read_response(guest.reader)
    await guest.finish()
    assert status == 421 and b"another host than api.test" in body
    assert not events(proxy, "inject")


async def test_an_endless_request_head_is_cut_off(proxy):
    guest = await open_guest(proxy, "api.test", 80)
    guest.writer.write(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * (70 * 1024))
    status, _, _ = await read_response(guest.reader)
    await guest.finish()
    assert status == 431


async def test_a_guest_that_does_not_trust_the_sandbox_ca_gets_nothing(proxy):
    guest = Guest(proxy, await lookup(proxy, "api.test"), 443)
    with pytest.raises(ssl.SSLCertVerificationError):
        await guest.open(tls=ssl.create_default_context(), server_hostname="api.test")
    await guest.task
    assert "the sandbox CA" in events(proxy, "close")[-1]["reason"]
    assert not events(proxy, "inject")


async def test_upstream_tls_is_verified_against_the_host_trust_store_by_default(servers):
    proxy = make_proxy(servers, trust_test_ca=False)
    guest = await Guest(proxy, await lookup(proxy, "api.test"), 443).open()
    assert await guest.reader.read() == b""
    await guest.finish()
    assert "failed TLS verification" in events(proxy, "close")[-1]["reason"]


async def test_an_unreachable_upstream_on_port_80_gets_a_502(servers):
    port = servers.closed_port()
    proxy = make_proxy(servers, extra_resolve={"api.test:80": f"127.0.0.1:{port}"})
    guest = await open_guest(proxy, "api.test", 80)
    status, _, body = await read_response(guest.reader)
    await guest.finish()
    assert status == 502 and b"shuru could not reach api.test" in body
    assert "cannot connect to api.test:80" in events(proxy, "close")[-1]["reason"]


# ---- upstream proxy ---------------------------------------------------------------------------

async def test_the_hosts_https_proxy_is_used_with_connect(servers):
    environ = {"HTTPS_PROXY": f"http://who:pw@127.0.0.1:{servers.proxy_port}"}
    proxy = make_proxy(servers, environ=environ)
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(f"GET / HTTP/1.1\r\nHost: api.test\r\nX-Key: {proxy.placeholders['KEY']}\r\n"
                       f"Connection: close\r\n\r\n".encode())
    await read_response(guest.reader)
    await guest.finish()
    assert servers.seen[-1]["headers"]["x-key"] == REAL
    guest = await open_guest(proxy, "raw.test", servers.tcp_port)
    guest.writer.write_eof()
    assert (await guest.reader.read()).startswith(b"0 ")
    await guest.finish()
    auth = basic_credential("who", "pw").decode()
    assert servers.connects == [(f"127.0.0.1:{servers.https_port}", auth),
                                (f"127.0.0.1:{servers.tcp_port}", auth)]
    assert "pw" not in json.dumps(proxy.audit)


async def test_no_proxy_sends_matching_hosts_direct(servers):
    environ = {"https_proxy": f"127.0.0.1:{servers.proxy_port}", "NO_PROXY": "localhost,.api.test"}
    proxy = make_proxy(servers, environ=environ)
    guest = await open_guest(proxy, "api.test", 443, tls=sandbox_trust(proxy))
    guest.writer.write(b"GET / HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    assert (await read_response(guest.reader))[0] == 200
    await guest.finish()
    guest = await open_guest(proxy, "other.test", 443, tls=ssl.create_default_context(cafile=servers.cafile))
    guest.writer.write(b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
    assert (await read_response(guest.reader))[0] == 200
    await guest.finish()
    assert servers.connects == [(f"127.0.0.1:{servers.https_port}", None)]  # other.test only


# ---- the proxy's own surface ----------------------------------------------------------------

def test_a_missing_or_unusable_host_variable_is_a_config_error_naming_it():
    config = network_config(None, {"A": {"from": "UNSET_VAR", "hosts": ["a.io"]},
                                   "B": {"from": "BAD_VAR", "hosts": ["b.io"]}})
    with pytest.raises(ConfigError) as e:
        PolicyProxy(config, environ={"BAD_VAR": "line\r\nbreak", "HTTPS_PROXY": "socks5://x:1"})
    text = str(e.value)
    assert len(e.value.problems) == 3
    assert "secrets.A" in text and "UNSET_VAR" in text and "secrets.B" in text and "BAD_VAR" in text
    assert "line" not in text.replace("line break", "")


def test_a_value_too_short_to_be_recognised_is_refused():
    config = network_config(None, {"A": {"from": "SHORT", "hosts": ["a.io"]}})
    with pytest.raises(ConfigError) as e:
        PolicyProxy(config, environ={"SHORT": "abc1234"})
    assert e.value.problems[0].startswith("secrets.A.from:") and "shorter than 8" in str(e.value)
    assert "abc1234" not in str(e.value)


def test_a_hand_built_config_is_checked_too(tmp_path):
    config = NetworkConfig(allow=("*",), resolve={"a.io": "nowhere"},
                           secrets=(Secret("K", "REAL_KEY", ("elsewhere.io",)),))
    with pytest.raises(ConfigError) as e:
        PolicyProxy(config, environ=ENVIRON, upstream_cafile=str(tmp_path / "missing.pem"))
    fields = [p.split(" ")[0] for p in e.value.problems]
    assert fields == ["network.allow[0]", "network.resolve.a.io", "upstream_cafile"]


def test_guest_env_and_ca_bundle(servers):
    proxy = make_proxy(servers)
    token = proxy.placeholders["KEY"]
    assert token.startswith("shuru_tok_") and len(token) == len("shuru_tok_") + 32
    assert proxy.guest_env["KEY"] == token
    for var in ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE"):
        assert proxy.guest_env[var] == "/etc/ssl/certs/shuru-ca-bundle.pem"
    bundle = proxy.guest_ca_bundle()
    assert bundle.endswith(proxy.ca_cert_pem) and bundle.count(b"BEGIN CERTIFICATE") > 1
    assert b"PRIVATE KEY" not in bundle
    assert REAL not in repr(proxy) and REAL not in json.dumps(proxy.guest_env)
    assert make_proxy(servers).placeholders["KEY"] != token


async def test_close_ends_open_connections_and_refuses_new_ones(proxy, servers):
    guest = await open_guest(proxy, "raw.test", servers.tcp_port)
    guest.writer.write(b"half a conversation")
    await guest.writer.drain()
    await proxy.close()
    assert await guest.reader.read() == b""
    await guest.finish()
    assert events(proxy, "close")[-1]["host"] == "raw.test"
    guest = await open_guest(proxy, "raw.test", servers.tcp_port)
    assert await guest.reader.read() == b""
    await guest.finish()
    assert events(proxy, "deny")[-1]["reason"] == "the sandbox is stopping"


async def test_empty_allowlist_allows_every_name(servers):
    proxy = PolicyProxy(NetworkConfig(resolve={"anything.example": "127.0.0.1"}), environ={})
    guest = await open_guest(proxy, "anything.example", servers.tcp_port)
    guest.writer.write_eof()
    assert (await guest.reader.read()).startswith(b"0 ")
    await guest.finish()


async def test_connections_past_the_cap_are_refused(proxy, servers, monkeypatch):
    monkeypatch.setattr("shuru.net.proxy.MAX_CONNECTIONS", 2)
    held = [await open_guest(proxy, "raw.test", servers.tcp_port) for _ in range(2)]
    for guest in held:  # both in flight: the cap counts open sessions
        guest.writer.write(b"x")
        await guest.writer.drain()
    extra = await open_guest(proxy, "raw.test", servers.tcp_port)
    assert await extra.reader.read() == b""
    await extra.finish()
    assert "connections are open" in events(proxy, "deny")[-1]["reason"]
    for guest in held:
        guest.writer.write_eof()
        assert (await guest.reader.readline()).startswith(b"1 ")
        await guest.finish()
