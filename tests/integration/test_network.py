"""Networking on real VMs: offline by default; with allow_net every guest connection and DNS
query goes through the host's policy proxy (allowlist, fake addresses, secret injection).

The "internet" is a pair of echo servers on the host's 127.0.0.1 (HTTP and HTTPS with a test
CA the host trusts through SSL_CERT_FILE), reached from the guest by name through
`network.resolve`. The echo servers never echo the real secret (they print <REAL> in its
place), so the only way it could reach the VM is a leak, and the leak checks search the VM's
memory and disk from the host, without ever sending the value in. The last test uses the
real Debian and PyPI registries through this host's egress."""

from __future__ import annotations

import asyncio
import hashlib
import json
import mmap
import os
import secrets
import shutil
import socket
import ssl
import uuid

import pytest
import pytest_asyncio
from aiohttp import web

from shuru import AsyncSandbox, Sandbox
from shuru import checkpoints as ck
from shuru.net import GUEST_CA_BUNDLE
from tests.registries import registry_network
from shuru.net.ca import CertAuthority, host_trust_store

from .conftest import SHURU

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]

TOKEN = "real-" + secrets.token_hex(20)  # the secret's value; must never reach the VM
TOKEN_VAR = "SHURU_TEST_NET_TOKEN"
NAMES = ("echo.test", "api.test", "a.svc.test")
FAST = 2.0  # seconds: a generous bound for "fails at once" (TCG; KVM is far below it)
GUEST_MEMORY = 768  # MiB; the leak check reads all of it

# Runs in the guest: one network operation described by a JSON argument, the outcome as
# JSON on stdout, timed inside the guest (so VM start-up and exec round trips do not count).
CLIENT = r'''
import hashlib, http.client, json, os, socket, ssl, struct, sys, time

def dns_query(name, qtype=1):
    q = struct.pack("!HHHHHH", 0x5eed, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)

def dns_summary(answer):
    flags, qd, an = struct.unpack_from("!HHH", answer, 2)
    ips, end = [], 12
    for _ in range(qd):
        while answer[end]:
            end += 1 + answer[end]
        end += 5
    for _ in range(an):
        end += 2 if answer[end] & 0xC0 else 0
        rtype, _, _, size = struct.unpack_from("!HHIH", answer, end)
        if rtype == 1:
            ips.append(socket.inet_ntoa(answer[end + 10:end + 14]))
        end += 10 + size
    return {"rcode": flags & 0xF, "ips": ips}

def run(op):
    kind = op["op"]
    token = os.environ.get("API_TOKEN", "")
    if kind == "http":
        url_path = op.get("path", "/").replace("{TOKEN}", token)
        headers = {k: v.replace("{TOKEN}", token) for k, v in op.get("headers", {}).items()}
        if op["scheme"] == "https":
            conn = http.client.HTTPSConnection(op["host"], op["port"], timeout=30,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(op["host"], op["port"], timeout=30)
        body = None
        if op.get("upload"):
            body = bytes(range(256)) * (op["upload"] // 256)
        conn.request(op.get("method", "GET"), url_path, body=body, headers=headers)
        resp = conn.getresponse()
        out = {"status": resp.status}
        if op.get("digest"):
            h, n = hashlib.sha256(), 0
            while chunk := resp.read(1 << 16):
                h.update(chunk)
                n += len(chunk)
            out.update(sha256=h.hexdigest(), size=n)
        else:
            out["body"] = resp.read().decode("latin-1")
        if op["scheme"] == "https":
            issuer = dict(x[0] for x in conn.sock.getpeercert()["issuer"])
            out["issuer"] = issuer.get("commonName")
        return out
    if kind == "resolve":
        return {"addrs": sorted({a[4][0] for a in socket.getaddrinfo(op["name"], 443)})}
    if kind == "tcp":
        s = socket.create_connection((op["ip"], op["port"]), timeout=30)
        s.sendall(op.get("send", "hello\r\n\r\n").encode())
        data = s.recv(65536)
        return {"data": data.decode("latin-1")}
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(30)
        s.connect((op["ip"], op["port"]))
        s.send(b"ping")
        return {"data": s.recv(100).decode("latin-1")}
    if kind == "dns_udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(30)
        s.sendto(dns_query(op["name"]), (op["server"], 53))
        return dns_summary(s.recv(65535))
    if kind == "dns_tcp":
        s = socket.create_connection((op["server"], 53), timeout=30)
        q = dns_query(op["name"])
        s.sendall(struct.pack("!H", len(q)) + q)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return dns_summary(buf[2:])
    if kind == "environ_hashes":
        # sha256 of every variable value of every process: lets the host check for a value
        # without sending it in
        seen = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                raw = open(f"/proc/{pid}/environ", "rb").read()
            except OSError:
                continue
            for entry in raw.split(b"\0"):
                if b"=" in entry:
                    seen.add(hashlib.sha256(entry.split(b"=", 1)[1]).hexdigest())
        return {"hashes": sorted(seen)}
    raise ValueError(kind)

start = time.perf_counter()
try:
    result = run(json.loads(sys.argv[1]))
except Exception as e:
    result = {"error": f"{type(e).__name__}: {e}"}
result["elapsed"] = time.perf_counter() - start
print(json.dumps(result))
'''


