"""The proxy's own outbound connections: where a name goes, and how to get there.

A name is dialled at its `network.resolve` address if it has one, else through the host
resolver; through the host's upstream proxy (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, with
CONNECT) unless NO_PROXY matches. Reading the environment and deciding are pure; `dial` is
the thin I/O shell. Proxy URLs may hold credentials, so no message here ever shows one.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, UpstreamError
from . import names

CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class UpstreamProxy:
    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        auth = ", with credentials" if self.authorization else ""
        return f"UpstreamProxy({self.host}:{self.port}{auth})"


def _env(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    # Lower case first, as curl and Python's urllib read them.
    for var in (name.lower(), name.upper()):
        if environ.get(var, "").strip():
            return var, environ[var].strip()
    return None


def parse_proxy_url(var: str, value: str) -> UpstreamProxy:
    """An http:// proxy URL; ConfigError naming `var` (never showing the value)."""
    if "://" not in value:
        value = "http://" + value
    try:
        url = urlsplit(value)
        port = url.port or 80
    except ValueError:
        url, port = None, 0
    if url is None or url.scheme.lower() != "http" or not url.hostname:
        raise ConfigError([f"{var} is not a proxy shuru can use: expected "
                           f"http://[user:password@]host:port (plain HTTP, CONNECT)"])
    auth = None
    if url.username is not None:
        credential = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
        auth = b"Basic " + base64.b64encode(credential)
    return UpstreamProxy(url.hostname, port, auth)


def _no_proxy_entry_matches(entry: str, host: str, address: str | None, port: int) -> bool:
    if entry == "*":
        return True
    try:
        network = ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        network = None
    if network is not None:
        candidates = [a for a in (address, host) if a and names.is_ip(a)]
        return any(ipaddress.ip_address(a) in network for a in candidates)
    name, colon, entry_port = entry.rpartition(":")
    if colon and entry_port.isdigit():
        if int(entry_port) != port:
            return False
        entry = name
    entry = entry.lstrip("*").lstrip(".")
    return bool(entry) and (host == entry or host.endswith("." + entry))


@dataclass(frozen=True)
class ProxySettings:
    """The host's upstream proxies: one for port 80, one for everything else."""

    http: UpstreamProxy | None = None
    other: UpstreamProxy | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "ProxySettings":
        """Read the proxy variables; ConfigError listing every unusable one."""
        problems, found = [], {}
        for key, name in (("http", "http_proxy"), ("other", "https_proxy"),
                          ("all", "all_proxy")):
            entry = _env(environ, name)
            if entry:
                try:
                    found[key] = parse_proxy_url(*entry)
                except ConfigError as e:
                    problems += e.problems
        if problems:
            raise ConfigError(problems)
        no_proxy = _env(environ, "no_proxy")
        entries = tuple(e.strip().lower() for e in no_proxy[1].split(",") if e.strip()) \
            if no_proxy else ()
        return cls(http=found.get("http") or found.get("all"),
                   other=found.get("other") or found.get("all"), no_proxy=entries)

    def for_target(self, host: str, address: str | None, port: int) -> UpstreamProxy | None:
        """The proxy to reach `host` (dialled at `address`, if mapped) on `port`, or None
        to go direct."""
        proxy = self.http if port == 80 else self.other
        if proxy is None:
            return None
        if any(_no_proxy_entry_matches(e, host, address, port) for e in self.no_proxy):
            return None
        return proxy


def split_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` as (host, port or None); a bare IPv6
    address has no port. ValueError for a port that is not one."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(text)
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(text)
    return host, int(port)


def resolve_target(resolve: Mapping[str, str], host: str, port: int) -> tuple[str | None, int]:
    """Where `host`:`port` is dialled by the `resolve` map: (address or None for the host
    resolver, port). A `name:port` key wins over a bare `name`; a value may carry a port
    of its own, so a loopback test server on any port can stand in for :443."""
    value = resolve.get(f"{host}:{port}") or resolve.get(host)
    if value is None:
        return None, port
    address, mapped = split_port(value)
    return address, mapped or port


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _through_proxy(proxy: UpstreamProxy, target: str, port: int):
    # The reader's default limit (64 KiB) bounds the proxy's answer to CONNECT too.
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        authority = _authority(target, port)
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode()
        if proxy.authorization:
            request += b"Proxy-Authorization: " + proxy.authorization + b"\r\n"
        writer.write(request + b"\r\n")
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise OSError("the upstream proxy sent an oversized answer to CONNECT") from None
        except asyncio.IncompleteReadError:
            raise OSError("the upstream proxy closed the connection on CONNECT") from None
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            raise OSError(f"the upstream proxy refused CONNECT {authority}: {status[:200]}")
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def dial(host: str, port: int, *, resolve: Mapping[str, str], proxies: ProxySettings,
               tls: ssl.SSLContext | None = None, timeout: float = CONNECT_TIMEOUT):
    """A connection (reader, writer) to `host`:`port`, TLS-verified as `host` when `tls`
    is given. UpstreamError if it cannot be made within `timeout` seconds."""
    address, dial_port = resolve_target(resolve, host, port)
    proxy = proxies.for_target(host, address, port)

    async def connect():
        if proxy is None:
            return await asyncio.open_connection(
                address or host, dial_port, ssl=tls, server_hostname=host if tls else None,
                happy_eyeballs_delay=0.25)
        reader, writer = await _through_proxy(proxy, address or host, dial_port)
        if tls is not None:
            try:
                await writer.start_tls(tls, server_hostname=host)
            except BaseException:
                writer.transport.abort()
                raise
        return reader, writer

    try:
        return await asyncio.wait_for(connect(), timeout)
    except asyncio.TimeoutError:
        raise UpstreamError(f"connecting to {host}:{port} timed out after {timeout:g} s",
                            host=host, port=port) from None
    except ssl.SSLCertVerificationError as e:
        raise UpstreamError(f"{host}:{port} failed TLS verification: {e.verify_message}",
                            host=host, port=port) from None
    except OSError as e:  # ssl.SSLError included
        via = " through the upstream proxy" if proxy else ""
        reason = e.strerror if e.strerror else str(e)
        raise UpstreamError(f"cannot connect to {host}:{port}{via}: {reason}",
                            host=host, port=port) from None
