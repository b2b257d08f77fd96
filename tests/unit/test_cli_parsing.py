"""How the CLI splits its own options from the guest command. No VM: the sandbox and the
terminal are replaced by recorders, so these pin parsing only."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shuru import checkpoints
from shuru.cli import terminal
from shuru import sandbox as sandbox_mod
from shuru.cli.app import app, command_last


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Record the config and command each CLI command would start a sandbox with."""
    monkeypatch.setenv("SHURU_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no ./shuru.json of the developer's
    seen: dict = {}

    class FakeSandbox:
        def __init__(self, config):
            seen["config"] = config

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return None

        async def checkpoint(self, name, *, overwrite=False):
            seen["checkpoint"] = name
            return checkpoints.Checkpoint(name, tmp_path, {"disk": {"size": 0}})

    async def run_piped(sandbox, argv):
        seen["command"] = argv
        return 0

    async def run_command(config, on_exit=None, on_start=None):
        seen["config"] = config
        return 0

    monkeypatch.setattr(sandbox_mod, "AsyncSandbox", FakeSandbox)
    monkeypatch.setattr(terminal, "run_piped", run_piped)
    monkeypatch.setattr(terminal, "run_command", run_command)
    return seen


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_checkpoint_create_reads_options_after_the_name(recorded):
    # The issue's own line: --allow-host used to become the command.
    r = invoke("checkpoint", "create", "ready", "--allow-host", "pypi.org", "--",
               "sh", "-c", "pip download six")
    assert r.exit_code == 0, r.output
    assert recorded["command"] == ["sh", "-c", "pip download six"]
    assert recorded["config"].network["allow"] == ["pypi.org"]
    assert recorded["config"].allow_net is True
    assert recorded["checkpoint"] == "ready"


def test_checkpoint_create_takes_the_machine_flags(recorded):
    r = invoke("checkpoint", "create", "big", "--cpus", "1", "--memory", "1024",
               "--disk-size", "8192", "--", "true")
    assert r.exit_code == 0, r.output
    c = recorded["config"]
    assert (c.cpus, c.memory, c.disk_size) == (1, 1024, 8192)
    assert recorded["command"] == ["true"]


def test_checkpoint_create_without_the_separator_and_options_on_both_sides(recorded):
    r = invoke("checkpoint", "create", "-e", "A=1", "ready", "--cpus", "3", "sh", "-c",
               "echo --cpus 9")
    assert r.exit_code == 0, r.output
    assert recorded["command"] == ["sh", "-c", "echo --cpus 9"]
    assert recorded["config"].cpus == 3
    assert recorded["config"].env == {"A": "1"}


def test_a_bad_option_after_the_name_is_reported_as_that_option(recorded):
    r = invoke("checkpoint", "create", "ready", "--allow-host", "bad host!", "--", "true")
    assert r.exit_code == 2
    assert "--allow-host 'bad host!'" in r.output
    assert "command" not in recorded


def test_run_leaves_everything_after_the_command_to_the_command(recorded):
    r = invoke("run", "--cpus", "2", "ls", "-la", "--cpus", "4")
    assert r.exit_code == 0, r.output
    assert recorded["config"].command == ("ls", "-la", "--cpus", "4")
    assert recorded["config"].cpus == 2
    r = invoke("run", "-e", "A=1", "--", "--weird-program", "-x")
    assert r.exit_code == 0, r.output
    assert recorded["config"].command == ("--weird-program", "-x")


def test_command_last_is_pure():
    takes = {"--cpus", "-e", "--env"}
    assert command_last(["n", "--cpus", "2", "--", "a", "-b"], 1, takes) == \
        ["n", "--cpus", "2", "--", "a", "-b"]
    assert command_last(["--cpus=2", "-eA=1", "n", "a", "--cpus", "3"], 1, takes) == \
        ["--cpus=2", "-eA=1", "n", "--", "a", "--cpus", "3"]
    assert command_last(["--", "--", "x"], 0, takes) == ["--", "--", "x"]
    assert command_last(["n"], 1, takes) == ["n"]
