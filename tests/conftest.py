"""Shared fixtures. Contract tests run the guest agent as a host subprocess over a
socketpair; integration tests boot real VMs (see tests/integration/conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from shuru.channel import Channel


class AgentProcess:
    """The guest agent running on the host, connected to a Channel by a socketpair."""

    def __init__(self):
        host_sock, agent_sock = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shuru_guest", "--fd", str(agent_sock.fileno())],
            pass_fds=[agent_sock.fileno()],
        )
        agent_sock.close()
        self.sock = host_sock
        self.channel: Channel | None = None

    async def connect(self) -> Channel:
        reader, writer = await asyncio.open_connection(sock=self.sock)
        self.channel = Channel(reader, writer)
        await self.channel.handshake()
        return self.channel

    async def close(self) -> None:
        """Close the channel and let the agent end its processes (as it does when a host
        goes away), then make sure the agent itself is gone."""
        if self.channel:
            await self.channel.close()
        self.sock.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 10)
        except asyncio.TimeoutError:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def agent():
    a = AgentProcess()
    await a.connect()
    yield a
    await a.close()
