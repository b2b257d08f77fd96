"""A sandbox's network session on the host: the glue between the agent channel and the policy
proxy (`shuru.net`).

Owns one `PolicyProxy` per sandbox with allow_net, turning the guest's capture on (the CA
bundle written to the guest, then the `net` message, after every handshake, so a VM restored
from a memory snapshot gets it too), and serving each stream the guest opens: a `connect`
stream is handed to `PolicyProxy.connect` through `ChannelGuestConn`, a `dns` stream is
answered with `PolicyProxy.dns`. Each runs as a task the session tracks, so stopping the
sandbox ends every connection it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from typing import Mapping

from .. import agent_client as agent
from ..channel import Channel, GuestStream
from ..errors import BootError, ConfigError, ProtocolError, SandboxDiedError

log = logging.getLogger("shuru.net")


class ChannelGuestConn:
    """`shuru.net.GuestConn` over a guest-opened stream: recv/send/send_eof/close."""

    def __init__(self, stream: GuestStream):
        self._stream = stream

    async def recv(self) -> bytes:
        return await self._stream.read()

    async def send(self, data: bytes) -> None:
        await self._stream.write(data)

    async def send_eof(self) -> None:
        await self._stream.write_eof()

    async def close(self) -> None:
        await self._stream.finish()


def valid_destination(ip: object, port: object) -> bool:
    """The guest names the address it connected to; anything but an IP and a port is bogus."""
    if not isinstance(port, int) or not 0 < port < 65536 or not isinstance(ip, str):
        return False
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return False
    return True


class NetworkSession:
    """The policy proxy of one sandbox and the streams it serves."""

    def __init__(self, network: Mapping, secrets: Mapping, *,
                 environ: Mapping[str, str] = os.environ):
        from .. import net

        self._net = net
        # Built before the VM boots: a secret whose host variable is missing is a
        # ConfigError now, not after a five-second boot.
        self.proxy = net.PolicyProxy(net.network_config(network, secrets), environ=environ)
        self._tasks: set[asyncio.Task] = set()

    @property
    def guest_env(self) -> dict[str, str]:
        """Placeholders and CA-bundle variables for every process in the guest."""
        return dict(self.proxy.guest_env)

    def log(self) -> list[dict]:
        return [dict(event) for event in self.proxy.audit]

    async def attach(self, channel: Channel, files) -> None:
        """Enable capture in the guest behind `channel`; returns once it is in place."""
        channel.accept_guest_streams(self._serve_soon)
        path = self._net.GUEST_CA_BUNDLE
        await files.write(path, self.proxy.guest_ca_bundle(), mode=0o644)
        stream = channel.open_stream()
        try:
            await stream.send_msg(agent.net(ca_bundle=path))
            refusal = agent.parse_net(await stream.recv())
        finally:
            stream.close()
        if refusal is not None:
            raise BootError(f"the guest could not enable networking: {refusal}")

    def _serve_soon(self, stream: GuestStream) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: GuestStream) -> None:
        first = stream.first
        try:
            if first["t"] == "dns":
                answer = await self.proxy.dns(first["d"])
                if answer and len(answer) <= 65535:
                    await stream.send_msg(agent.dns_answer(answer))
                    stream.close()  # the answer ends the stream
            elif valid_destination(first.get("ip"), first.get("port")):
                await self.proxy.connect(first["ip"], first["port"], ChannelGuestConn(stream))
        except (ConnectionError, OSError, SandboxDiedError, ProtocolError, ConfigError):
            pass  # the proxy recorded what it could; the guest sees the stream end
        except asyncio.CancelledError:
            raise
        except Exception:  # a proxy bug must end this connection, not the sandbox
            log.debug("guest stream %d failed", stream.id, exc_info=True)
        finally:
            if not stream.closed:
                with contextlib.suppress(Exception):
                    await stream.finish()

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await self.proxy.close()


def format_event(event: Mapping) -> str:
    """One audit event as a line for people (`--verbose`): what, where, and why."""
    where = f"{event.get('host') or event.get('ip')}:{event.get('port')}"
    if event.get("host") and event.get("event") != "dns":
        where += f" ({event.get('ip')})"
    parts = [f"{event.get('event', '?'):7}", where]
    if event.get("secrets"):
        parts.append("secrets " + ",".join(event["secrets"]))
    if "bytes_up" in event or "bytes_down" in event:
        parts.append(f"up {event.get('bytes_up', 0)} B, down {event.get('bytes_down', 0)} B")
    if event.get("reason"):
        parts.append(str(event["reason"]))
    return " ".join(parts[:2]) + "".join(f"; {p}" for p in parts[2:])
