"""A round trip on a channel's control stream, for tests that need to know the far end (the
agent, or a detached sandbox's supervisor) is still serving after something they did. The
product has no use for it: every real request is its own round trip."""

from __future__ import annotations

import itertools

from shuru import agent_client as agent
from shuru.channel import Channel

_ids = itertools.count(1)


async def ping(channel: Channel) -> None:
    """Returns once the far end answered a ping."""
    await channel._control(agent.ping(next(_ids)))
