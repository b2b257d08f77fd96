"""The policy proxy: one per sandbox, where every guest DNS query and TCP connection ends.

It owns the decisions (allowed or denied, tunnel or intercept; `decide` is pure) and runs
each connection: denied ones are refused at once with a reason; hosts a secret applies to
are intercepted on 443 (TLS terminated with the sandbox CA, the upstream verified) so
placeholders in request headers become real values, and on 80 (plain HTTP), where a
placeholder is refused rather than sent in clear text; both have their responses scrubbed.
Every other allowed host is tunnelled byte for byte (relay.py moves the bytes). Real values
are read from the host environment once, here, and live only in this object, out of every
repr, log line and error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets as secrets_module
import ssl
from dataclasses import dataclass
from typing import Mapping

from ..errors import ConfigError, ShuruError
from . import dns, http, names, relay
from .audit import AuditLog
from .ca import CertAuthority, host_trust_store
from .config import NetworkConfig, Secret, config_problems
from .conn import GuestConn, TLSGuestConn
from .fakeip import FakeIPs
from .upstream import (CONNECT_TIMEOUT, ProxySettings, Refused, Resolver, Route, UpstreamError,
                       dial, plan, split_port)

GUEST_CA_BUNDLE = "/etc/ssl/certs/shuru-ca-bundle.pem"
# Variables that point common TLS clients at the bundle (OpenSSL, Node, requests/pip,
# curl, git), so intercepted hosts verify whatever the guest runs.
CA_ENV_VARS = ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE",
               "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")
PLACEHOLDER_PREFIX = "shuru_tok_"
log = logging.getLogger("shuru.net")
# A denied HTTP(S) client gets its answer within this long, or is simply closed.
DENY_SECONDS = 1.0
DENY_DRAIN_BYTES = 64 * 1024
# Each open connection holds a host socket; a guest that opens them without end is refused
# past this many rather than exhausting the host's file descriptors.
MAX_CONNECTIONS = 1024
# Shorter values could not be told apart from chance in responses (scrub.py).
MIN_VALUE_BYTES = 8


class _Value:
    """A secret's real value. Its repr is the secret's name, so it cannot leak by way of a
    traceback, a debugger or an f-string."""

    __slots__ = ("name", "placeholder", "raw", "in_url")

    def __init__(self, name: str, placeholder: str, raw: bytes, in_url: bool = False):
        self.name, self.placeholder, self.raw, self.in_url = name, placeholder, raw, in_url

    def __repr__(self) -> str:
        return f"<secret {self.name}>"

    __str__ = __repr__


DENY, TUNNEL, INTERCEPT_TLS, INTERCEPT_HTTP = "deny", "tunnel", "intercept tls", "intercept http"
# Where a secret's host is intercepted; its other ports are tunnelled like any host's.
# Values are injected on 443 only; 80 is intercepted to refuse placeholders sent in clear
# text and to scrub what comes back.
INTERCEPTED_PORTS = {443: INTERCEPT_TLS, 80: INTERCEPT_HTTP}


@dataclass(frozen=True)
class Decision:
    """The policy's verdict on one connection. `mode` is DENY (with a `reason`), TUNNEL,
    or INTERCEPT_TLS / INTERCEPT_HTTP (with the `secrets` that apply)."""

    mode: str
    host: str | None
    ip: str
    port: int
    reason: str | None = None
    secrets: tuple = ()

    @property
    def secret_names(self) -> list[str]:
        return [v.name for v in self.secrets]


def _value_problems(secret: Secret, environ: Mapping[str, str]) -> list[str]:
    value = environ.get(secret.from_env)
    if value is None or value == "":
        return [f"secrets.{secret.name}.from: the host environment variable "
                f"{secret.from_env} is not set"]
    if any(c in value for c in "\r\n\0"):
        return [f"secrets.{secret.name}.from: the value of {secret.from_env} holds a line "
                f"break or NUL, which cannot go into an HTTP header"]
    if len(value.encode()) < MIN_VALUE_BYTES:
        return [f"secrets.{secret.name}.from: the value of {secret.from_env} is shorter "
                f"than {MIN_VALUE_BYTES} bytes, too short to be recognised (and masked) in "
                f"what its hosts send back"]
    return []


class PolicyProxy:
    """The network of one sandbox. `placeholders` and `guest_env` go to the guest; `audit`
    is the event log (newest last)."""

    def __init__(self, config: NetworkConfig, *, environ: Mapping[str, str] = os.environ,
                 upstream_cafile: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, resolver: Resolver | None = None):
        problems = config_problems(config)
        problems += [p for s in config.secrets for p in _value_problems(s, environ)]
        try:
            self._proxies = ProxySettings.from_environ(environ)
        except ConfigError as e:
            problems += e.problems
        try:
            self._upstream_tls = ssl.create_default_context(cafile=upstream_cafile)
        except (OSError, ssl.SSLError) as e:
            problems.append(f"upstream_cafile {upstream_cafile!r}: cannot load it ({e})")
        if problems:
            raise ConfigError(problems)
        self.config = config
        self._allow = tuple(names.normalize_pattern(p) for p in config.allow)
        self._resolve = {names.normalize(k): v for k, v in config.resolve.items()}
        # Names a resolve entry maps (with or without a port): the only way to local names.
        self._resolved_names = {names.normalize(split_port(k)[0]) for k in config.resolve}
        self._own_names = names.own_names()
        self._resolver = resolver  # None: the host resolver, looked up when used
        self._values: list[tuple[tuple[str, ...], _Value]] = []
        self.placeholders: dict[str, str] = {}
        for secret in config.secrets:
            placeholder = PLACEHOLDER_PREFIX + secrets_module.token_hex(16)
            self.placeholders[secret.name] = placeholder
            value = _Value(secret.name, placeholder, environ[secret.from_env].encode(),
                           secret.in_url)
            self._values.append((tuple(names.normalize(h) for h in secret.hosts), value))
        self.guest_env: dict[str, str] = dict(self.placeholders)
        self.guest_env.update((var, GUEST_CA_BUNDLE) for var in CA_ENV_VARS)
        self._ca = CertAuthority(f"shuru sandbox CA {secrets_module.token_hex(4)}")
        self._bundle: bytes | None = None
        self._upstream_tls.set_alpn_protocols(["http/1.1"])
        self._connect_timeout = connect_timeout
        self._fake = FakeIPs()
        self._log = AuditLog()
        self.audit: list[dict] = self._log.events
        self._sessions: set[asyncio.Task] = set()
        self._closed = False

    def __repr__(self) -> str:
        return (f"<PolicyProxy allow={list(self._allow) or 'all'} "
                f"secrets={list(self.placeholders)}>")

    @property
    def ca_cert_pem(self) -> bytes:
        """This sandbox's CA certificate (PEM), on its own."""
        return self._ca.cert_pem

    def guest_ca_bundle(self) -> bytes:
        """What the guest trusts: the host's trust store and this sandbox's CA (PEM)."""
        if self._bundle is None:
            store = host_trust_store().rstrip(b"\n")
            self._bundle = (store + b"\n" if store else b"") + self._ca.cert_pem
        return self._bundle

    # ---- decisions (pure) --------------------------------------------------------------

    def allowed(self, host: str, port: int | None = None) -> bool:
        """Whether `host` is allowed on `port` (None: on some port, as DNS asks)."""
        return names.allowed(self._allow, host, port)

    def _secrets_for(self, host: str) -> list[_Value]:
        return [v for hosts, v in self._values if names.allowed(hosts, host,
                                                                empty_allows_all=False)]

    # ---- DNS ---------------------------------------------------------------------------

    async def dns(self, query: bytes) -> bytes:
        """The answer to one DNS message from the guest; b"" means send nothing back."""
        return self.answer_dns(query)

    def answer_dns(self, query: bytes) -> bytes:
        if dns.is_droppable(query):
            return b""
        if dns.opcode(query) != 0:
            return dns.error(query, dns.NOTIMP)
        try:
            q = dns.parse_query(query)
        except dns.DNSFormatError:
            return dns.error(query, dns.FORMERR)
        name = names.normalize(q.name)
        problem = names.name_problem(name)
        if problem is None and name not in self._resolved_names:
            problem = names.local_problem(name, self._own_names)
        if problem:
            host = name if names.printable(name) else None
            self._log.record("deny", host, "", 53, reason=f"DNS: {problem}")
            return dns.reply(q, dns.REFUSED)
        if q.qclass != dns.IN or not self.allowed(name):
            self._log.record("deny", name, "", 53,
                             reason="DNS: not in the sandbox's network allowlist")
            return dns.reply(q, dns.REFUSED)
        if q.qtype != dns.A:
            # AAAA and everything else: the name exists, with no records of that type, so
            # clients fall back to A at once instead of waiting.
            return dns.reply(q)
        ip = self._fake.address(name)
        self._log.record("dns", name, ip, 53)
        return dns.reply(q, addresses=(ip,))

    # ---- connections -------------------------------------------------------------------

    async def connect(self, dst_ip: str, dst_port: int, guest: GuestConn) -> None:
        """Run one guest connection to `dst_ip`:`dst_port` until it is over; `guest` is
        closed on return."""
        session = asyncio.ensure_future(self._session(dst_ip, dst_port, guest))
        self._sessions.add(session)
        try:
            await asyncio.wait({session})
        finally:
            if not session.done():
                session.cancel()
                await asyncio.wait({session})
            self._sessions.discard(session)
            with contextlib.suppress(Exception):
                await guest.close()

    async def close(self) -> None:
        """End every open connection; later ones are refused."""
        self._closed = True
        sessions = list(self._sessions)
        for session in sessions:
            session.cancel()
        if sessions:
            await asyncio.wait(sessions)

    def decide(self, dst_ip: object, dst_port: object) -> Decision:
        """What to do with a guest connection to `dst_ip`:`dst_port`. Pure: no I/O, no
        audit event."""
        try:
            ip = str(ipaddress.ip_address(dst_ip))
        except (ValueError, TypeError):
            ip = str(dst_ip)[:64]
        if isinstance(dst_port, bool) or not isinstance(dst_port, int) \
                or not 0 < dst_port < 65536:
            return Decision(DENY, None, ip, 0, reason="not a valid port")
        port, host = dst_port, self._fake.name(ip)
        if self._closed:
            return Decision(DENY, host, ip, port, reason="the sandbox is stopping")
        if len(self._sessions) > MAX_CONNECTIONS:
            return Decision(DENY, host, ip, port,
                            reason=f"more than {MAX_CONNECTIONS} connections are open")
        if host is None:
            return Decision(DENY, None, ip, port,
                            reason="the address did not come from shuru's DNS "
                                   "(connections to hard-coded IP addresses are refused)")
        if not self.allowed(host, port):
            reason = "not in the sandbox's network allowlist"
            if self.allowed(host):
                reason = f"port {port} of {host} is not in the sandbox's network allowlist"
            return Decision(DENY, host, ip, port, reason=reason)
        values = tuple(self._secrets_for(host))
        if values and port in INTERCEPTED_PORTS:
            return Decision(INTERCEPTED_PORTS[port], host, ip, port, secrets=values)
        return Decision(TUNNEL, host, ip, port)

    async def _session(self, dst_ip: object, dst_port: object, guest: GuestConn) -> None:
        decision = self.decide(dst_ip, dst_port)
        mode, host, ip, port, values = (decision.mode, decision.host, decision.ip,
                                        decision.port, list(decision.secrets))
        if mode == DENY:
            return await self._deny(guest, host, ip, port, decision.reason)
        # Resolved once and vetted here (a refusal is a denial, before any connect event);
        # dial then connects to exactly those addresses.
        route: Route | UpstreamError
        try:
            route = await plan(host, port, resolve=self._resolve, proxies=self._proxies,
                               resolver=self._resolver, own_names=self._own_names,
                               timeout=self._connect_timeout)
        except Refused as e:
            return await self._deny(guest, host, ip, port, e.message)
        except UpstreamError as e:
            route = e  # unresolvable: reported below like a failed connect (502 on port 80)
        self._log.record("connect", host, ip, port, reason=mode)
        counts = relay.Counts()
        reason = None
        writer = None
        try:
            if isinstance(route, UpstreamError):
                raise route
            reader, writer = await dial(
                route, tls=self._upstream_tls if mode == INTERCEPT_TLS else None,
                timeout=self._connect_timeout)
            if mode == TUNNEL:
                await relay.tunnel(guest, reader, writer, counts)
            else:
                conn = guest
                if mode == INTERCEPT_TLS:
                    conn = TLSGuestConn(guest, self._ca.server_context(
                        host, alpn=("http/1.1",)))
                    try:
                        await conn.handshake()
                    except (ssl.SSLError, ConnectionError) as e:
                        detail = getattr(e, "reason", None) or e.__class__.__name__
                        reason = (f"TLS with the guest failed ({detail}); its client must "
                                  f"trust the sandbox CA")
                        return
                await relay.intercept(
                    conn, reader, writer, host=host, counts=counts,
                    injections={v.placeholder.encode(): http.Injection(v.name, v.raw, v.in_url)
                                for v in values},
                    inject=mode == INTERCEPT_TLS,
                    on_inject=lambda used: self._log.record(
                        "inject", host, ip, port,
                        secrets=sorted(v.name for v in values
                                       if v.placeholder.encode() in used)))
        except UpstreamError as e:
            reason = e.message
            if port == 80:
                with contextlib.suppress(Exception):
                    await guest.send(http.simple_response(
                        502, f"shuru could not reach {host}: {e.message}\n"))
                    await guest.send_eof()
        except http.ResponseError as e:
            reason = f"refused the upstream's response: {e.message}"
        except http.HTTPError as e:
            reason = f"refused the guest's request: {e.message}"
        except ssl.SSLError as e:
            reason = f"TLS failed: {e.reason or e.__class__.__name__}"
        except (ConnectionError, OSError, ShuruError) as e:
            reason = f"connection failed: {e.__class__.__name__}"
        except Exception as e:  # a bug of ours: end this connection, keep the proxy
            log.error("network connection to %s:%s failed", host, port, exc_info=True)
            reason = f"internal error: {e.__class__.__name__}"
        finally:
            if writer is not None:
                writer.transport.abort()
            self._log.record("close", host, ip, port, reason=reason,
                             bytes_up=counts.up, bytes_down=counts.down)

    async def _deny(self, guest: GuestConn, host: str | None, ip: str, port: int,
                    reason: str) -> None:
        self._log.record("deny", host, ip, port, reason=reason)
        if port not in (80, 443):
            return  # closing is all a protocol we do not speak can be told
        body = f"shuru's network policy blocked {host or ip}: {reason}\n"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._answer_denied(guest, host or ip, port, body),
                                   DENY_SECONDS)

    async def _answer_denied(self, guest: GuestConn, name: str, port: int, body: str) -> None:
        """Tell an HTTP(S) client why, as a 403 (over TLS with a sandbox-CA certificate
        for the name or address it asked for, on 443), then read what it sent, so closing
        does not reset the connection before it has read the answer."""
        conn = guest
        if port == 443:
            conn = TLSGuestConn(guest, self._ca.server_context(name, alpn=("http/1.1",)))
            await conn.handshake()
        await conn.send(http.simple_response(403, body))
        await conn.send_eof()
        seen = 0
        while seen < DENY_DRAIN_BYTES and (data := await conn.recv()):
            seen += len(data)
