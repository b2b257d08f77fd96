"""Which upstream proxy a connection takes: the environment variables and NO_PROXY."""

import pytest

from shuru.errors import ConfigError
from shuru.net.upstream import ProxySettings, UpstreamProxy, parse_proxy_url, resolve_target


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
