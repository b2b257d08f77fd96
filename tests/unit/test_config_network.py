"""The network settings as config fields, flags and SDK options: validation, merging, and the
errors a user sees. No VM."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from shuru import AsyncSandbox
from shuru import config as cfg
from shuru.cli.app import EXIT_CONFIG, app, network_flags
from shuru.errors import ConfigError
from shuru.net.session import format_event, valid_destination
from shuru.sandbox import resolve_config


def problems_of(fn, *args, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    return e.value.problems


def test_offline_unless_allow_net():
    assert cfg.SandboxConfig().allow_net is False
    c = resolve_config({"allow_net": True})
    assert (c.allow_net, c.network, c.secrets) == (True, {}, {})


def test_network_or_secrets_without_allow_net_is_an_error_naming_each():
    found = problems_of(resolve_config, {
        "network": {"allow": ["api.example.com"]},
        "secrets": {"K": {"from": "HOST_K", "hosts": ["api.example.com"]}}})
    assert len(found) == 2
    assert found[0].startswith("network is set but allow_net is not")
    assert found[1].startswith("secrets is set but allow_net is not")


def test_every_network_problem_is_listed_with_its_field():
    found = problems_of(cfg.validate, {
        "allow_net": "yes",
        "network": {"allow": ["ok.example.com", "bad name!"], "resolve": {"x.test": "nope"},
                    "proxy": 1},
        "secrets": {"lower-case": {"from": "V", "hosts": ["a.test"]},
                    "K": {"hosts": []}}})
    text = "\n".join(found)
    for field in ("allow_net", "network.allow[1]", "network.resolve.x.test", "network.proxy",
                  "secrets 'lower-case'", "secrets.K.from", "secrets.K.hosts"):
        assert field in text, (field, text)


def test_a_secret_host_must_be_allowed():
    found = problems_of(resolve_config, {
        "allow_net": True, "network": {"allow": ["api.example.com"]},
        "secrets": {"K": {"from": "HOST_K", "hosts": ["other.example.com"]}}})
    assert found == [p for p in found if "secrets.K.hosts[0]" in p] and found


def test_layers_merge_network_fields_sensibly(tmp_path):
    f = tmp_path / "shuru.json"
    f.write_text('{"allow_net": true, "network": {"allow": ["a.test"], '
                 '"resolve": {"a.test": "127.0.0.1"}}, '
                 '"secrets": {"A": {"from": "HA", "hosts": ["a.test"]}}}')
    c = resolve_config({"network": {"allow": ["a.test", "b.test"],
                                    "resolve": {"b.test": "127.0.0.2"}},
                        "secrets": {"B": {"from": "HB", "hosts": ["b.test"]}}}, f)
    assert c.network == {"allow": ["a.test", "b.test"],
                         "resolve": {"a.test": "127.0.0.1", "b.test": "127.0.0.2"}}
    assert set(c.secrets) == {"A", "B"}
    # allow_net: false in a later layer wins, and then the rest is an error
    assert problems_of(resolve_config, {"allow_net": False}, f)


def test_flags_allow_host_implies_allow_net_and_secret_parses():
    out = network_flags(None, ["api.test", "*.svc.test"], ["K=HOST_K@api.test"])
    assert out == {"allow_net": True, "network": {"allow": ["api.test", "*.svc.test"]},
                   "secrets": {"K": {"from": "HOST_K", "hosts": ["api.test"]}}}
    assert network_flags(True, [], []) == {"allow_net": True}
    out = network_flags(None, ["api.test"], ["K=HOST_K@api.test+in_url"])
    assert out["secrets"] == {"K": {"from": "HOST_K", "hosts": ["api.test"], "in_url": True}}


def test_a_config_file_may_opt_a_secret_in_to_urls(tmp_path):
    f = tmp_path / "shuru.json"
    f.write_text('{"allow_net": true, "secrets": {"A": {"from": "HA", "hosts": ["a.test"], '
                 '"in_url": true}}}')
    assert resolve_config({}, f).secrets == {"A": {"from": "HA", "hosts": ["a.test"],
                                                   "in_url": True}}
    f.write_text('{"allow_net": true, "secrets": {"A": {"from": "HA", "hosts": ["a.test"], '
                 '"in_url": 1}}}')
    assert any("secrets.A.in_url" in p for p in problems_of(resolve_config, {}, f))


def test_bad_flags_name_the_flag():
    found = problems_of(network_flags, None, ["good.test", "bad host!"],
                        ["nohosts", "K=V@a.test", "K=V@a.test"])
    text = "\n".join(found)
    assert "--allow-host 'bad host!'" in text
    assert "--secret 'nohosts'" in text
    assert "--secret K is given more than once" in text


def test_cli_reports_bad_network_flags_without_a_traceback():
    result = CliRunner().invoke(app, ["run", "--allow-host", "bad host!", "--secret", "x",
                                      "--", "true"])
    assert result.exit_code == EXIT_CONFIG
    assert "--allow-host" in result.output and "--secret" in result.output
    assert "Traceback" not in result.output


def test_missing_host_variable_fails_before_any_vm_starts(monkeypatch):
    monkeypatch.delenv("SHURU_NOT_SET_ANYWHERE", raising=False)

    def no_backend(*_):
        raise AssertionError("a VM was started")

    monkeypatch.setattr("shuru.sandbox.default_backend", no_backend)
    with pytest.raises(ConfigError) as e:
        asyncio.run(AsyncSandbox.start(
            allow_net=True, secrets={"K": {"from": "SHURU_NOT_SET_ANYWHERE", "hosts": ["a.test"]}}))
    assert "SHURU_NOT_SET_ANYWHERE" in str(e.value) and "secrets.K" in str(e.value)


def test_audit_events_read_as_lines():
    line = format_event({"time": 0, "event": "inject", "host": "api.test", "ip": "198.18.0.1",
                         "port": 443, "secrets": ["K"]})
    assert line == "inject  api.test:443 (198.18.0.1); secrets K"
    line = format_event({"time": 0, "event": "deny", "host": None, "ip": "203.0.113.9",
                         "port": 80, "reason": "hard-coded"})
    assert line == "deny    203.0.113.9:80; hard-coded"
    line = format_event({"time": 0, "event": "close", "host": "a.test", "ip": "198.18.0.2",
                         "port": 443, "bytes_up": 10, "bytes_down": 20})
    assert line.endswith("; up 10 B, down 20 B")


def test_guest_named_destinations_are_checked():
    assert valid_destination("198.18.0.1", 443) and valid_destination("::1", 1)
    for ip, port in (("198.18.0.1", 0), ("198.18.0.1", 65536), ("x", 80), (None, 80)):
        assert not valid_destination(ip, port)
