"""The proxy's own outbound connections: where a name goes, and how to get there.

A name is dialled at its `network.resolve` address if it has one (the user wrote it, so it
is trusted, loopback and private addresses included); through the host's upstream proxy
(HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, with CONNECT) unless NO_PROXY matches; else at an
address the host resolver gave for it. `plan` decides, resolving a name once and vetting
every address (`addresses.refusal`): if any is not global unicast the whole name is
refused, since a name that mixes public and private answers is a rebinding attempt or a
misconfiguration, and trying its public address first would only hide that. `dial` then
connects to the vetted addresses themselves, so nothing resolves the name a second time
(no DNS rebinding between the check and the connect). Through an upstream proxy the proxy
resolves, so the name is vetted instead: addresses, numbers and local names are refused.
Proxy URLs may hold credentials, so no message here ever shows one.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, Refused, UpstreamError
from . import addresses, names

CONNECT_TIMEOUT = 10.0
# Happy eyeballs (RFC 8305): the next address is tried this long after the previous one
# started, or at once when it failed.
NEXT_ADDRESS_DELAY = 0.25

# (name, port) -> the addresses it resolves to, in the order to try them.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def host_resolve(host: str, port: int) -> list[str]:
    """The host resolver's addresses for `host` (the one lookup a connection gets)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


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


@dataclass(frozen=True)
class Route:
    """How to reach `host`:`port`: connect to `addresses` (vetted, or the user's resolve
    entry) on `dial_port`, directly or through `proxy` with CONNECT; through a proxy with
    no address, CONNECT names the host and the proxy resolves it."""

    host: str
    port: int
    dial_port: int
    addresses: tuple[str, ...]
    proxy: UpstreamProxy | None = None


def _refuse(host: str, port: int, why: str) -> Refused:
    return Refused(f"shuru does not connect to {host}:{port}: {why}", host=host, port=port)


async def plan(host: str, port: int, *, resolve: Mapping[str, str], proxies: ProxySettings,
               resolver: Resolver | None = None, own_names: Iterable[str] = (),
               timeout: float = CONNECT_TIMEOUT) -> Route:
    """Where a connection to `host`:`port` goes, resolving `host` at most once. Refused
    when a name or address is not one the proxy may reach; UpstreamError when the name
    does not resolve. `own_names` are the host's own names (local, like localhost)."""
    address, dial_port = resolve_target(resolve, host, port)
    if address is not None:
        return Route(host, port, dial_port, (address,), proxies.for_target(host, address, port))
    why = names.name_problem(host) or names.local_problem(host, own_names)
    if why:
        raise _refuse(host, port, why)
    proxy = proxies.for_target(host, None, port)
    if proxy is not None:
        if "." not in host:  # the upstream proxy would complete it with its search domains
            raise _refuse(host, port, f"{host} is a single-label (local) name, reachable "
                                      f"only through network.resolve")
        return Route(host, port, port, (), proxy)
    try:
        found = await asyncio.wait_for((resolver or host_resolve)(host, port), timeout)
    except asyncio.TimeoutError:
        raise UpstreamError(f"resolving {host} timed out after {timeout:g} s",
                            host=host, port=port) from None
    except (OSError, UnicodeError) as e:  # socket.gaierror included
        reason = e.strerror if getattr(e, "strerror", None) else str(e)
        raise UpstreamError(f"cannot resolve {host}: {reason}", host=host, port=port) from None
    if not found:
        raise UpstreamError(f"cannot resolve {host}: no addresses", host=host, port=port)
    for found_address in found:
        why = addresses.refusal(found_address)
        if why:
            raise _refuse(host, port, f"{host} resolves to an address that is not public "
                                      f"({why}); shuru dials only global unicast addresses, "
                                      f"and others only through network.resolve")
    return Route(host, port, port, tuple(found))


async def _first_connection(targets: tuple[str, ...], port: int, opener):
    """Connect to the first of `targets` that answers: each is tried NEXT_ADDRESS_DELAY
    after the one before (or as soon as it fails); the rest are then cancelled or closed.
    The first error when none answers."""
    pending: set[asyncio.Task] = set()
    errors: list[BaseException] = []
    queue = list(targets)
    try:
        while queue or pending:
            if queue:
                pending.add(asyncio.ensure_future(opener(queue.pop(0), port)))
            done, pending = await asyncio.wait(
                pending, timeout=NEXT_ADDRESS_DELAY if queue else None,
                return_when=asyncio.FIRST_COMPLETED)
            winner = None
            for task in done:
                if task.exception() is not None:
                    errors.append(task.exception())
                elif winner is None:
                    winner = task.result()
                else:
                    task.result()[1].transport.abort()
            if winner is not None:
                return winner
        raise errors[0]
    finally:
        for task in pending:
            task.cancel()
        if pending:  # an attempt may have connected just before it was cancelled
            for result in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(result, tuple):
                    result[1].transport.abort()


async def dial(route: Route, *, tls: ssl.SSLContext | None = None,
               timeout: float = CONNECT_TIMEOUT, opener=None):
    """A connection (reader, writer) along `route`, TLS-verified as its host when `tls` is
    given; `opener` (asyncio.open_connection by default) makes the TCP connections.
    UpstreamError if it cannot be made within `timeout` seconds."""
    host, port, proxy = route.host, route.port, route.proxy
    opener = opener or asyncio.open_connection

    async def connect():
        if proxy is None:
            reader, writer = await _first_connection(route.addresses, route.dial_port, opener)
        else:
            target = route.addresses[0] if route.addresses else host
            reader, writer = await _through_proxy(proxy, target, route.dial_port)
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