def _redact(text: str) -> str:
    return text.replace(TOKEN, "<REAL>")


async def _echo(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/big/"):
        size = int(request.path.rsplit("/", 1)[1])
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        block = bytes(range(256)) * 256
        for offset in range(0, size, len(block)):
            await response.write(block[:size - offset])
        return response
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(1 << 16):
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({
        "method": request.method, "path": _redact(request.path_qs), "tls": request.secure,
        "headers": {k: _redact(v) for k, v in request.headers.items()},
        "body_sha256": digest.hexdigest(), "body_size": size,
    })


def _big(size: int) -> str:
    block = bytes(range(256)) * 256
    h = hashlib.sha256()
    for offset in range(0, size, len(block)):
        h.update(block[:size - offset])
    return h.hexdigest()


class EchoServers:
    """HTTP and HTTPS echo on 127.0.0.1; the HTTPS one has a certificate per name from a test
    CA, which `trust_file` (the host's trust store plus that CA) makes the host trust."""

    def __init__(self, tmp):
        self.ca = CertAuthority("shuru integration test CA")
        self.trust_file = tmp / "host-trust.pem"
        self.trust_file.write_bytes(host_trust_store().rstrip(b"\n") + b"\n" + self.ca.cert_pem)
        self.runners: list[web.AppRunner] = []

    async def _site(self, context=None) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        self.runners.append(runner)
        return runner.addresses[0][1]

    async def start(self) -> None:
        contexts = {name: self.ca.server_context(name) for name in NAMES}
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

        def pick(conn, name, _):
            if name in contexts:
                conn.context = contexts[name]

        context.sni_callback = pick
        self.http = await self._site()
        self.https = await self._site(context)

    def resolve(self) -> dict[str, str]:
        out = {}
        for name in NAMES + ("blocked.test",):
            out[name] = "127.0.0.1"
            out[f"{name}:80"] = f"127.0.0.1:{self.http}"
            out[f"{name}:443"] = f"127.0.0.1:{self.https}"
        return out

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(tmp_path_factory):
    s = EchoServers(tmp_path_factory.mktemp("net"))
    await s.start()
    yield s
    await s.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb(servers):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_VAR, TOKEN)
        mp.setenv("SSL_CERT_FILE", str(servers.trust_file))  # the host trusts the test CA
        sandbox = await AsyncSandbox.start(
            memory=GUEST_MEMORY, allow_net=True,
            network={"allow": ["echo.test", "api.test", "*.svc.test"],
                     "resolve": servers.resolve()},
            secrets={"API_TOKEN": {"from": TOKEN_VAR, "hosts": ["api.test"]}})
        try:
            await sandbox.files.write("/root/client.py", CLIENT)
            yield sandbox
        finally:
            await sandbox.stop()


async def guest(sb, **op) -> dict:
    r = await sb.exec(["python3", "/root/client.py", json.dumps(op)], timeout=120)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def events(sb, kind: str, host: str | None = None) -> list[dict]:
    return [e for e in sb.network_log()
            if e["event"] == kind and (host is None or e["host"] == host)]


# ---- offline --------------------------------------------------------------------------------

