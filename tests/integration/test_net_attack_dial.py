"""The guest plays the attacker against the host's own services (issue 11, finding 1): root in
the VM, allow_net with no allowlist ("all hosts"), and a service listening on the host's
127.0.0.1 that it must not reach.

It asks shuru's DNS for every spelling of "this machine" (localhost, the address, its
decimal, hex and short forms, 0, the host's own name) and connects wherever an answer points;
and it connects to an allowed name whose host resolution says 127.0.0.1 (a test resolver,
standing in for a rebinding DNS server). Each attempt is refused at once with a reason in the
audit log. The same service stays reachable the one sanctioned way, a network.resolve entry,
which shows the refusals are the policy and not a dead service. Nothing here sends traffic
outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import pytest_asyncio

from shuru import AsyncSandbox
from shuru.net import upstream

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]

# Seconds: a generous bound for "refused at once" on a loaded TCG host, well under the
# 10 s connect timeout that a refusal-by-hang would take.
FAST = 5.0
BANNER = b"host-only service\n"
# Spellings of the host's loopback that resolvers accept as names.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "2130706433", "0x7f000001", "127.1", "0",
                  "017700000001", "a.localhost")

# Runs in the guest: ask DNS for a name with a raw query (as an attacker would, so the
# guest's own /etc/hosts and inet_aton play no part), connect to whatever came back, and
# report it all as JSON, timed inside the guest.
ATTACK = r'''
import json, socket, struct, sys, time

def query(name):
    q = struct.pack("!HHHHHH", 0x5eed, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(30)
    s.sendto(q, ("127.0.0.53", 53))  # the guest's resolver: shuru's DNS
    answer = s.recv(65535)
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
    return flags & 0xF, ips

def fetch(ip, port, send):
    try:
        s = socket.create_connection((ip, port), timeout=30)
        s.sendall(send.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.decode("latin-1")
    except OSError as e:
        return f"error: {type(e).__name__}"

out = []
for name, port, send in json.loads(sys.argv[1]):
    start = time.perf_counter()
    rcode, ips = query(name)
    data = fetch(ips[0], port, send) if ips else None
    out.append({"name": name, "rcode": rcode, "ips": ips, "data": data,
                "elapsed": time.perf_counter() - start})
print(json.dumps(out))
'''


async def _serve(reader, writer):
    writer.write(BANNER)
    await writer.drain()
    writer.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service():
    """The host's private service, on 127.0.0.1 only."""
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb(service):
    sandbox = await AsyncSandbox.start(
        allow_net=True, network={"resolve": {"sanctioned.test": "127.0.0.1"}})  # all hosts
    try:
        await sandbox.files.write("/root/attack.py", ATTACK)
        yield sandbox
    finally:
        await sandbox.stop()


async def attack(sb, *targets: tuple[str, int, str]) -> list[dict]:
    r = await sb.exec(["python3", "/root/attack.py", json.dumps(targets)], timeout=300)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def denials(sb, host: str) -> list[dict]:
    return [e for e in sb.network_log() if e["event"] == "deny" and e["host"] == host]


async def test_the_sanctioned_way_reaches_the_service(sb, service):
    (out,) = await attack(sb, ("sanctioned.test", service, ""))
    assert out["rcode"] == 0 and out["data"] == BANNER.decode(), out


async def test_every_spelling_of_the_host_is_refused_at_once_and_logged(sb, service):
    own = sorted({socket.gethostname().lower(), socket.getfqdn().lower()} - {""})
    names = [*LOOPBACK_NAMES, *own]
    results = await attack(sb, *[(name, service, "") for name in names])
    for out in results:
        # REFUSED (5), no address, nothing reached, and fast.
        assert (out["rcode"], out["ips"], out["data"]) == (5, [], None), out
        assert out["elapsed"] < FAST, out
        logged = denials(sb, out["name"])
        assert logged and logged[-1]["port"] == 53 and logged[-1]["reason"], out["name"]
    reasons = {out["name"]: denials(sb, out["name"])[-1]["reason"] for out in results}
    assert "IP address" in reasons["127.0.0.1"]
    assert "ends in a number" in reasons["2130706433"] and "ends in a number" in reasons["0"]
    assert "local name" in reasons["localhost"]
    assert all(("own name" in reasons[n] or "local name" in reasons[n]) for n in own)
    connected = {e["host"] for e in sb.network_log() if e["event"] == "connect"}
    assert not connected & set(names)


async def test_an_allowed_name_that_resolves_to_loopback_is_refused(sb, service, monkeypatch):
    asked = []

    async def rebinding(host, port):  # a hostile DNS server's answer, as the host sees it
        asked.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(upstream, "host_resolve", rebinding)
    http = "GET / HTTP/1.1\r\nHost: rebind.test\r\nConnection: close\r\n\r\n"
    plain, web = await attack(sb, ("rebind.test", service, ""), ("rebind.test", 80, http))
    # DNS answers (every host is allowed; the guest gets a shuru address), the connect does not.
    assert plain["rcode"] == 0 and plain["ips"], plain
    assert BANNER.decode() not in (plain["data"] or "") and plain["elapsed"] < FAST, plain
    assert web["data"].startswith("HTTP/1.1 403"), web
    assert "rebind.test resolves to an address that is not public" in web["data"]
    assert "127.0.0.1 is a loopback address" in web["data"] and web["elapsed"] < FAST
    logged = denials(sb, "rebind.test")
    assert {e["port"] for e in logged} == {service, 80}
    assert all("loopback" in e["reason"] and "network.resolve" in e["reason"] for e in logged)
    assert asked == ["rebind.test", "rebind.test"]  # resolved once per connection
    assert not [e for e in sb.network_log()
                if e["event"] == "connect" and e["host"] == "rebind.test"]
