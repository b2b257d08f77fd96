"""The network settings of a sandbox: their types, validation and parsing. Pure.

Config files, the CLI and the SDK all arrive here in the config-file shape:

    network: {allow: [patterns, each maybe with :port], resolve: {name: address}}
    secrets: {NAME: {from: HOST_ENV_VAR, hosts: [patterns], in_url: false}}

`network_problems` lists every problem, each naming its field, so a user fixes them all at
once; `network_config` turns a valid shape into the frozen `NetworkConfig` the proxy runs on.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from . import names, upstream

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
NETWORK_FIELDS = ("allow", "resolve")
SECRET_FIELDS = ("from", "hosts", "in_url")


@dataclass(frozen=True)
class Secret:
    """A value the guest only ever sees as a placeholder. `name` is the guest env var,
    `from_env` the host env var holding the real value, `hosts` where it may be sent,
    `in_url` whether a placeholder in the request target (path, query) is replaced too
    (headers only by default: URLs end up in logs, caches and redirects)."""

    name: str
    from_env: str
    hosts: tuple[str, ...]
    in_url: bool = False


@dataclass(frozen=True)
class NetworkConfig:
    """What the policy proxy enforces. `allow` empty means every host, and an entry may
    end in `:port` to allow that port only; `resolve` maps a name to the address to dial
    instead of asking the host resolver (trusted: it may be loopback or private)."""

    allow: tuple[str, ...] = ()
    resolve: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[Secret, ...] = ()


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool, type(None))) else \
        f"a {type(value).__name__}"


def _pattern_list(label: str, value: Any, *, empty_ok: bool,
                  port_ok: bool = False) -> list[str]:
    if not isinstance(value, (list, tuple)) or isinstance(value, str):
        return [f"{label} must be a list of host patterns, got {_show(value)}"]
    if not value and not empty_ok:
        return [f"{label} must name at least one host"]
    problems = []
    for i, pattern in enumerate(value):
        problem = names.pattern_problem(pattern, port_ok=port_ok)
        if problem:
            problems.append(f"{label}[{i}] {_show(pattern)}: {problem}")
    return problems


def _unknown(label: str, value: Mapping, known: tuple[str, ...]) -> list[str]:
    return [f"{label}.{key}: unknown field; known fields: {', '.join(known)}"
            for key in value if key not in known]


def _network_problems(network: Any) -> list[str]:
    if network is None:
        return []
    if not isinstance(network, Mapping):
        return [f"network must be a mapping with allow and resolve, got {_show(network)}"]
    problems = _unknown("network", network, NETWORK_FIELDS)
    if "allow" in network:
        problems += _pattern_list("network.allow", network["allow"], empty_ok=True,
                                  port_ok=True)
    resolve = network.get("resolve", {})
    if not isinstance(resolve, Mapping):
        problems.append(f"network.resolve must be a mapping of names to addresses, "
                        f"got {_show(resolve)}")
        return problems
    for key, value in resolve.items():
        problems += _resolve_problems(key, value)
    return problems


def _resolve_problems(key: Any, value: Any) -> list[str]:
    try:
        name, port = upstream.split_port(key) if isinstance(key, str) else ("", None)
    except ValueError:
        name = ""
    if not names.valid_name(names.normalize(name)):
        return [f"network.resolve {_show(key)}: expected a host name, or name:port"]
    try:
        address, port = upstream.split_port(value) if isinstance(value, str) else ("", None)
        ipaddress.ip_address(address)
    except ValueError:
        return [f"network.resolve.{key} must be an IP address, or address:port "
                f"([address]:port for IPv6), got {_show(value)}"]
    return []


def _allow_of(network: Any) -> tuple[str, ...]:
    if isinstance(network, Mapping) and isinstance(network.get("allow"), (list, tuple)):
        return tuple(names.normalize_pattern(p) for p in network["allow"]
                     if names.pattern_problem(p, port_ok=True) is None)
    return ()


def _secret_problems(secrets: Any, allow: tuple[str, ...]) -> list[str]:
    if secrets is None:
        return []
    if not isinstance(secrets, Mapping):
        return [f"secrets must be a mapping of NAME to {{from, hosts}}, got {_show(secrets)}"]
    problems = []
    for name, spec in secrets.items():
        label = f"secrets.{name}"
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            problems.append(f"secrets {_show(name)}: a secret's name is the guest environment "
                            f"variable it sets, so it must look like OPENAI_API_KEY")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{label} must be a mapping with from and hosts, got {_show(spec)}")
            continue
        problems += _unknown(label, spec, SECRET_FIELDS)
        source = spec.get("from")
        if source is None:
            problems.append(f"{label}.from is missing: name the host environment variable "
                            f"that holds the value")
        elif not isinstance(source, str) or not _ENV_NAME.match(source):
            problems.append(f"{label}.from must be a host environment variable name, "
                            f"got {_show(source)}")
        if "in_url" in spec and not isinstance(spec["in_url"], bool):
            problems.append(f"{label}.in_url must be true or false, got {_show(spec['in_url'])}")
        if "hosts" not in spec:
            problems.append(f"{label}.hosts is missing: list the hosts it may be sent to")
            continue
        found = _pattern_list(f"{label}.hosts", spec["hosts"], empty_ok=False)
        problems += found
        if found:
            continue
        for i, pattern in enumerate(spec["hosts"]):
            if not names.covered(names.normalize(pattern), allow):
                problems.append(f"{label}.hosts[{i}] {pattern!r} is not allowed by "
                                f"network.allow, so the secret could never be sent there")
    return problems


def network_problems(network: object, secrets: object) -> list[str]:
    """Every problem in the `network` and `secrets` settings (config-file shapes, None when
    absent), each naming its field; [] when both are valid."""
    return _network_problems(network) + _secret_problems(secrets, _allow_of(network))


def config_problems(config: NetworkConfig) -> list[str]:
    """`network_problems` for a NetworkConfig built by hand rather than by network_config."""
    return network_problems(
        {"allow": list(config.allow), "resolve": dict(config.resolve)},
        {s.name: {"from": s.from_env, "hosts": list(s.hosts), "in_url": s.in_url}
         for s in config.secrets})


def network_config(network: Mapping | None, secrets: Mapping | None) -> NetworkConfig:
    """The `NetworkConfig` for validated config-file shapes; ConfigError listing every
    problem otherwise."""
    problems = network_problems(network, secrets)
    if problems:
        raise ConfigError(problems)
    network = network or {}
    return NetworkConfig(
        allow=_allow_of(network),
        resolve={names.normalize(k): v for k, v in (network.get("resolve") or {}).items()},
        secrets=tuple(
            Secret(name=name, from_env=spec["from"],
                   hosts=tuple(names.normalize(h) for h in spec["hosts"]),
                   in_url=spec.get("in_url", False))
            for name, spec in (secrets or {}).items()),
    )


SECRET_FLAG_OPTIONS = ("in_url",)


def parse_secret_flag(text: str) -> Secret:
    """`NAME=HOST_ENV_VAR@host1,host2[+in_url]` (the CLI's --secret) as a Secret;
    ConfigError listing every problem, each naming the flag."""
    label = f"--secret {text!r}"
    name, eq, rest = text.partition("=")
    source, at, hosts_text = rest.partition("@")
    if not eq or not at:
        raise ConfigError([f"{label}: expected NAME=HOST_ENV_VAR@host1,host2[+in_url]"])
    hosts_text, *options = hosts_text.split("+")
    unknown = [o for o in options if o.strip() not in SECRET_FLAG_OPTIONS]
    if unknown:
        raise ConfigError([f"{label}: unknown option +{unknown[0].strip()}; known options: "
                           f"{', '.join('+' + o for o in SECRET_FLAG_OPTIONS)}"])
    hosts = [h.strip() for h in hosts_text.split(",")] if hosts_text.strip() else []
    in_url = bool(options)
    problems = _secret_problems({name: {"from": source, "hosts": hosts, "in_url": in_url}}, ())
    if problems:
        raise ConfigError([f"{label}: {p}" for p in problems])
    return Secret(name=name, from_env=source, hosts=tuple(names.normalize(h) for h in hosts),
                  in_url=in_url)
