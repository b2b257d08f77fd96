"""The guest plays the attacker against its own secret, on a real VM (issue 11, findings 2-4).

The "internet" is a reflecting server on the host's 127.0.0.1, reached from the guest by name
through `network.resolve`: HTTPS with a test CA the host trusts (SSL_CERT_FILE), and plain
HTTP for port 80. Unlike test_network's echo servers it reflects the real value as it
arrived, as a hostile-enough upstream would, so only the proxy stands between the value and
the guest:

- prefix guessing on one kept-alive connection (`/tail/X` answers X as its whole body): a
  guest that counts the bytes it gets for each guess must learn nothing;
- encoded reflections: a Basic credential in a header of the guest's choosing, a Basic
  credential in Authorization echoed back, a compressed echo;
- plain HTTP: a placeholder sent to port 80 never becomes the value on the wire.
"""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import ssl

import pytest
import pytest_asyncio
from aiohttp import web

from shuru import AsyncSandbox
from shuru.net.ca import CertAuthority, host_trust_store

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]

ALPHABET = "real-0123456789abcdef"
TOKEN = "real-" + secrets.token_hex(6)  # short, so the old code's leak shows within a minute
TOKEN_VAR = "SHURU_TEST_ATTACK_TOKEN"
HOST = "api.test"

# Runs in the guest. The prefix attack as it was reproduced: one kept-alive TLS connection,
# a request per guess, and the bytes of the answer counted against what the head promises.
# A guess the scrubber holds back bytes for is a prefix of the value: extend it and go on.
ATTACK = r'''
import json, os, socket, ssl, sys

HOST, ALPHABET, LENGTH = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context()
sock = ctx.wrap_socket(socket.create_connection((HOST, 443), timeout=60), server_hostname=HOST)

def ask(guess):
    sock.sendall(f"GET /tail/{guess} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    data = b""
    sock.settimeout(60)
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")][0]
                 .split(b":")[1])
    sock.settimeout(1.0)  # a held-back tail never comes while we wait for the next answer
    try:
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except socket.timeout:
        pass
    return length - len(body), body

learned, missing, requests = "", set(), 0
while len(learned) < LENGTH:
    best = None
    for c in ALPHABET:
        short, body = ask(learned + c)
        requests += 1
        missing.add(short)
        if short and (best is None or short > best[0]):
            best = (short, c)
        # (Bytes held back arrive ahead of the next answer's head; its parse skips them.)
    if best is None:
        break
    learned += best[1]
print(json.dumps({"learned": learned, "missing": sorted(missing), "requests": requests}))
'''

REFLECT = r'''
import base64, gzip, http.client, json, os, sys
HOST = sys.argv[1]
token = os.environ["API_TOKEN"]
out = {}
conn = http.client.HTTPSConnection(HOST, 443, timeout=60)
basic_any = "Basic " + base64.b64encode(token.encode()).decode()
basic_auth = "Basic " + base64.b64encode(b"x-access-token:" + token.encode()).decode()
conn.request("GET", "/echo", headers={"X-Anything": basic_any, "Authorization": basic_auth,
                                      "X-Key": token})
r = conn.getresponse()
out["echo"] = {"status": r.status, "body": r.read().decode("latin-1"), "sent_any": basic_any}
conn.request("GET", "/gzip", headers={"Authorization": "Bearer " + token,
                                      "Accept-Encoding": "gzip"})
r = conn.getresponse()
body = r.read()
try:
    body = gzip.decompress(body)
except Exception:
    pass
out["gzip"] = {"status": r.status, "body": body.decode("latin-1")}
plain = http.client.HTTPConnection(HOST, 80, timeout=60)
plain.request("GET", "/plain", headers={"Authorization": "Bearer " + token})
r = plain.getresponse()
out["plain"] = {"status": r.status, "body": r.read().decode("latin-1")}
print(json.dumps(out))
'''


