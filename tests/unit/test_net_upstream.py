"""Where the proxy's own connections go: the upstream proxy variables and NO_PROXY, and
`plan`/`dial` (resolve once, vet every address, dial the vetted one)."""

import asyncio
import socket

import pytest

from shuru.errors import ConfigError
from shuru.net import names, upstream
from shuru.net.addresses import refusal
from shuru.net.upstream import (ProxySettings, Refused, Route, UpstreamError, UpstreamProxy, dial,
                                parse_proxy_url, plan, resolve_target)


def test_proxy_variables_pick_by_port_lower_case_first():
    settings = ProxySettings.from_environ({
        "HTTPS_PROXY": "http://upper:1", "https_proxy": "lower:3128", "HTTP_PROXY": "http://web:8080"})
    assert settings.for_target("a.io", None, 443) == UpstreamProxy("lower", 3128)
    assert settings.for_target("a.io", None, 22) == UpstreamProxy("lower", 3128)
    assert settings.for_target("a.io", None, 80) == UpstreamProxy("web", 8080)


def test_all_proxy_is_the_fallback_and_no_variables_mean_direct():
    settings = ProxySettings.from_environ({"ALL_PROXY": "http://all:9"})
    assert settings.for_target("a.io", None, 80) == settings.for_target("a.io", None, 443) \
        == UpstreamProxy("all", 9)
    assert ProxySettings.from_environ({}).for_target("a.io", None, 443) is None


@pytest.mark.parametrize("no_proxy, host, address, port, direct", [
    ("*", "a.io", None, 443, True),
    ("example.com", "example.com", None, 443, True),
    ("example.com", "api.example.com", None, 443, True),
    (".example.com", "api.example.com", None, 443, True),
    ("*.example.com", "api.example.com", None, 443, True),
    ("example.com", "badexample.com", None, 443, False),
    ("127.0.0.1", "local.test", "127.0.0.1", 443, True),
    ("10.0.0.0/8", "private.test", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "public.test", None, 443, False),
    ("a.io:8443", "a.io", None, 8443, True),
    ("a.io:8443", "a.io", None, 443, False),
    ("other.io, , a.io", "a.io", None, 443, True),
])
def test_no_proxy(no_proxy, host, address, port, direct):
    settings = ProxySettings.from_environ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": no_proxy})
    assert (settings.for_target(host, address, port) is None) is direct


def test_credentials_become_a_header_and_never_show():
    proxy = parse_proxy_url("HTTPS_PROXY", "http://us%40er:pa%3Ass@p.corp:3128")
    assert proxy.authorization == b"Basic dXNAZXI6cGE6c3M="  # us@er:pa:ss
    assert "pa" not in repr(proxy).replace("p.corp", "") and "with credentials" in repr(proxy)


def test_unusable_proxies_name_the_variable_but_not_the_value():
    with pytest.raises(ConfigError) as e:
        ProxySettings.from_environ({"HTTPS_PROXY": "socks5://u:hunter2@h:1",
                                    "http_proxy": "http://h:notaport"})
    assert len(e.value.problems) == 2
    assert "HTTPS_PROXY" in str(e.value) and "http_proxy" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_resolve_map_name_port_wins_over_name():
    resolve = {"a.test:443": "127.0.0.1:8443", "a.test": "127.0.0.2", "v6.test": "[::1]:9"}
    assert resolve_target(resolve, "a.test", 443) == ("127.0.0.1", 8443)
    assert resolve_target(resolve, "a.test", 80) == ("127.0.0.2", 80)
    assert resolve_target(resolve, "v6.test", 1) == ("::1", 9)
    assert resolve_target(resolve, "b.test", 22) == (None, 22)


# ---- plan and dial: resolve once, vet every address, dial the vetted one -------------------
# The resolvers and openers here are fakes: no test sends a packet to any address.

DIRECT = ProxySettings()


class CountingResolver:
    def __init__(self, answers):
        self.answers, self.calls = answers, []

    async def __call__(self, host, port):
        self.calls.append((host, port))
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


