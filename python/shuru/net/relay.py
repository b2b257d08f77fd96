"""Moving bytes between a guest connection and its upstream, once the policy has decided.

`tunnel` copies both ways byte for byte and passes a half-close on; `intercept` reads the
guest's side as HTTP/1.1, rewrites each request head (placeholders to real values), passes
bodies through untouched, and masks real values in what comes back. Every buffer is
bounded: a head by http.MAX_HEAD, everything else by one read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Mapping

from . import http
from .conn import READ_SIZE, GuestConn
from .scrub import Scrubber


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


async def downstream(conn: GuestConn, reader: asyncio.StreamReader, counts: Counts,
                     scrubber: Scrubber | None = None) -> None:
    """Upstream to guest until upstream's EOF, which is passed on."""
    while data := await reader.read(READ_SIZE):
        counts.down += len(data)
        if scrubber is not None:
            data = scrubber.feed(data)
        if data:
            await conn.send(data)
    if scrubber is not None and (tail := scrubber.flush()):
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
                    replacements: Mapping[bytes, bytes],
                    on_inject: Callable[[set[bytes]], None]) -> None:
    """HTTP/1.1 from the guest, each head rewritten with `replacements` (placeholder to
    value); `on_inject` hears which placeholders each request used."""

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
                framer = http.RestFramer() if http.is_upgrade(head) else http.body_framer(head)
            except http.HTTPError as e:
                if requests == 0:  # nothing of ours is on the way back yet: say why
                    await conn.send(http.simple_response(e.status, f"shuru: {e.message}\n"))
                    await conn.send_eof()
                raise
            del buffer[:end]
            requests += 1
            head, used = http.rewrite_head(head, replacements)
            if used:
                on_inject(used)
            # Untouched heads go out as they came, spacing and all.
            out = head.encode() if used else raw
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
    scrubber = Scrubber(replacements.values())
    await both(upstream(), downstream(conn, reader, counts, scrubber))
