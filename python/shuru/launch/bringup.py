"""Bringing one sandbox up: from a resolved config to a running VM with its agent connected.

The steps, in the order that makes a bad start fail cheaply, before any VM runs:

0. the boot fields checked together (`plan.check`): `rootfs` with `from_` is refused;
1. the network session (with allow_net): a host variable a secret names must exist;
2. the forwarded host ports, bound now: a port in use fails here;
3. the host folders to mount, checked: a missing folder or a refused `:rw` fails here;
4. the backend, and the plan (`plan.load`, in a thread: a checkpoint's disk may be hashed);
5. the machine, restored from a saved state or booted (`faststart.start`), agent connected;
6. on the channel: the network session attached, the port forwards attached, the folders
   mounted.

`Launch.run` owns what it makes until it returns: if any step fails (or the start is
cancelled) it closes what the earlier steps made and raises. On success the caller
(`AsyncSandbox`) adopts the parts (and the `Plan`) and closes them when the sandbox ends.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from . import faststart, plan as plan_mod
from ..channel import Channel
from ..config import SandboxConfig
from ..files import Files


class Launch:
    """One sandbox's bring-up and the parts it made: `run` makes them; the sandbox that
    asked adopts them once it returns, and closes them when it ends."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        self.plan: plan_mod.Plan | None = None
        self.machine: Any = None  # backends.base.Machine
        self.channel: Channel | None = None
        self.net: Any = None  # net.session.NetworkSession with allow_net, else None
        self.ports: Any = None  # ports.PortForwards: listeners bound before boot
        self.mounts: dict[str, Any] = {}  # guest path -> mounts.ActiveMount

    async def run(self, backend: Callable[[], Any], *,
                  on_console: Callable[[bytes], None] | None = None) -> None:
        """Start the VM the config describes with `backend()` (called once the cheap checks
        have passed) and connect everything to its agent (the steps above). On failure or
        cancellation, what was made is closed (`close`) before the error propagates."""
        from .. import mounts
        from ..ports import PortForwards

        config = self.config
        try:
            plan_mod.check(config)  # a refused combination of boot fields fails first
            if config.allow_net:
                from ..net.session import NetworkSession

                self.net = NetworkSession(config.network, config.secrets)
            self.ports = PortForwards()
            await self.ports.bind_all(config.ports)  # a port in use fails before boot
            # Checked before boot: a missing folder or a refused :rw fails at once.
            mount_specs = mounts.check_host(
                [mounts.parse_spec(text) for text in config.mounts],
                allow_host_writes=config.allow_host_writes)
            chosen = backend()
            self.plan = await asyncio.to_thread(plan_mod.load, config)
            self.machine, self.channel = await faststart.start(
                chosen, self.plan.spec, self.plan.layer, cold=config.cold,
                on_console=on_console)
            channel = self.channel
            if self.net:
                await self.net.attach(channel, Files(lambda: channel))
            self.ports.attach(channel)
            for spec in mount_specs:
                self.mounts[spec.guest] = await mounts.mount(channel, spec)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close every part (the forwards and mounts before the channel they use, the VM
        last); `run` does it when it fails."""
        if self.ports:
            await self.ports.close()
        for active in self.mounts.values():
            await active.close()
        if self.net:
            await self.net.close()
        if self.channel:
            await self.channel.close()
        if self.machine:
            await self.machine.stop()
