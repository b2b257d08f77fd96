"""Port forward specs: the `ports` field, the `-p` flag and the SDK option, and a host port in
use failing before any VM starts. No VM."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from typer.testing import CliRunner

from shuru import AsyncSandbox, PortError
from shuru import config as cfg
from shuru.cli.app import EXIT_CONFIG, app
from shuru.errors import ConfigError
from shuru.ports import parse_flags, parse_spec, spec_problems


@pytest.mark.parametrize("text,expected", [
    ("8080:8000", (8080, 8000)), ("8000", (None, 8000)), (8000, (None, 8000)),
    (" 1:65535 ", (1, 65535)),
])
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected


@pytest.mark.parametrize("text,message", [
    ("0:80", "host port 0 is outside 1-65535"), ("80:70000", "guest port 70000"),
    ("a:80", "'a' is not a port number"), ("1:2:3", "HOST:GUEST"), ("", "not a port number"),
    ("-1", "not a port number"), (True, "port numbers"), (1.5, "got a float"),
])
def test_parse_spec_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


def test_config_field_is_validated_and_normalised():
    assert cfg.validate({"ports": ["8080:8000", 9000, " 81:82"]})["ports"] == (
        "8080:8000", "9000", "81:82")
    assert cfg.merge(cfg.validate({"ports": ["1:2"]})).ports == ("1:2",)
    assert cfg.SandboxConfig().ports == ()


def test_config_problems_name_the_field_and_entry():
    with pytest.raises(ConfigError) as e:
        cfg.validate({"ports": ["8080:8000", "x:1", "8080:9000"]})
    text = str(e.value)
    assert "ports[1] 'x:1': 'x' is not a port number" in text
    assert "ports[2] '8080:9000': host port 8080 is already forwarded by '8080:8000'" in text
    with pytest.raises(ConfigError, match="ports must be a list"):
        cfg.validate({"ports": "8080:8000"})


def test_config_file_field(tmp_path):
    path = tmp_path / "shuru.json"
    path.write_text(json.dumps({"ports": ["8080:8000"]}))
    assert cfg.load_file(path)["ports"] == ("8080:8000",)
    path.write_text(json.dumps({"ports": [{"host": 1}]}))
    with pytest.raises(ConfigError, match=r"ports\[0\].*got a dict") as e:
        cfg.load_file(path)
    assert str(path) in str(e.value)


def test_flags_name_the_flag():
    assert parse_flags(["8080:8000", "9000"]) == ("8080:8000", "9000")
    with pytest.raises(ConfigError) as e:
        parse_flags(["8080", "nope", "1:2", "1:3"])
    assert e.value.problems == [
        "-p nope: 'nope' is not a port number",
        "-p 1:3: host port 1 is already forwarded by -p 1:2",
    ]


def test_spec_problems_only_lists():
    assert spec_problems("ports", []) == []
    assert spec_problems("ports", 80) == [
        'ports must be a list of "HOST:GUEST" strings (or GUEST ports), got 80']


def test_cli_bad_port_flag_exits_2_naming_it():
    result = CliRunner().invoke(app, ["run", "-p", "80:x", "--", "true"])
    assert result.exit_code == EXIT_CONFIG
    assert "-p 80:x: 'x' is not a port number" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def no_vm(monkeypatch):
    def no_backend(*_):
        raise AssertionError("a VM was started")

    monkeypatch.setattr("shuru.sandbox.default_backend", no_backend)


def test_host_port_in_use_fails_before_any_vm_starts(no_vm, taken_port):
    with pytest.raises(ConfigError) as e:
        asyncio.run(AsyncSandbox.start(ports=[f"{taken_port}:8000"]))
    assert e.value.problems == [
        f"ports '{taken_port}:8000': host port {taken_port} is already in use on 127.0.0.1"]


def test_cli_host_port_in_use_names_the_flag(no_vm, taken_port):
    result = CliRunner().invoke(app, ["run", "-p", f"{taken_port}:8000", "--", "true"])
    assert result.exit_code == EXIT_CONFIG, result.output
    assert f"-p '{taken_port}:8000': host port {taken_port} is already in use" in result.output
    assert "Traceback" not in result.output


def test_listeners_bound_before_a_failed_boot_are_closed(monkeypatch):
    def failing_backend(*_):
        raise PortError("stand-in for a boot failure", port=None)

    monkeypatch.setattr("shuru.sandbox.default_backend", failing_backend)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PortError, match="stand-in"):
        asyncio.run(AsyncSandbox.start(ports=[f"{port}:8000"]))
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # free again: the listener was closed


def test_run_time_methods_need_a_running_sandbox():
    from shuru.errors import SandboxStateError

    sandbox = AsyncSandbox()
    for call in (sandbox.expose(80), sandbox.unexpose(80), sandbox.connect(80)):
        with pytest.raises(SandboxStateError, match="must be running"):
            asyncio.run(call)