async def test_offline_by_default_no_device_no_route_and_connects_fail_at_once():
    sandbox = await AsyncSandbox.start()
    try:
        await sandbox.files.write("/root/client.py", CLIENT)
        r = await sandbox.exec("ls /sys/class/net; ip route; ip -6 route")
        assert r.stdout.split() == ["lo"], r.stdout  # no device, and so no route at all
        # Only addresses from the proxy's own range (198.18/15, never routed anywhere): with
        # no device, nothing could leave, but no test aims at a real host even so.
        for op in ({"op": "tcp", "ip": "198.18.0.9", "port": 443},
                   {"op": "tcp", "ip": "198.18.0.1", "port": 80},
                   {"op": "udp", "ip": "198.18.0.53", "port": 53},
                   {"op": "resolve", "name": "deb.debian.org"}):
            out = await guest(sandbox, **op)
            assert "error" in out and out["elapsed"] < FAST, (op, out)
        assert sandbox.network_log() == []
    finally:
        await sandbox.stop()


# ---- allowed and denied -------------------------------------------------------------------

async def test_allowed_names_resolve_to_handed_out_addresses_and_reach_the_servers(sb, servers):
    out = await guest(sb, op="resolve", name="echo.test")
    assert out["addrs"] and all(a.startswith("198.18.") or a.startswith("198.19.")
                                for a in out["addrs"]), out
    out = await guest(sb, op="http", scheme="http", host="echo.test", port=80, path="/hello?x=1")
    assert out["status"] == 200 and json.loads(out["body"])["path"] == "/hello?x=1"
    # Tunnelled TLS: the guest sees the server's own certificate, not the sandbox CA's.
    out = await guest(sb, op="http", scheme="https", host="echo.test", port=443, path="/tls")
    assert out["status"] == 200 and json.loads(out["body"])["tls"] is True
    assert out["issuer"] == "shuru integration test CA"
    out = await guest(sb, op="http", scheme="https", host="a.svc.test", port=443, path="/w")
    assert out["status"] == 200, out
    connects = events(sb, "connect", "echo.test")
    assert {(e["port"], e["reason"]) for e in connects} >= {(80, "tunnel"), (443, "tunnel")}


async def test_denied_names_get_no_answer_at_once(sb):
    for name in ("blocked.test", "svc.test", "example.com"):  # in resolve, apex, elsewhere
        out = await guest(sb, op="resolve", name=name)
        assert "gaierror" in out.get("error", ""), (name, out)
        assert out["elapsed"] < FAST, (name, out)
    assert events(sb, "deny", "blocked.test")
    r = await sb.exec("getent hosts blocked.test")
    assert r.exit_code == 2 and r.stdout == ""


async def test_hard_coded_addresses_are_refused_at_once_with_a_reason(sb):
    out = await guest(sb, op="http", scheme="http", host="203.0.113.9", port=80, path="/")
    assert out["status"] == 403 and "shuru" in out["body"] and "203.0.113.9" in out["body"]
    for ip, port in (("203.0.113.9", 443), ("198.18.1.200", 443), ("127.0.0.2", 5)):
        out = await guest(sb, op="tcp", ip=ip, port=port)
        # a reset, or EOF with nothing: either way at once, never a hang
        assert out.get("error") or out.get("data") == "", (ip, out)
        assert out["elapsed"] < FAST, (ip, out)
    # Other UDP than DNS cannot leave either, and says so at once.
    out = await guest(sb, op="udp", ip="8.8.8.8", port=123)
    assert "error" in out and out["elapsed"] < FAST, out
    denied = {e["ip"] for e in events(sb, "deny")}
    assert {"203.0.113.9", "198.18.1.200"} <= denied


async def test_dns_to_any_server_and_over_tcp_goes_to_the_policy(sb):
    # A program that ignores resolv.conf and asks 8.8.8.8 still gets shuru's answers.
    out = await guest(sb, op="dns_udp", server="8.8.8.8", name="echo.test")
    assert out["rcode"] == 0 and out["ips"], out
    out = await guest(sb, op="dns_tcp", server="127.0.0.53", name="api.test")
    assert out["rcode"] == 0 and out["ips"], out
    out = await guest(sb, op="dns_tcp", server="9.9.9.9", name="api.test")
    assert out["rcode"] == 0 and out["ips"], out
    out = await guest(sb, op="dns_tcp", server="127.0.0.53", name="blocked.test")
    assert out["rcode"] != 0 and not out["ips"], out


