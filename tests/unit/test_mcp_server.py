"""The MCP server's pure parts and its tool surface, in process (no VM): output bounds,
signal names, start options and offered secrets, schemas a model can read, and errors that
come back as tool errors."""

import signal

import pytest
from mcp import Client

from shuru import ConfigError
from shuru.integrations.mcp import (OUTPUT_LIMIT, Session, build_server, clip, head,
                                    signal_number, start_options)

OFFERED = {"OPENAI_API_KEY": {"from": "OPENAI_API_KEY", "hosts": ["api.openai.com"]}}


def test_clip_keeps_short_output_and_cuts_long_output_in_the_middle():
    assert clip(b"hello\n") == ("hello\n", 0)
    assert clip(b"x" * OUTPUT_LIMIT) == ("x" * OUTPUT_LIMIT, 0)
    data = b"H" * OUTPUT_LIMIT + b"middle" + b"T" * OUTPUT_LIMIT
    text, cut = clip(data)
    assert cut == len(data) - OUTPUT_LIMIT
    assert text.startswith("H" * (OUTPUT_LIMIT // 2) + "\n[... ")
    assert text.endswith(f"{cut} bytes cut ...]\n" + "T" * (OUTPUT_LIMIT // 2))
    assert clip(b"\xff\xfeok")[0] == "\ufffd\ufffdok"  # bytes that are not UTF-8 still show


def test_process_output_is_read_in_pieces_that_end_on_a_character():
    assert head(b"abc", 5) == b"abc"
    assert head(b"abcdef", 4) == b"abcd"
    text = "ab\u00e9\u20ac\U0001f600z".encode()  # 1-, 2-, 3- and 4-byte characters
    pieces, rest = [], text
    while rest:
        pieces.append(head(rest, 4))
        rest = rest[len(pieces[-1]):]
    assert b"".join(pieces) == text
    assert [p.decode() for p in pieces] == ["ab\u00e9", "\u20ac", "\U0001f600", "z"]
    assert head(b"\x80\x80\x80\x80\x80\x80", 4) == b"\x80" * 4  # not UTF-8: cut as asked


def test_signal_names_and_numbers():
    assert signal_number("TERM") == signal_number("sigterm") == signal.SIGTERM
    assert signal_number("KILL") == signal_number(9) == 9
    for bad in ("BOGUS", 0, 65, True, "SIG"):
        with pytest.raises(ConfigError, match="signal: unknown signal"):
            signal_number(bad)


def test_start_options_map_the_tool_arguments():
    assert start_options({}, from_checkpoint=None, cpus=None, memory_mb=None, allow_hosts=None,
                         secrets=None, env=None) == {}
    assert start_options({}, from_checkpoint="ready", cpus=1, memory_mb=512,
                         allow_hosts=["pypi.org"], secrets=None, env={"A": "1"}) == {
        "from_": "ready", "cpus": 1, "memory": 512, "env": {"A": "1"},
        "allow_net": True, "network": {"allow": ["pypi.org"]}}


def test_a_model_can_only_name_secrets_the_server_offers():
    # The secret's hosts join the allowlist: the key is useless where it cannot connect.
    assert start_options(OFFERED, from_checkpoint=None, cpus=None, memory_mb=None,
                         allow_hosts=["pypi.org"], secrets=["OPENAI_API_KEY"], env=None) == {
        "secrets": OFFERED, "allow_net": True,
        "network": {"allow": ["pypi.org", "api.openai.com"]}}
    with pytest.raises(ConfigError) as e:
        start_options(OFFERED, from_checkpoint=None, cpus=None, memory_mb=None,
                      allow_hosts=["evil.example"], secrets=["AWS_SECRET_ACCESS_KEY"], env=None)
    assert e.value.problems == ["secrets: 'AWS_SECRET_ACCESS_KEY' is not offered by this server "
                                "(offered: OPENAI_API_KEY)"]


async def test_every_tool_and_argument_is_described_for_a_model():
    async with Client(build_server(Session())) as client:
        tools = (await client.list_tools()).tools
    assert {t.name for t in tools} == {
        "start_sandbox", "list_sandboxes", "stop_sandbox", "exec", "start_process",
        "read_process_output", "write_process_stdin", "signal_process", "read_file",
        "write_file", "list_files", "checkpoint_sandbox"}
    for tool in tools:
        assert len(tool.description) > 40, tool.name
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name}"
    exec_tool = next(t for t in tools if t.name == "exec")
    assert exec_tool.input_schema["required"] == ["sandbox_id", "command"]


async def test_errors_come_back_as_tool_errors_and_the_server_goes_on():
    session = Session(OFFERED)
    async with Client(build_server(session)) as client:
        r = await client.call_tool("exec", {"sandbox_id": "sb-7", "command": "true"})
        assert r.is_error and "no sandbox 'sb-7' in this session" in r.content[0].text
        r = await client.call_tool("read_process_output", {"process_id": "p-1"})
        assert r.is_error and "no process 'p-1'" in r.content[0].text
        r = await client.call_tool("start_sandbox", {"secrets": ["HOME"]})
        assert r.is_error and "'HOME' is not offered" in r.content[0].text
        r = await client.call_tool("exec", {"sandbox_id": "sb-7"})  # schema: command missing
        assert r.is_error and "command" in r.content[0].text
        r = await client.call_tool("list_sandboxes", {})
        assert not r.is_error
        assert r.structured_content == {"sandboxes": [],
                                        "offered_secrets": {"OPENAI_API_KEY": ["api.openai.com"]}}


def test_the_cli_refuses_an_offered_secret_whose_variable_is_unset(monkeypatch):
    from typer.testing import CliRunner

    from shuru.cli.app import app

    monkeypatch.delenv("SHURU_TEST_UNSET_KEY", raising=False)
    result = CliRunner().invoke(app, ["mcp", "--secret",
                                      "KEY=SHURU_TEST_UNSET_KEY@api.example.com"])
    assert result.exit_code == 2
    assert "--secret KEY: the host variable SHURU_TEST_UNSET_KEY is not set" in result.output
    result = CliRunner().invoke(app, ["mcp", "--secret", "KEY=no-at-sign"])
    assert result.exit_code == 2 and "--secret" in result.output


def test_the_mcp_package_is_imported_only_when_a_server_is_built():
    import subprocess
    import sys

    code = ("import sys, shuru.cli, shuru.integrations.mcp; "
            "assert 'mcp' not in sys.modules, 'imported mcp'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_the_extra_the_cli_says_what_to_install(monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from shuru.cli.app import app

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mcp" else find_spec(name, *a))
    result = CliRunner().invoke(app, ["mcp"])
    assert result.exit_code == 125
    assert "pip install 'shuru[mcp]'" in result.output
