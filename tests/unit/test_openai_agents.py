"""The OpenAI Agents SDK client without a VM: options become `AsyncSandbox.start` arguments,
options and session state round-trip through the SDK's own type registries, and what fails
before a VM runs reaches the SDK as its own errors, with shuru's as the cause."""

from __future__ import annotations

import json

import pytest
from agents.sandbox.errors import ExecTransportError, WorkspaceStartError
from agents.sandbox.session import SandboxSessionState
from agents.sandbox.session.sandbox_client import BaseSandboxClientOptions

from shuru import ConfigError, ShuruError
from shuru.integrations.openai_agents import (ShuruSandboxClient, ShuruSandboxClientOptions,
                                              ShuruSandboxSessionState)


def test_options_are_the_start_arguments_of_the_sandbox():
    options = ShuruSandboxClientOptions(
        checkpoint="ready", cpus=4, memory=4096, lifetime=600, allow_net=True,
        network={"allow": ["pypi.org"]},
        secrets={"TOKEN": {"from": "HOST_TOKEN", "hosts": ["api.example.com"]}})
    assert options.start_options() == {
        "from_": "ready", "cpus": 4, "memory": 4096, "lifetime": 600, "cold": False,
        "allow_net": True,
        "network": {"allow": ["pypi.org"]},
        "secrets": {"TOKEN": {"from": "HOST_TOKEN", "hosts": ["api.example.com"]}}}
    # Unset fields are left to shuru's defaults (and its config errors).
    assert ShuruSandboxClientOptions().start_options() == {"cold": False}


async def test_options_and_state_round_trip_through_the_sdk_registries():
    client = ShuruSandboxClient()
    options = ShuruSandboxClientOptions(memory=1024, exposed_ports=(8000,))
    parsed = BaseSandboxClientOptions.parse(json.loads(options.model_dump_json()))
    assert parsed == options and isinstance(parsed, ShuruSandboxClientOptions)

    session = await client.create(options=options)  # creating starts nothing
    assert not await session.running()
    payload = json.loads(json.dumps(client.serialize_session_state(session.state)))
    assert payload["type"] == "shuru" and payload["options"]["memory"] == 1024
    for state in (client.deserialize_session_state(dict(payload)),
                  SandboxSessionState.parse(dict(payload))):
        assert isinstance(state, ShuruSandboxSessionState)
        assert state.session_id == session.state.session_id
        assert state.exposed_ports == (8000,) and state.options == options
    await client.delete(session)  # nothing to stop: a no-op
    assert not client._live


async def test_a_sandbox_that_cannot_start_is_the_sdks_start_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SHURU_HOME", str(tmp_path))  # no image, no checkpoints: nothing boots
    client = ShuruSandboxClient()
    session = await client.create(options=ShuruSandboxClientOptions(memory=-1))
    with pytest.raises(WorkspaceStartError) as caught:
        await session.start()
    assert isinstance(caught.value.__cause__, ConfigError)
    assert "memory" in str(caught.value.__cause__)
    assert not await session.running()

    session = await client.create(options=ShuruSandboxClientOptions(checkpoint="no-such"))
    with pytest.raises(WorkspaceStartError) as caught:
        await session.start()
    assert isinstance(caught.value.__cause__, ShuruError)


async def test_commands_without_a_vm_are_the_sdks_transport_error():
    session = await ShuruSandboxClient().create()
    with pytest.raises(ExecTransportError) as caught:
        await session.exec("true")
    assert not isinstance(caught.value, (OSError, ShuruError))


async def test_output_nobody_polls_is_bounded_keeping_the_newest():
    from shuru.integrations.openai_agents import _PTY_BUFFER_MAX, _PtyEntry

    session = (await ShuruSandboxClient().create())._inner
    entry = _PtyEntry(process=None, tty=False)
    chunk = 64 * 1024
    total = _PTY_BUFFER_MAX + 2 * 1024 * 1024
    for i in range(total // chunk):
        await entry.add(bytes([i % 251]) * chunk)
    assert sum(map(len, entry.output_chunks)) <= _PTY_BUFFER_MAX
    assert entry.dropped == total - sum(map(len, entry.output_chunks)) > 0
    dropped = entry.dropped
    entry.exit_code = 0
    entry.output_closed.set()
    update = await session._update(1, entry, 250, None)
    assert update.exit_code == 0 and update.process_id is None
    assert update.output.startswith(b"[... %d bytes of output dropped ...]\n" % dropped)
    assert update.output.endswith(bytes([(total // chunk - 1) % 251]) * chunk)
    assert entry.dropped == 0
