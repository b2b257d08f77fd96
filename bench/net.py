"""Network speed through the policy proxy, against the same client on the host.

A loopback HTTPS server (its own CA, trusted by the host through SSL_CERT_FILE) serves a
tiny response and a 50 MiB file under two names: `bench.test` is tunnelled byte for byte,
`secret.test` has a secret and so is intercepted (TLS terminated with the sandbox CA,
re-encrypted upstream). Plain HTTP to `bench.test` separates the transport's cost from TLS
work in the guest. The same client script (Python http.client + ssl) runs on the host
straight to 127.0.0.1 and in the sandbox by name:

* time to first byte: median of 10 fresh connections, from connect to the response head
  (DNS excluded; the guest resolves once before timing);
* throughput: the 50 MiB download, from the response head to the last byte.

Ratios are printed last. Run: .venv/bin/python bench/net.py
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from shuru import AsyncSandbox
from shuru.net.ca import CertAuthority, host_trust_store

MIB = 1024 * 1024
SIZE = 50 * MIB
N = 10
NAMES = ("bench.test", "secret.test")

CLIENT = r'''
import http.client, json, socket, ssl, statistics, sys, time
op = json.loads(sys.argv[1])
ip = op.get("ip") or socket.getaddrinfo(op["host"], op["port"])[0][4][0]  # DNS not timed
def connection():
    if op["scheme"] == "http":
        return http.client.HTTPConnection(ip, op["port"], timeout=60)
    ctx = ssl.create_default_context(cafile=op.get("cafile"))
    conn = http.client.HTTPSConnection(ip, op["port"], timeout=60, context=ctx)
    sock = socket.create_connection((ip, op["port"]), timeout=60)
    conn.sock = ctx.wrap_socket(sock, server_hostname=op["host"])
    return conn
def head(path):
    start = time.perf_counter()
    conn = connection()
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", op["host"])
    conn.endheaders()
    resp = conn.getresponse()
    return start, time.perf_counter(), resp, conn
ttfb = []
for _ in range(op["n"]):
    start, first, resp, conn = head("/tiny")
    resp.read()
    conn.close()
    ttfb.append(first - start)
_, first, resp, conn = head("/file")
got = 0
while chunk := resp.read(1 << 18):
    got += len(chunk)
rate = got / (time.perf_counter() - first)
print(json.dumps({"ttfb": statistics.median(ttfb), "rate": rate, "size": got}))
'''


async def _serve(request: web.Request) -> web.StreamResponse:
    if request.path == "/tiny":
        return web.Response(body=b"ok")
    response = web.StreamResponse(headers={"Content-Length": str(SIZE)})
    await response.prepare(request)
    block = os.urandom(MIB)
    for _ in range(SIZE // MIB):
        await response.write(block)
    return response


async def start_servers(ca: CertAuthority) -> tuple[web.AppRunner, int, int]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    contexts = {name: ca.server_context(name) for name in NAMES}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def pick(conn, name, _):
        if name in contexts:
            conn.context = contexts[name]

    context.sni_callback = pick
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    ports = [addr[1] for addr in runner.addresses]
    return runner, ports[0], ports[1]


async def on_host(op: dict) -> dict:
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-c", CLIENT, json.dumps(op), stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


async def in_guest(sb: AsyncSandbox, op: dict) -> dict:
    r = await sb.exec(["python3", "/root/client.py", json.dumps(op)], timeout=900)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


async def figures() -> dict[str, dict]:
    ca = CertAuthority("shuru bench CA")
    with tempfile.TemporaryDirectory() as tmp:
        cafile = Path(tmp) / "ca.pem"
        cafile.write_bytes(ca.cert_pem)
        trust = Path(tmp) / "trust.pem"
        trust.write_bytes(host_trust_store().rstrip(b"\n") + b"\n" + ca.cert_pem)
        os.environ["SSL_CERT_FILE"] = str(trust)  # the proxy's upstream checks trust it
        os.environ["SHURU_BENCH_SECRET"] = "bench-value"
        runner, http_port, https_port = await start_servers(ca)
        try:
            base = {"n": N, "path": "/file"}
            out = {
                "host https": await on_host({**base, "scheme": "https", "host": "bench.test",
                                             "ip": "127.0.0.1", "port": https_port,
                                             "cafile": str(cafile)}),
                "host http": await on_host({**base, "scheme": "http", "host": "bench.test",
                                            "ip": "127.0.0.1", "port": http_port}),
            }
            resolve = {}
            for name in NAMES:
                resolve[f"{name}:443"] = f"127.0.0.1:{https_port}"
                resolve[f"{name}:80"] = f"127.0.0.1:{http_port}"
            async with await AsyncSandbox.start(
                    cpus=2, memory=2048, allow_net=True,
                    network={"allow": list(NAMES), "resolve": resolve},
                    secrets={"BENCH": {"from": "SHURU_BENCH_SECRET",
                                       "hosts": ["secret.test"]}}) as sb:
                await sb.files.write("/root/client.py", CLIENT)
                out["tunnelled https"] = await in_guest(
                    sb, {**base, "scheme": "https", "host": "bench.test", "port": 443})
                out["tunnelled http"] = await in_guest(
                    sb, {**base, "scheme": "http", "host": "bench.test", "port": 80})
                out["intercepted https"] = await in_guest(
                    sb, {**base, "scheme": "https", "host": "secret.test", "port": 443})
                out["accel"] = {"name": sb.accel}
            return out
        finally:
            await runner.cleanup()


def main() -> None:
    f = asyncio.run(figures())
    for name in ("host https", "host http", "tunnelled https", "tunnelled http",
                 "intercepted https"):
        assert f[name]["size"] == SIZE, (name, f[name])
        print(f"{name:18} time to first byte {f[name]['ttfb'] * 1000:7.1f} ms, "
              f"throughput {f[name]['rate'] / MIB:7.1f} MiB/s")
    print(f"(guest on {f['accel']['name']}; {SIZE // MIB} MiB download, TTFB median of {N})")
    host, host_http = f["host https"], f["host http"]
    print("ratios: added time to first byte: "
          f"tunnelled https {(f['tunnelled https']['ttfb'] - host['ttfb']) * 1000:.1f} ms, "
          f"tunnelled http {(f['tunnelled http']['ttfb'] - host_http['ttfb']) * 1000:.1f} ms, "
          f"intercepted https {(f['intercepted https']['ttfb'] - host['ttfb']) * 1000:.1f} ms "
          "(target < 10 ms tunnelled, on KVM); throughput of host: "
          f"tunnelled https {f['tunnelled https']['rate'] / host['rate']:.3f}, "
          f"tunnelled http {f['tunnelled http']['rate'] / host_http['rate']:.3f}, "
          f"intercepted https {f['intercepted https']['rate'] / host['rate']:.3f} "
          "(target >= 0.5 tunnelled)")


if __name__ == "__main__":
    sys.exit(main())
