"""The proxy's decisions, without a socket: deny, tunnel or intercept, and why."""

import pytest

from shuru.net import NetworkConfig, PolicyProxy, Secret, dns
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
