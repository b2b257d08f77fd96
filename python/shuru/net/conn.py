"""Byte connections to the guest: the `GuestConn` protocol, one over asyncio streams, and
TLS terminated on top of any of them.

The real `GuestConn` runs over an agent-channel stream (shuru.net.session); `StreamGuestConn`
serves tests and anything else that has a socket. `TLSGuestConn` is itself a `GuestConn`,
so the HTTP rewriter reads plain and intercepted connections alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Protocol, runtime_checkable

READ_SIZE = 64 * 1024


@runtime_checkable
class GuestConn(Protocol):
    async def recv(self) -> bytes:
        """The next bytes from the guest; b"" at EOF."""

    async def send(self, data: bytes) -> None:
        """Bytes to the guest (waits for flow-control credit)."""

    async def send_eof(self) -> None:
        """No more bytes to the guest (a half-close)."""

    async def close(self) -> None:
        """Abort: the guest side sees the connection reset or closed."""


class StreamGuestConn:
    """A `GuestConn` over an asyncio reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def recv(self) -> bytes:
        try:
            return await self.reader.read(READ_SIZE)
        except ConnectionError:
            return b""

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_eof(self) -> None:
        if self.writer.can_write_eof() and not self.writer.is_closing():
            self.writer.write_eof()

    async def close(self) -> None:
        self.writer.transport.abort()


class TLSGuestConn:
    """TLS, server side, over another `GuestConn`, by way of memory BIOs (the guest side
    is a message stream, not a socket asyncio could wrap)."""

    def __init__(self, inner: GuestConn, context: ssl.SSLContext):
        self.inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        # Both pumps may produce TLS records (reads can emit post-handshake messages);
        # one lock keeps the records in the order OpenSSL wrote them.
        self._flush_lock = asyncio.Lock()
        self._eof = False

    async def _flush(self) -> None:
        async with self._flush_lock:
            data = self._outgoing.read()
            if data:
                await self.inner.send(data)

    async def _fill(self) -> bool:
        """Feed more guest bytes to TLS; False at the guest's EOF."""
        data = await self.inner.recv()
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self) -> None:
        """Complete the handshake; ssl.SSLError (or ConnectionError at EOF) if it fails."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("the guest closed during the TLS handshake")
        await self._flush()

    @property
    def alpn(self) -> str | None:
        return self._tls.selected_alpn_protocol()

    async def recv(self) -> bytes:
        while not self._eof:
            try:
                data = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()  # at EOF the next read reports it
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            if data:
                await self._flush()
                return data
            self._eof = True
        return b""

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # Keep each record batch small, so the guest's flow control paces us.
            n = self._tls.write(view[:READ_SIZE])
            view = view[n:]
            await self._flush()

    async def send_eof(self) -> None:
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await self._flush()
        await self.inner.send_eof()

    async def close(self) -> None:
        await self.inner.close()