class FakeTransport:
    def __init__(self):
        self.aborted = False

    def abort(self):
        self.aborted = True


class FakeWriter:
    def __init__(self, where):
        self.where, self.transport = where, FakeTransport()


class RecordingOpener:
    """Stands in for asyncio.open_connection; `fail` lists addresses that refuse, `hang`
    addresses that never answer."""

    def __init__(self, fail=(), hang=()):
        self.calls, self.fail, self.hang = [], set(fail), set(hang)

    async def __call__(self, host, port):
        self.calls.append((host, port))
        if host in self.fail:
            raise ConnectionRefusedError(111, "Connection refused")
        if host in self.hang:
            await asyncio.Event().wait()
        return "reader", FakeWriter((host, port))


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["::1"], ["10.0.0.5"], ["169.254.169.254"],
                                    ["::ffff:127.0.0.1"], ["fd00::1"], ["100.64.1.1"]])
async def test_a_name_that_resolves_to_a_non_global_address_is_refused_unconnected(answer):
    resolver, opener = CountingResolver({"evil.example": answer}), RecordingOpener()
    with pytest.raises(Refused) as e:
        route = await plan("evil.example", 443, resolve={}, proxies=DIRECT, resolver=resolver)
        await dial(route, opener=opener)
    assert "evil.example resolves to" in e.value.message and answer[0] in e.value.message
    assert "network.resolve" in e.value.message
    assert resolver.calls == [("evil.example", 443)] and opener.calls == []


async def test_one_bad_address_refuses_the_whole_name():
    resolver = CountingResolver({"mixed.example": ["1.1.1.1", "127.0.0.1"]})
    with pytest.raises(Refused) as e:
        await plan("mixed.example", 443, resolve={}, proxies=DIRECT, resolver=resolver)
    assert "127.0.0.1" in e.value.message and "loopback" in e.value.message


async def test_the_name_is_resolved_once_and_the_vetted_address_is_dialled():
    resolver = CountingResolver({"api.example": ["1.1.1.1", "2606:4700::1"]})
    opener = RecordingOpener()
    route = await plan("api.example", 443, resolve={}, proxies=DIRECT, resolver=resolver)
    assert route == Route("api.example", 443, 443, ("1.1.1.1", "2606:4700::1"))
    reader, writer = await dial(route, opener=opener)
    assert resolver.calls == [("api.example", 443)]
    assert opener.calls == [("1.1.1.1", 443)] and writer.where == ("1.1.1.1", 443)


async def test_the_next_vetted_address_is_tried_when_one_fails_or_hangs():
    route = Route("api.example", 443, 443, ("1.1.1.1", "1.0.0.1", "2606:4700::1"))
    opener = RecordingOpener(fail={"1.1.1.1"}, hang={"1.0.0.1"})
    _, writer = await dial(route, opener=opener)
    assert writer.where == ("2606:4700::1", 443)
    assert opener.calls == [("1.1.1.1", 443), ("1.0.0.1", 443), ("2606:4700::1", 443)]
    with pytest.raises(UpstreamError) as e:
        await dial(Route("api.example", 443, 443, ("1.1.1.1",)),
                   opener=RecordingOpener(fail={"1.1.1.1"}))
    assert "Connection refused" in e.value.message


@pytest.mark.parametrize("name", ["localhost", "a.localhost", "127.0.0.1", "2130706433",
                                  "0x7f000001", "127.1", "0", "::1", "box.local"])
async def test_local_and_numeric_names_are_refused_before_any_lookup(name):
    resolver = CountingResolver({})
    with pytest.raises(Refused):
        await plan(name, 80, resolve={}, proxies=DIRECT, resolver=resolver)
    assert resolver.calls == []


async def test_the_hosts_own_names_are_refused():
    with pytest.raises(Refused) as e:
        await plan("mybox", 80, resolve={}, proxies=DIRECT, resolver=CountingResolver({}),
                   own_names={"mybox"})
    assert "own name" in e.value.message


