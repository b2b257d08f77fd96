"""The proxy's decisions, without a socket: deny, tunnel or intercept, and why."""

import socket

import pytest

from shuru.net import NetworkConfig, PolicyProxy, Secret, dns, names
from shuru.net.proxy import DENY, INTERCEPT_HTTP, INTERCEPT_TLS, TUNNEL


@pytest.fixture
def proxy():
    return PolicyProxy(NetworkConfig(allow=("api.io", "*.cdn.io"),
                                     secrets=(Secret("K", "REAL", ("api.io",)),)),
                       environ={"REAL": "value-of-k"})


def fake_ip(proxy, name):
    return dns.read_answer(proxy.answer_dns(dns.build_query(name)))[1][0]


def test_a_secret_host_is_intercepted_on_443_and_80_and_tunnelled_elsewhere(proxy):
    ip = fake_ip(proxy, "api.io")
    assert proxy.decide(ip, 443).mode == INTERCEPT_TLS
    assert proxy.decide(ip, 443).secret_names == ["K"]
    assert proxy.decide(ip, 80).mode == INTERCEPT_HTTP
    assert proxy.decide(ip, 22).mode == TUNNEL and proxy.decide(ip, 22).secrets == ()
    other = proxy.decide(fake_ip(proxy, "a.cdn.io"), 443)
    assert (other.mode, other.host) == (TUNNEL, "a.cdn.io")


@pytest.mark.parametrize("ip, port, why", [
    ("127.0.0.1", 443, "hard-coded IP"),
    ("198.18.77.77", 443, "did not come from shuru's DNS"),
    ("not an address", 443, "did not come from shuru's DNS"),
    (None, 80, "did not come from shuru's DNS"),
    ("198.18.0.1", 0, "not a valid port"),
    ("198.18.0.1", 70000, "not a valid port"),
    ("198.18.0.1", True, "not a valid port"),
    ("198.18.0.1", "443", "not a valid port"),
])
def test_denials_say_why(proxy, ip, port, why):
    decision = proxy.decide(ip, port)
    assert decision.mode == DENY and why in decision.reason


def test_an_ipv6_spelling_of_a_fake_ip_is_not_the_fake_ip(proxy):
    ip = fake_ip(proxy, "api.io")
    assert proxy.decide("::ffff:" + ip, 443).mode == DENY


def test_the_value_is_nowhere_in_a_decision(proxy):
    decision = proxy.decide(fake_ip(proxy, "api.io"), 443)
    assert "value-of-k" not in repr(decision) and "value-of-k" not in str(decision.secrets)


# ---- DNS: numbers, addresses and local names -----------------------------------------------

@pytest.mark.parametrize("name", ["127.0.0.1", "2130706433", "0x7f000001", "127.1", "0",
                                  "017700000001", "169.254.169.254", "10.1.2.3", "a.b.255",
                                  "0x7f.1", "::1", "localhost", "LOCALHOST.", "x.localhost",
                                  "printer.local", "db.internal"])
def test_dns_refuses_numbers_addresses_and_local_names_and_logs_why(name):
    proxy = PolicyProxy(NetworkConfig(), environ={})  # every host allowed
    assert dns.read_answer(proxy.answer_dns(dns.build_query(name))) == (dns.REFUSED, [])
    deny = proxy.audit[-1]
    assert deny["event"] == "deny" and deny["port"] == 53
    assert any(w in deny["reason"] for w in ("IP address", "ends in a number", "local name",
                                             "not a valid host name")), deny
    assert not [e for e in proxy.audit if e["event"] == "dns"]


def test_dns_refuses_the_hosts_own_names():
    proxy = PolicyProxy(NetworkConfig(), environ={})
    for name in names.own_names():
        assert dns.read_answer(proxy.answer_dns(dns.build_query(name)))[0] == dns.REFUSED
        assert proxy.audit[-1]["host"] == name and "reason" in proxy.audit[-1]


def test_a_resolve_entry_is_the_way_to_a_local_name():
    own = names.normalize(socket.gethostname())
    proxy = PolicyProxy(NetworkConfig(resolve={"localhost": "127.0.0.1",
                                               f"{own}:8080": "127.0.0.1:9"}), environ={})
    for name in ("localhost", own):
        rcode, ips = dns.read_answer(proxy.answer_dns(dns.build_query(name)))
        assert rcode == dns.NOERROR and ips, name
    # Only the name itself: a subdomain is still local.
    assert dns.read_answer(proxy.answer_dns(dns.build_query("a.localhost")))[0] == dns.REFUSED


def test_allow_entries_with_ports_limit_the_connection_not_the_name():
    # .internal is a local name: a resolve entry says where it is.
    proxy = PolicyProxy(NetworkConfig(allow=("api.internal:8443", "*.cdn.io:443"),
                                      resolve={"api.internal": "127.0.0.1"}), environ={})
    ip = fake_ip(proxy, "api.internal")
    assert proxy.decide(ip, 8443).mode == TUNNEL
    denied = proxy.decide(ip, 443)
    assert denied.mode == DENY and "port 443 of api.internal" in denied.reason
    cdn = fake_ip(proxy, "a.cdn.io")
    assert proxy.decide(cdn, 443).mode == TUNNEL and proxy.decide(cdn, 80).mode == DENY
