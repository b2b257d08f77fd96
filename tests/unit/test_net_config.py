"""Network and secrets settings: every problem named by its field; the flag parser."""

import pytest

from shuru.errors import ConfigError
from shuru.net import NetworkConfig, Secret, network_config, network_problems, parse_secret_flag


def test_valid_settings_become_a_frozen_config():
    config = network_config(
        {"allow": ["API.example.com.", "*.github.com"], "resolve": {"API.example.com": "127.0.0.1"}},
        {"GH": {"from": "GH_TOKEN", "hosts": ["api.github.com"]}})
    assert config == NetworkConfig(
        allow=("api.example.com", "*.github.com"), resolve={"api.example.com": "127.0.0.1"},
        secrets=(Secret("GH", "GH_TOKEN", ("api.github.com",)),))
    assert network_config(None, None) == NetworkConfig()
    assert network_problems({}, {}) == []


def test_every_problem_is_listed_with_its_field():
    problems = network_problems(
        {"allow": ["ok.com", "*", "1.2.3.4"], "resolve": {"x.com": "not-an-ip", "bad name": "1.1.1.1"},
         "alow": []},
        {"GH": {"from": "GH TOKEN", "hosts": ["api.github.com"], "extra": 1},
         "NOHOSTS": {"from": "X"},
         "EMPTY": {"from": "Y", "hosts": []},
         "bad-name": {"from": "Z", "hosts": ["ok.com"]},
         "NOTMAP": "GH_TOKEN"})
    text = "\n".join(problems)
    expected = ["network.alow", "network.allow[1]", "network.allow[2]", "network.resolve.x.com",
                "network.resolve 'bad name'", "secrets.GH.from", "secrets.GH.extra",
                "secrets.GH.hosts[0] 'api.github.com' is not allowed by network.allow",
                "secrets.NOHOSTS.hosts is missing", "secrets.EMPTY.hosts must name at least one",
                "secrets 'bad-name'", "secrets.NOTMAP must be a mapping"]
    for field in expected:
        assert field in text, field
    assert len(problems) == len(expected)


def test_wrong_shapes():
    assert network_problems("all", None)[0].startswith("network must be a mapping")
    assert network_problems({"allow": "a.com"}, None)[0].startswith("network.allow must be a list")
    assert network_problems(None, ["GH"])[0].startswith("secrets must be a mapping")
    assert network_problems({"resolve": ["a"]}, None)[0].startswith("network.resolve must be")


def test_network_config_raises_with_all_problems():
    with pytest.raises(ConfigError) as e:
        network_config({"allow": ["*"]}, {"A": {"from": "B"}})
    assert len(e.value.problems) == 2


def test_an_empty_allowlist_covers_any_secret_host():
    assert network_problems({"allow": []}, {"A": {"from": "B", "hosts": ["*.x.io"]}}) == []


def test_secret_flag():
    assert parse_secret_flag("GH=GH_TOKEN@api.github.com, *.GitHub.com") == \
        Secret("GH", "GH_TOKEN", ("api.github.com", "*.github.com"))


@pytest.mark.parametrize("text, fragment", [
    ("GH", "expected NAME=HOST_ENV_VAR@host1,host2"),
    ("GH=TOKEN", "expected NAME=HOST_ENV_VAR@host1,host2"),
    ("GH=TOKEN@", "hosts must name at least one host"),
    ("G-H=TOKEN@a.com", "must look like OPENAI_API_KEY"),
    ("GH=@a.com", "secrets.GH.from must be a host environment variable name"),
    ("GH=TOKEN@a.com,*", "secrets.GH.hosts[1]"),
])
def test_bad_secret_flags(text, fragment):
    with pytest.raises(ConfigError) as e:
        parse_secret_flag(text)
    assert fragment in str(e.value)
    assert all(p.startswith(f"--secret {text!r}") for p in e.value.problems)


def test_resolve_entries_may_carry_ports():
    assert network_problems({"resolve": {"a.test:443": "127.0.0.1:8443", "b.test": "::1",
                                         "c.test:80": "[::1]:8080"}}, None) == []
    problems = network_problems({"resolve": {"a.test:x": "127.0.0.1", "b.test": "127.0.0.1:0",
                                             "c.test": "::1:80:x", "d.test": "name.test"}}, None)
    assert [p.split(" ")[0] + " " + p.split(" ")[1] for p in problems] == [
        "network.resolve 'a.test:x':", "network.resolve.b.test must", "network.resolve.c.test must",
        "network.resolve.d.test must"]


def test_allow_entries_with_ports():
    config = network_config({"allow": ["API.internal:8443", "*.Example.com:443", "plain.io"]},
                            {"K": {"from": "K", "hosts": ["api.internal", "a.example.com"]}})
    assert config.allow == ("api.internal:8443", "*.example.com:443", "plain.io")
    problems = network_problems({"allow": ["a.io:0", "a.io:x", "1.2.3.4:443", "0x7f000001"]},
                                {"K": {"from": "K", "hosts": ["b.io:443"]}})
    assert [p.split(" ")[0] for p in problems] == [
        "network.allow[0]", "network.allow[1]", "network.allow[2]", "network.allow[3]",
        "secrets.K.hosts[0]"]  # a secret's hosts take no port


def test_numeric_names_cannot_be_resolve_keys():
    problems = network_problems({"resolve": {"2130706433": "127.0.0.1", "127.1:80": "127.0.0.1"}},
                                None)
    assert len(problems) == 2 and all("expected a host name" in p for p in problems)


def test_in_url_is_an_opt_in_per_secret():
    config = network_config(None, {"A": {"from": "X", "hosts": ["a.io"], "in_url": True},
                                   "B": {"from": "Y", "hosts": ["b.io"]}})
    assert [s.in_url for s in config.secrets] == [True, False]
    problems = network_problems(None, {"A": {"from": "X", "hosts": ["a.io"], "in_url": "yes"}})
    assert problems == ["secrets.A.in_url must be true or false, got 'yes'"]


def test_a_hand_built_secret_keeps_its_in_url():
    from shuru.net.config import config_problems
    assert config_problems(NetworkConfig(secrets=(Secret("A", "X", ("a.io",), True),))) == []


def test_secret_flag_takes_in_url():
    assert parse_secret_flag("GH=GH_TOKEN@api.github.com+in_url") == \
        Secret("GH", "GH_TOKEN", ("api.github.com",), in_url=True)
    with pytest.raises(ConfigError) as e:
        parse_secret_flag("GH=GH_TOKEN@api.github.com+in_body")
    assert "unknown option +in_body" in str(e.value) and "--secret" in str(e.value)
