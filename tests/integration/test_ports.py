"""Port forwarding on real VMs: servers in the guest reached from the host through `ports=`,
`expose`, `connect` and `shuru run -p`, with networking off (no NIC is involved) and on a
restored sandbox (the default start) and on a cold-booted one. One sandbox of each serves every
SDK test in the module."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
import pytest_asyncio

from shuru import AsyncSandbox, PortError, Sandbox

from .conftest import SHURU

pytestmark = [pytest.mark.usefixtures("image")]
on_module_loop = pytest.mark.asyncio(loop_scope="module")  # the shared sandbox's loop

FAST = 5.0  # seconds: a generous bound for "at once" on a loaded TCG host
PAGE = "hello from the guest\n"
# A TCP echo server in the guest: echoes until the client half-closes, then adds how many
# bytes it saw, and says `ready` once it listens (bound to ::1 only: the agent tries
# 127.0.0.1 first and must find it there).
ECHO = r"""
import socket
srv = socket.socket(socket.AF_INET6)
srv.bind(("::1", 7000)); srv.listen()
print("ready", flush=True)
while True:
    c, _ = srv.accept(); n = 0
    while d := c.recv(65536):
        n += len(d); c.sendall(d)
    c.sendall(b"[%d bytes]" % n); c.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


async def wait_for_line(proc, needle: str) -> None:
    """Read the process's output until `needle` appears (the server is listening)."""
    seen = ""
    async for chunk in proc:
        seen += chunk.text
        if needle in seen:
            return
    raise AssertionError(f"the server exited before saying {needle!r}: {seen}")


HOST_PORT = free_port()


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["restored", "cold"])
async def sb(request):
    cold = request.param == "cold"
    sandbox = await AsyncSandbox.start(ports=[f"{HOST_PORT}:8000"], cold=cold)
    assert sandbox.restored is not cold and not sandbox.config.allow_net
    await sandbox.files.write("/srv/www/hello.txt", PAGE)
    # The plain module as a user would start it (all interfaces, the default); -u so its
    # "Serving HTTP" line comes out as soon as it listens.
    web = await sandbox.spawn("cd /srv/www && exec python3 -u -m http.server 8000")
    await asyncio.wait_for(wait_for_line(web, "Serving HTTP"), 120)
    echo = await sandbox.spawn(["python3", "-u", "-c", ECHO])
    await asyncio.wait_for(wait_for_line(echo, "ready"), 120)
    yield sandbox
    await sandbox.stop()


@on_module_loop
async def test_http_server_through_the_ports_option(sb):
    assert [(f.host_port, f.guest_port) for f in sb.ports] == [(HOST_PORT, 8000)]
    for _ in range(3):  # one connection each
        got = await asyncio.to_thread(fetch, f"http://127.0.0.1:{HOST_PORT}/hello.txt")
        assert got == PAGE


@on_module_loop
async def test_http_server_through_expose_then_unexpose(sb):
    address = await sb.expose(8000)
    assert address.host == "127.0.0.1" and address.port not in (0, HOST_PORT)
    assert await asyncio.to_thread(fetch, f"http://{address}/hello.txt") == PAGE
    await sb.unexpose(8000, address.port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(tuple(address), timeout=FAST).close()
    # The configured forward to the same guest port is untouched.
    assert await asyncio.to_thread(fetch, f"http://127.0.0.1:{HOST_PORT}/hello.txt") == PAGE


@on_module_loop
async def test_connect_to_a_guest_echo_with_half_close_and_a_big_payload(sb):
    payload = os.urandom(3 * 1024 * 1024)  # several windows each way
    reader, writer = await sb.connect(7000)

    async def send():
        for i in range(0, len(payload), 256 * 1024):
            writer.write(payload[i:i + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    got = await asyncio.wait_for(reader.read(-1), 300)
    await sender
    writer.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(
        payload + b"[%d bytes]" % len(payload)).digest()


@on_module_loop
async def test_refused_guest_port_closes_at_once(sb):
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PortError) as e:
        await sb.connect(9)
    assert e.value.code == "ECONNREFUSED" and "port 9" in str(e.value)
    address = await sb.expose(9)
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    try:
        got = await asyncio.wait_for(reader.read(100), FAST)
    except ConnectionResetError:
        got = b""
    writer.close()
    assert got == b""
    assert loop.time() - started < 2 * FAST
    await sb.unexpose(9)


@on_module_loop
async def test_host_port_in_use_is_a_clear_error(sb):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortError, match=f"host port {port} is already in use"):
            await sb.expose(8000, port)
    with pytest.raises(PortError, match=f"host port {HOST_PORT} already forwards"):
        await sb.expose(8000, HOST_PORT)


def test_sync_sandbox_connect_gives_a_socket_and_stop_closes_listeners():
    with Sandbox.start() as sb:
        echo = sb.spawn(["python3", "-u", "-c", ECHO])
        for chunk in echo:
            if "ready" in chunk.text:
                break
        sock = sb.connect(7000)
        assert sock.getblocking()
        with sock:
            sock.sendall(b"sync")
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while data := sock.recv(65536):
                got += data
        assert got == b"sync[4 bytes]"
        address = sb.expose(7000)
        assert [(f.host_port, f.guest_port) for f in sb.ports] == [(address.port, 7000)]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(tuple(address), timeout=FAST).close()


def test_cli_run_with_p_forwards_while_the_command_runs(runtime_dir):
    port = free_port()
    script = ("mkdir -p /srv/www && echo served-by-cli > /srv/www/index.txt && cd /srv/www "
              "|| exit 1; python3 -u -m http.server 8000 --bind 127.0.0.1 & read line; kill $!")
    proc = subprocess.Popen([SHURU, "run", "-p", f"{port}:8000", "-p", "8000", "--",
                             "sh", "-c", script],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        # `-p 8000` got a free host port, which the CLI says on stderr before the command.
        while (note := proc.stderr.readline().decode()) and "shuru: port" not in note:
            pass
        free = re.fullmatch(r"shuru: port 127\.0\.0\.1:(\d+) -> 8000 in the sandbox\n", note)
        assert free, note
        line = proc.stdout.readline().decode()  # http.server's "Serving HTTP on ..."
        assert "Serving HTTP" in line, (line, proc.stderr.read().decode() if not line else "")
        assert fetch(f"http://127.0.0.1:{port}/index.txt") == "served-by-cli\n"
        assert fetch(f"http://127.0.0.1:{free[1]}/index.txt") == "served-by-cli\n"
        proc.stdin.close()  # `read line` returns; the server is killed; the command ends
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ConnectionRefusedError):  # the CLI's listener is gone with it
        socket.create_connection(("127.0.0.1", port), timeout=FAST).close()


def test_cli_host_port_in_use_names_the_flag(runtime_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([SHURU, "run", "-p", f"{port}:8000", "--", "true"],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 2
    assert f"-p '{port}:8000': host port {port} is already in use" in r.stderr.decode()
