"""Where the policy proxy connects, against real sockets: a name whose host resolution is not
public is refused before any connection, with the reason in the audit log and, on port 80
and 443, in a 403; through an upstream proxy, local names never reach CONNECT. The
resolvers are fakes that answer loopback: nothing here sends a packet outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from shuru.net import NetworkConfig, PolicyProxy, dns

from .test_proxy import Guest, Servers, events, lookup, read_response

FAST = 1.0  # seconds: a refusal is answered within this


class LoopbackResolver:
    """Answers every name with 127.0.0.1, as a rebinding DNS server would; counts calls."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        return ["127.0.0.1"]


async def test_a_name_that_resolves_to_loopback_is_refused_with_a_403_that_says_why():
    resolver = LoopbackResolver()
    proxy = PolicyProxy(NetworkConfig(), environ={}, resolver=resolver)  # every host allowed
    ip = await lookup(proxy, "rebind.example")
    started = time.perf_counter()
    guest = await Guest(proxy, ip, 80).open()
    guest.writer.write(b"GET / HTTP/1.1\r\nHost: rebind.example\r\n\r\n")
    status, _, body = await read_response(guest.reader)
    await guest.finish()
    assert time.perf_counter() - started < FAST
    assert status == 403 and b"rebind.example resolves to an address that is not public" in body
    assert b"127.0.0.1 is a loopback address" in body
    deny = events(proxy, "deny")[-1]
    assert (deny["host"], deny["port"]) == ("rebind.example", 80)
    assert "loopback" in deny["reason"] and "network.resolve" in deny["reason"]
    assert not events(proxy, "connect") and not events(proxy, "close")
    assert resolver.calls == [("rebind.example", 80)]  # once per connection
    await proxy.close()


async def test_on_443_the_refusal_is_a_403_over_tls_and_every_connection_is_vetted_again():
    resolver = LoopbackResolver()
    proxy = PolicyProxy(NetworkConfig(), environ={}, resolver=resolver)
    ip = await lookup(proxy, "rebind.example")
    trust = ssl.create_default_context(cadata=proxy.ca_cert_pem.decode())
    for _ in range(2):
        guest = await Guest(proxy, ip, 443).open(tls=trust, server_hostname="rebind.example")
        guest.writer.write(b"GET / HTTP/1.1\r\nHost: rebind.example\r\n\r\n")
        status, _, body = await read_response(guest.reader)
        await guest.finish()
        assert status == 403 and b"loopback" in body
    assert resolver.calls == [("rebind.example", 443)] * 2
    assert len(events(proxy, "deny")) == 2 and not events(proxy, "connect")
    await proxy.close()


async def test_a_resolve_entry_still_reaches_a_loopback_server(tmp_path):
    servers = Servers(tmp_path)
    await servers.start()
    resolver = LoopbackResolver()
    proxy = PolicyProxy(NetworkConfig(resolve={"raw.test": "127.0.0.1"}), environ={},
                        resolver=resolver)
    guest = await Guest(proxy, await lookup(proxy, "raw.test"), servers.tcp_port).open()
    guest.writer.write_eof()
    assert (await guest.reader.read()).startswith(b"0 ")
    await guest.finish()
    assert resolver.calls == []  # the user's entry is the address; nothing is looked up
    await proxy.close()
    await servers.close()


async def test_local_names_never_reach_the_upstream_proxys_connect(tmp_path):
    servers = Servers(tmp_path)
    await servers.start()
    proxy = PolicyProxy(NetworkConfig(), resolver=LoopbackResolver(),
                        environ={"HTTPS_PROXY": f"http://127.0.0.1:{servers.proxy_port}"})
    # DNS refuses localhost and numbers outright; a single-label name passes DNS (a
    # direct dial would vet what the host resolves it to) but not CONNECT, where the
    # upstream proxy would complete it with its own search domains.
    for name in ("localhost", "127.0.0.1", "2130706433"):
        assert dns.read_answer(await proxy.dns(dns.build_query(name)))[0] == dns.REFUSED
    guest = await Guest(proxy, await lookup(proxy, "intranet"), 443).open()
    assert await guest.reader.read() == b""
    await guest.finish()
    assert "single-label" in events(proxy, "deny")[-1]["reason"]
    assert servers.connects == []
    await proxy.close()
    await servers.close()


async def test_a_refusal_does_not_wait_for_the_connect_timeout():
    async def rebinding(host, port):
        await asyncio.sleep(0)
        return ["::1", "10.0.0.1"]

    proxy = PolicyProxy(NetworkConfig(), environ={}, resolver=rebinding, connect_timeout=30)
    guest = await Guest(proxy, await lookup(proxy, "two.example"), 5432).open()
    started = time.perf_counter()
    assert await guest.reader.read() == b""  # not HTTP: closed, with the reason logged
    await guest.finish()
    assert time.perf_counter() - started < FAST
    assert "::1 is the loopback address" in events(proxy, "deny")[-1]["reason"]
    await proxy.close()