class Reflector:
    """HTTPS and HTTP on 127.0.0.1 that hand back what they were sent, real value and all;
    `seen` is every request's path and headers, as they arrived."""

    def __init__(self, tmp):
        self.ca = CertAuthority("shuru attack test CA")
        self.trust_file = tmp / "host-trust.pem"
        self.trust_file.write_bytes(host_trust_store().rstrip(b"\n") + b"\n" + self.ca.cert_pem)
        self.runners: list[web.AppRunner] = []
        self.seen: list[dict] = []

    async def _handle(self, request: web.Request) -> web.Response:
        headers = dict(request.headers)
        self.seen.append({"path": request.path_qs, "headers": headers, "tls": request.secure})
        if request.path.startswith("/tail/"):
            return web.Response(body=request.path[len("/tail/"):].encode())
        body = json.dumps(headers).encode()
        if request.path == "/gzip":  # compressed whatever the client asked for
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return web.Response(body=body, content_type="application/json")

    async def _site(self, context=None) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        self.runners.append(runner)
        return runner.addresses[0][1]

    async def start(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        named = self.ca.server_context(HOST)
        context.sni_callback = lambda conn, name, _: setattr(conn, "context", named)
        self.https = await self._site(context)
        self.http = await self._site()

    def resolve(self) -> dict[str, str]:
        return {HOST: "127.0.0.1", f"{HOST}:443": f"127.0.0.1:{self.https}",
                f"{HOST}:80": f"127.0.0.1:{self.http}"}

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reflector(tmp_path_factory):
    r = Reflector(tmp_path_factory.mktemp("attack"))
    await r.start()
    yield r
    await r.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb(reflector):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_VAR, TOKEN)
        mp.setenv("SSL_CERT_FILE", str(reflector.trust_file))  # the host trusts the test CA
        sandbox = await AsyncSandbox.start(
            allow_net=True, network={"allow": [HOST], "resolve": reflector.resolve()},
            secrets={"API_TOKEN": {"from": TOKEN_VAR, "hosts": [HOST]}})
        try:
            await sandbox.files.write("/root/attack.py", ATTACK)
            await sandbox.files.write("/root/reflect.py", REFLECT)
            yield sandbox
        finally:
            await sandbox.stop()


def forms(value: str) -> list[bytes]:
    """The value as sent and the base64 of it at each alignment (inner characters only)."""
    raw = value.encode()
    out = [raw]
    for prefix in (b"", b"x", b"xy", b"x-access-token:"):
        encoded = base64.b64encode(prefix + raw)
        out.append(encoded[len(prefix) * 4 // 3 + 2:-4])
    return out


async def test_guessing_the_value_a_character_at_a_time_learns_nothing(sb, reflector):
    r = await sb.exec(["python3", "/root/attack.py", HOST, ALPHABET, str(len(TOKEN))],
                      timeout=900)
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    # Every answer came whole, right guess or wrong: the count of bytes says nothing.
    assert result["missing"] == [0], result
    assert result["learned"] == "", result
    assert result["requests"] == len(ALPHABET)
    assert all(e["tls"] for e in reflector.seen)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reflected(sb):
    """What the guest got back from each reflection (run once for the tests below)."""
    r = await sb.exec(["python3", "/root/reflect.py", HOST], timeout=300)
    assert r.exit_code == 0, r.stderr
    return r.stdout


async def test_encoded_reflections_do_not_bring_the_value_back(reflected, reflector):
    out = json.loads(reflected)
    everything = reflected.encode()
    for form in forms(TOKEN):
        assert form not in everything, form

    # X-Anything: Basic <base64 of the placeholder> goes out untouched; Authorization's
    # Basic credential carries the value, and its reflection comes back masked.
    echo = out["echo"]
    assert echo["status"] == 200
    echoed = json.loads(echo["body"])
    assert echoed["X-Anything"] == echo["sent_any"]
    seen = next(s for s in reflector.seen if s["path"] == "/echo")
    assert seen["headers"]["X-Anything"] == echo["sent_any"]
    assert base64.b64decode(seen["headers"]["Authorization"][6:]) == \
        b"x-access-token:" + TOKEN.encode()
    assert seen["headers"]["X-Key"] == TOKEN and seen["headers"]["Accept-Encoding"] == "identity"
    assert "*" in echoed["Authorization"] and set(echoed["X-Key"]) == {"*"}

    # A compressed reflection is refused, not passed on.
    assert out["gzip"]["status"] == 502 and "compressed" in out["gzip"]["body"]
    assert TOKEN not in out["gzip"]["body"]


async def test_plain_http_never_carries_the_value(sb, reflected, reflector):
    plain = json.loads(reflected)["plain"]
    assert plain["status"] == 403 and "API_TOKEN" in plain["body"]
    assert "only over HTTPS" in plain["body"]
    # Over plain HTTP the upstream saw nothing at all, let alone the value.
    assert not [s for s in reflector.seen if not s["tls"]]
    assert TOKEN not in json.dumps([s for s in reflector.seen if not s["tls"]])
    closes = [e for e in sb.network_log() if e["event"] == "close" and e["port"] == 80]
    assert closes and "only over HTTPS" in closes[-1]["reason"]
    assert TOKEN not in json.dumps(sb.network_log())
