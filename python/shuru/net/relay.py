"""Moving bytes between a guest connection and its upstream, once the policy has decided.

`tunnel` copies both ways byte for byte and passes a half-close on; `intercept` reads the
guest's side as HTTP/1.1, rewrites each request head (placeholders to real values, over TLS
only), passes bodies through untouched, and reads what comes back as HTTP/1.1 responses
with every real value masked (scrub.ResponseScrubber). Every buffer is bounded: a head by
http.MAX_HEAD, the scrubber's hold-back by the values' lengths, everything else by one read.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

from . import http
from .conn import READ_SIZE, GuestConn
from .scrub import ResponseScrubber


@dataclass
class Counts:
    up: int = 0
    down: int = 0


async def both(*coroutines) -> None:
    """Run both directions; the first failure ends the connection."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def downstream(conn: GuestConn, reader: asyncio.StreamReader, counts: Counts) -> None:
    """Upstream to guest until upstream's EOF, which is passed on."""
    while data := await reader.read(READ_SIZE):
        counts.down += len(data)
        await conn.send(data)
    await conn.send_eof()


async def scrubbed(conn: GuestConn, reader: asyncio.StreamReader, counts: Counts,
                   scrubber: ResponseScrubber) -> None:
    """Upstream to guest through `scrubber`; http.ResponseError once it refuses what the
    upstream sent (the guest has been told, if it was still waiting for a head)."""
    while data := await reader.read(READ_SIZE):
        counts.down += len(data)
        if out := scrubber.feed(data):
            await conn.send(out)
        if scrubber.done:
            await conn.send_eof()
            raise http.ResponseError(scrubber.error)
    if tail := scrubber.eof():
        await conn.send(tail)
    await conn.send_eof()


def _half_close(writer: asyncio.StreamWriter) -> None:
    if writer.can_write_eof():  # TLS upstream cannot; there the guest's EOF ends the sending
        writer.write_eof()


async def tunnel(guest: GuestConn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 counts: Counts) -> None:
    async def upstream():
        while data := await guest.recv():
            counts.up += len(data)
            writer.write(data)
            await writer.drain()
        _half_close(writer)

    await both(upstream(), downstream(guest, reader, counts))


async def intercept(conn: GuestConn, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, *, host: str, counts: Counts,
                    injections: Mapping[bytes, http.Injection], inject: bool,
                    on_inject: Callable[[set[bytes]], None]) -> None:
    """HTTP/1.1 from the guest; with `inject` (TLS to a verified upstream) each head is
    rewritten with `injections` (placeholder to value) and `on_inject` hears which
    placeholders each request used; without it (plain HTTP) a request holding a placeholder
    is refused with a 403 naming the secret. Either way every response is scrubbed."""
    methods: deque[bytes] = deque()

    def refuse_placeholders(head: http.RequestHead) -> None:
        found = http.placeholders_in(head, injections)
        if found:
            names = ", ".join(sorted(injections[p].name for p in found))
            raise http.HTTPError(f"the secret {names} is sent only over HTTPS (TLS to a "
                                 f"verified {host}); use https://{host}", status=403)

    async def upstream():
        buffer = bytearray()
        requests = 0
        while True:
            scanned = 0
            try:
                while (end := http.head_end(buffer, scanned - 3)) < 0:
                    scanned = len(buffer)
                    data = await conn.recv()
                    if not data:
                        return _half_close(writer)
                    buffer += data
                raw = bytes(buffer[:end])
                head = http.parse_head(raw)
                http.check_authority(head, host)
                if http.is_upgrade(head):
                    # What would come back after a switch is not HTTP, and could not be
                    # scrubbed message by message.
                    raise http.HTTPError(f"protocol upgrades (WebSocket, h2c, CONNECT) are "
                                         f"not supported on {host}, a host secrets are "
                                         f"sent to", status=403)
                if not inject:
                    refuse_placeholders(head)
                framer = http.body_framer(head)
            except http.HTTPError as e:
                if requests == 0:  # nothing of ours is on the way back yet: say why
                    await conn.send(http.simple_response(e.status, f"shuru: {e.message}\n"))
                    await conn.send_eof()
                raise
            del buffer[:end]
            requests += 1
            new, used = http.rewrite_head(head, injections if inject else {})
            if used:
                on_inject(used)
            # A head we did not change goes out as it came, spacing and all.
            out = raw if new == head else new.encode()
            methods.append(head.method)
            counts.up += len(out)
            writer.write(out)
            while not framer.done:
                if not buffer:
                    data = await conn.recv()
                    if not data:  # the guest ended mid-body; upstream decides what that means
                        await writer.drain()
                        return _half_close(writer)
                    buffer += data
                n = framer.feed(buffer)
                counts.up += n
                writer.write(bytes(buffer[:n]))
                del buffer[:n]
                await writer.drain()
            await writer.drain()

    # A server that reflects the request must not hand the guest the real value.
    scrubber = ResponseScrubber([i.value for i in injections.values()],
                                lambda: methods.popleft() if methods else b"GET")
    await both(upstream(), scrubbed(conn, reader, counts, scrubber))