async def test_large_transfers_both_ways_arrive_intact(sb):
    size = 12 * 1024 * 1024  # many windows' worth each way
    out = await guest(sb, op="http", scheme="https", host="echo.test", port=443,
                      path=f"/big/{size}", digest=True)
    assert (out.get("size"), out.get("sha256")) == (size, _big(size)), out
    out = await guest(sb, op="http", scheme="http", host="echo.test", port=80, path="/up",
                      method="POST", upload=size)
    echoed = json.loads(out["body"])
    assert echoed["body_size"] == size
    assert echoed["body_sha256"] == hashlib.sha256(bytes(range(256)) * (size // 256)).hexdigest()


# ---- secrets ------------------------------------------------------------------------------

async def test_guest_holds_a_placeholder_and_trusts_the_sandbox_ca(sb):
    r = await sb.exec("echo $API_TOKEN; "
                      "echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS")
    placeholder, cafiles = r.stdout.splitlines()
    assert placeholder.startswith("shuru_tok_") and TOKEN not in r.stdout
    assert set(cafiles.split()) == {GUEST_CA_BUNDLE}
    bundle = await sb.files.read(GUEST_CA_BUNDLE)
    last = bundle.decode().rstrip().rsplit("-----BEGIN CERTIFICATE-----", 1)[1]
    system = (await sb.files.read("/etc/ssl/certs/ca-certificates.crt")).decode()
    assert last in system  # the sandbox CA is in the system bundle too (apt, git, curl)


async def test_secret_is_injected_for_its_host_only(sb):
    auth = {"Authorization": "Bearer {TOKEN}"}
    out = await guest(sb, op="http", scheme="https", host="api.test", port=443,
                      path="/v1?key={TOKEN}", headers=auth)
    echoed = json.loads(out["body"])
    assert echoed["headers"]["Authorization"] == "Bearer <REAL>"
    assert echoed["path"].startswith("/v1?key=shuru_tok_")  # URLs only with in_url
    assert out["issuer"].startswith("shuru sandbox CA")  # intercepted by the sandbox CA
    # Plain HTTP to the secret's host never carries it: a 403 that says why.
    out = await guest(sb, op="http", scheme="http", host="api.test", port=80, path="/p",
                      headers={"X-Key": "{TOKEN}"})
    assert out["status"] == 403 and "API_TOKEN is sent only over HTTPS" in out["body"]
    # Any other host gets the placeholder unchanged (and the connection is tunnelled).
    out = await guest(sb, op="http", scheme="https", host="echo.test", port=443, path="/o",
                      headers=auth)
    sent = json.loads(out["body"])["headers"]["Authorization"]
    assert sent.startswith("Bearer shuru_tok_") and out["issuer"] == "shuru integration test CA"
    injected = events(sb, "inject", "api.test")
    assert injected and all(e["secrets"] == ["API_TOKEN"] for e in injected)
    assert not events(sb, "inject", "echo.test")
    assert TOKEN not in json.dumps(sb.network_log())


async def test_the_real_value_is_nowhere_in_the_guest(sb, tmp_path):
    # Use the secret first, so a leak would have had every chance to happen.
    out = await guest(sb, op="http", scheme="https", host="api.test", port=443, path="/x",
                      headers={"Authorization": "Bearer {TOKEN}"})
    assert json.loads(out["body"])["headers"]["Authorization"] == "Bearer <REAL>"
    placeholder = (await sb.exec("printf %s $API_TOKEN")).stdout
    # Every process's environment, hashed in the guest: the placeholder is there, the value not.
    hashes = set((await guest(sb, op="environ_hashes"))["hashes"])
    assert hashlib.sha256(placeholder.encode()).hexdigest() in hashes
    assert hashlib.sha256(TOKEN.encode()).hexdigest() not in hashes
    # The disk, from the host: the guest's writes are all in its overlay once synced.
    await sb.exec(f"echo disk-marker-{placeholder} > /root/marker && sync")
    disk = sb._machine.layer.read_bytes()
    assert f"disk-marker-{placeholder}".encode() in disk  # the search would find it
    assert TOKEN.encode() not in disk
    # All of the guest's memory, dumped by QEMU.
    dump = tmp_path / "guest.mem"
    await sb._machine.qmp.execute("pmemsave", {"val": 0, "size": GUEST_MEMORY * 1024 * 1024,
                                               "filename": str(dump)})
    with open(dump, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mem:
        assert mem.find(placeholder.encode()) != -1  # the search would find it
        assert mem.find(TOKEN.encode()) == -1
    dump.unlink()
    assert TOKEN not in sb.console_tail(1000)


async def test_enabling_again_is_harmless(sb):
    # What a snapshot restore does: the host enables capture on a guest that already has it.
    await sb._net.attach(sb._channel, sb.files)
    out = await guest(sb, op="http", scheme="http", host="echo.test", port=80, path="/again")
    assert out["status"] == 200


# ---- the other ways in: the sync SDK and the CLI ------------------------------------------

async def test_sync_sandbox_has_the_same_network(servers):
    def scenario():  # blocking, on a thread: the echo servers keep running on this loop
        with Sandbox.start(allow_net=True, network={"allow": ["echo.test"],
                                                    "resolve": servers.resolve()}) as sb:
            op = {"op": "http", "scheme": "http", "host": "echo.test", "port": 80,
                  "path": "/sync"}
            sb.files.write("/root/client.py", CLIENT)
            r = sb.exec(["python3", "/root/client.py", json.dumps(op)])
            return json.loads(r.stdout), sb.network_log()

    out, log = await asyncio.to_thread(scenario)
    assert json.loads(out["body"])["path"] == "/sync"
    assert [e["event"] for e in log if e["host"] == "echo.test"][:2] == ["dns", "connect"]


async def test_cli_allow_host_secret_and_verbose_log(servers, tmp_path):
    (tmp_path / "shuru.json").write_text(json.dumps({"network": {"resolve": servers.resolve()}}))
    script = ("import json, os, urllib.request; print(os.environ['API_TOKEN']); "
              "r = urllib.request.Request('https://api.test/cli', "
              "headers={'X-Key': os.environ['API_TOKEN']}); "
              "print(json.loads(urllib.request.urlopen(r).read())['headers']['X-Key'])")
    proc = await asyncio.create_subprocess_exec(
        SHURU, "run", "--allow-host", "api.test", "--secret", f"API_TOKEN={TOKEN_VAR}@api.test",
        "--verbose", "--", "python3", "-c", script, cwd=tmp_path,
        env={**os.environ, TOKEN_VAR: TOKEN, "SSL_CERT_FILE": str(servers.trust_file)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, stderr.decode()
    placeholder, sent = stdout.decode().split()
    assert placeholder.startswith("shuru_tok_") and sent == "<REAL>"
    lines = [line for line in stderr.decode().splitlines() if line.startswith("shuru: net: ")]
    assert any(line.startswith("shuru: net: inject  api.test:443") and "secrets API_TOKEN" in line
               for line in lines), lines
    assert TOKEN not in stdout.decode() + stderr.decode()


# ---- the real registries --------------------------------------------------------------------

async def test_apt_and_pip_through_the_real_registries():
    name = f"net-pip-{uuid.uuid4().hex[:8]}"
    try:
        sandbox = await AsyncSandbox.start(allow_net=True,
                                           network=registry_network("deb.debian.org"))
        try:
            r = await sandbox.exec(
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                "--no-install-recommends jq python3-pip && echo '{\"a\": [1, 2]}' | jq -c .a",
                timeout=600)
            assert r.exit_code == 0, r.stdout[-2000:] + r.stderr[-2000:]
            assert r.stdout.rstrip().endswith("[1,2]")
            hosts = {e["host"] for e in sandbox.network_log() if e["event"] == "connect"}
            assert hosts == {"deb.debian.org"}
            await sandbox.checkpoint(name)  # python3-pip installed, for the next sandbox
        finally:
            await sandbox.stop()
        sandbox = await AsyncSandbox.start(
            from_=name, allow_net=True,
            network=registry_network("pypi.org", "files.pythonhosted.org"))
        try:
            r = await sandbox.exec("cd /tmp && pip download --no-deps six && ls six-*.whl",
                                   timeout=300)
            assert r.exit_code == 0, r.stdout[-2000:] + r.stderr[-2000:]
            assert "six-" in r.stdout
            r = await sandbox.exec("getent hosts deb.debian.org")  # not allowed this time
            assert r.exit_code == 2
            connects = {e["host"] for e in sandbox.network_log() if e["event"] == "connect"}
            assert connects <= {"pypi.org", "files.pythonhosted.org"} and "pypi.org" in connects
        finally:
            await sandbox.stop()
    finally:
        shutil.rmtree(ck.checkpoints_dir() / name, ignore_errors=True)