async def test_the_real_host_resolver_is_vetted_too():
    # The host's own name, not declared as such here, goes to the host resolver; whatever
    # it answers (loopback in /etc/hosts, a LAN or a public address), plan either refuses it
    # or keeps only global addresses. Planning connects nowhere.
    name = names.normalize(socket.gethostname())
    try:
        route = await plan(name, 80, resolve={}, proxies=DIRECT, own_names=())
    except Refused as e:
        assert "resolves to an address that is not public" in e.message
    except UpstreamError as e:
        assert "cannot resolve" in e.message
    else:
        assert route.addresses and all(refusal(a) is None for a in route.addresses)
    addresses = await upstream.host_resolve("localhost", 80)
    assert addresses and all(a in ("127.0.0.1", "::1") for a in addresses)


async def test_a_resolve_entry_is_trusted_and_not_looked_up():
    resolver = CountingResolver({})
    route = await plan("db.internal", 443, resolve={"db.internal:443": "127.0.0.1:5432"},
                       proxies=DIRECT, resolver=resolver)
    assert (route.addresses, route.dial_port) == (("127.0.0.1",), 5432)
    route = await plan("localhost", 80, resolve={"localhost": "::1"}, proxies=DIRECT,
                       resolver=resolver)
    assert route.addresses == ("::1",) and resolver.calls == []


async def test_an_unresolvable_name_is_an_upstream_error_not_a_refusal():
    resolver = CountingResolver({"nx.example": socket.gaierror(-2, "Name or service not known")})
    with pytest.raises(UpstreamError) as e:
        await plan("nx.example", 443, resolve={}, proxies=DIRECT, resolver=resolver)
    assert not isinstance(e.value, Refused) and "cannot resolve nx.example" in e.value.message


async def test_a_slow_resolver_times_out():
    async def never(host, port):
        await asyncio.Event().wait()
    with pytest.raises(UpstreamError) as e:
        await plan("slow.example", 443, resolve={}, proxies=DIRECT, resolver=never, timeout=0.05)
    assert "timed out" in e.value.message


# Through an upstream proxy the proxy resolves: the name itself is vetted, never looked up.
PROXIED = ProxySettings.from_environ({"HTTPS_PROXY": "http://proxy.corp:3128",
                                      "NO_PROXY": "direct.example"})


@pytest.mark.parametrize("name", ["localhost", "x.localhost", "127.0.0.1", "2130706433",
                                  "127.1", "metadata", "intranet", "box.localdomain",
                                  "metadata.google.internal"])
async def test_names_are_vetted_before_connect_through_a_proxy(name):
    resolver = CountingResolver({})
    with pytest.raises(Refused):
        await plan(name, 443, resolve={}, proxies=PROXIED, resolver=resolver)
    assert resolver.calls == []


async def test_a_public_name_goes_to_the_proxy_by_name_and_no_proxy_paths_are_vetted():
    resolver = CountingResolver({"direct.example": ["192.168.1.10"]})
    route = await plan("api.example", 443, resolve={}, proxies=PROXIED, resolver=resolver)
    assert route.proxy == UpstreamProxy("proxy.corp", 3128) and route.addresses == ()
    with pytest.raises(Refused) as e:
        await plan("direct.example", 443, resolve={}, proxies=PROXIED, resolver=resolver)
    assert "private" in e.value.message
    assert resolver.calls == [("direct.example", 443)]


async def test_a_dial_that_times_out_leaves_no_attempt_running():
    cancelled = []

    async def hanging(host, port):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(host)
            raise

    route = Route("api.example", 443, 443, ("1.1.1.1", "1.0.0.1"))
    with pytest.raises(UpstreamError) as e:
        await dial(route, opener=hanging, timeout=0.4)
    assert "timed out" in e.value.message
    assert sorted(cancelled) == ["1.0.0.1", "1.1.1.1"]
