"""Sandbox configuration: fields, defaults, validation, and the CLI > file > default merge.

Pure functions over plain dicts, so every rule is unit-testable without a VM. The config file
(`shuru.json`, `shuru.yaml` or `shuru.yml`), the CLI flags and the SDK's keyword arguments
share one set of field names (`FIELDS`). Validation collects every problem before raising,
so a user fixes a config file in one pass.

Networking is three fields: `allow_net` (the one switch; off by default), `network`
({allow, resolve}) and `secrets` ({NAME: {from, hosts, in_url}}). The last two are checked by the
policy proxy's own rules (`shuru.net.network_problems`), and giving either without
`allow_net` is an error: an allowlist in a config file must never be what turns the
network on by surprise.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, fields as dc_fields
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ConfigError as ConfigError  # re-exported: callers write cfg.ConfigError

CONFIG_NAMES = ("shuru.json", "shuru.yaml", "shuru.yml")
ACCELS = ("auto", "kvm", "tcg")
# Guest architectures (Debian's names and uname's); None: the host's. See shuru.image.
GUEST_ARCHES = ("amd64", "arm64", "x86_64", "aarch64")
PATH_FIELDS = ("kernel", "rootfs", "initrd")


@dataclass(frozen=True)
class SandboxConfig:
    """The resolved settings of one sandbox. Sizes are in MiB."""

    cpus: int = 2
    memory: int = 2048
    disk_size: int = 4096
    command: tuple[str, ...] = ("/bin/sh",)
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    kernel: str | None = None
    rootfs: str | None = None
    initrd: str | None = None
    accel: str = "auto"
    arch: str | None = None  # the guest's architecture; another than the host's is emulated
    console: bool = False
    from_: str | None = None  # a checkpoint to start from ("from" in config files)
    cold: bool = False  # boot even when a saved machine state could be restored
    allow_net: bool = False
    network: Mapping[str, Any] = field(default_factory=dict)  # {allow: [...], resolve: {...}}
    secrets: Mapping[str, Any] = field(default_factory=dict)  # {NAME: {from, hosts, in_url}}
    ports: tuple[str, ...] = ()  # forwards, "HOST:GUEST" or "GUEST" (see shuru.ports)
    mounts: tuple[str, ...] = ()  # host folders, "HOST:GUEST:ro|rw" (see shuru.mounts)
    allow_host_writes: bool = False  # lets `:rw` mounts write to the host (see shuru.mounts)


FIELDS = tuple(f.name for f in dc_fields(SandboxConfig))
# How a field is spelled in config files (and, with dashes, as a flag).
FILE_NAMES = {name: name.rstrip("_") for name in FIELDS}
# Environment variables that stand in for a field when neither a flag nor the file sets it.
ENV_VARS = {"kernel": "SHURU_KERNEL", "rootfs": "SHURU_ROOTFS", "initrd": "SHURU_INITRD"}
# A field's rule: its name and value in, the problem out (None when there is none).
Check = Callable[[str, Any], "str | None"]


def _int_range(lo: int, hi: int, unit: str = "") -> Check:
    def check(name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{name} must be an integer{unit and ' (' + unit + ')'}, got {_show(value)}"
        if not lo <= value <= hi:
            return f"{name} must be between {lo} and {hi}{unit and ' ' + unit}, got {value}"
        return None

    return check


def _command(name: str, value: Any) -> str | None:
    if isinstance(value, str):
        return None if value.strip() else f"{name} must not be empty"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return None
    return f"{name} must be a string or a non-empty list of strings, got {_show(value)}"


def _env(name: str, value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"{name} must be a mapping of names to strings, got {_show(value)}"
    bad = [k for k, v in value.items() if not isinstance(k, str) or not k or "=" in k
           or "\0" in k or not isinstance(v, (str, int, float)) or isinstance(v, bool)]
    if bad:
        return f"{name}: invalid entries {', '.join(map(repr, bad))} (names without '=', string values)"
    return None


def _abs_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        return f"{name} must be an absolute guest path, got {_show(value)}"
    return None


def _host_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return f"{name} must be a path, got {_show(value)}"
    return None


def _choice(options: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> str | None:
        if value not in options:
            return f"{name} must be one of {', '.join(options)}, got {_show(value)}"
        return None

    return check


def _bool(name: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{name} must be true or false, got {_show(value)}"


def _network(name: str, value: Any) -> list[str]:
    from .net import network_problems  # the proxy's rules; imported only when used

    return _relabel(network_problems(value, None), "network", name)


def _secrets(name: str, value: Any) -> list[str]:
    from .net import network_problems

    return _relabel(network_problems(None, value), "secrets", name)


def _ports(name: str, value: Any) -> list[str]:
    from .ports import spec_problems

    return spec_problems(name, value)


def _mounts(name: str, value: Any) -> list[str]:
    from .mounts import spec_problems

    return spec_problems(name, value)


def _relabel(problems: list[str], field_name: str, label: str) -> list[str]:
    if label == field_name:
        return problems
    return [label + p[len(field_name):] if p.startswith(field_name) else p for p in problems]


CHECKS = {
    "cpus": _int_range(1, 64),
    "memory": _int_range(128, 1024 * 1024, "MiB"),
    "disk_size": _int_range(256, 16 * 1024 * 1024, "MiB"),
    "command": _command,
    "env": _env,
    "workdir": _abs_path,
    "kernel": _host_path,
    "rootfs": _host_path,
    "initrd": _host_path,
    "accel": _choice(ACCELS),
    "arch": _choice(GUEST_ARCHES),
    "console": _bool,
    "cold": _bool,
    "from_": lambda name, value: (None if isinstance(value, str) and value else
                                  f"{name} must be a checkpoint name, got {_show(value)}"),
    "allow_net": _bool,
    "network": _network,
    "secrets": _secrets,
    "ports": _ports,
    "mounts": _mounts,
    "allow_host_writes": _bool,
}
# Config files and flags say `from`; Python cannot use it as a keyword argument.
ALIASES = {"from": "from_"}


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else None
    return text if text is not None else f"a {type(value).__name__}"


def validate(values: Mapping[str, Any], *, source: str | None = None,
             label: Callable[[str], str] = lambda name: name) -> dict[str, Any]:
    """Check field names and types; return the values normalised (command as a tuple, env
    values as strings). `label` turns a field name into what the user wrote (a flag name for
    the CLI). Raises ConfigError listing every problem."""
    problems = []
    out: dict[str, Any] = {}
    for name, value in values.items():
        name = ALIASES.get(name, name)
        if name not in CHECKS:
            known = [FILE_NAMES[f] for f in FIELDS]
            near = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {label(near[0])!r}?)" if near else ""
            problems.append(f"unknown field {name!r}{hint}; known fields: {', '.join(known)}")
            continue
        problem = CHECKS[name](label(FILE_NAMES[name]), value)
        if problem:
            problems += problem if isinstance(problem, list) else [problem]
            continue
        if name == "command":
            value = ("/bin/sh", "-c", value) if isinstance(value, str) else tuple(value)
        elif name == "env":
            value = {k: str(v) for k, v in value.items()}
        elif name == "network":
            value = {k: (list(v) if k == "allow" else dict(v)) for k, v in value.items()}
        elif name == "secrets":
            value = {k: {"from": v["from"], "hosts": list(v["hosts"]),
                         **({"in_url": True} if v.get("in_url") else {})}
                     for k, v in value.items()}
        elif name == "ports":
            from .ports import normalize

            value = normalize(value)
        elif name == "mounts":
            from .mounts import normalize as normalize_mounts

            value = normalize_mounts(value)
        out[name] = value
    if problems:
        raise ConfigError(problems, source=source)
    return out


def merge(*layers: Mapping[str, Any]) -> SandboxConfig:
    """Later layers win, field by field; `env`, `secrets` (by name) and `network.resolve`
    merge key by key, `network.allow` is replaced whole. Layers must be validated; the
    network fields are then checked together (a secret's hosts must be allowed)."""
    merged: dict[str, Any] = {}
    env: dict[str, str] = {}
    network: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            if value is None:
                continue
            if name == "env":
                env.update(value)
            elif name == "secrets":
                secrets.update(value)
            elif name == "network":
                if "allow" in value:
                    network["allow"] = list(value["allow"])
                if "resolve" in value:
                    network["resolve"] = {**network.get("resolve", {}), **value["resolve"]}
            else:
                merged[name] = value
    check_network(merged.get("allow_net", False), network, secrets)
    return SandboxConfig(env=env, network=network, secrets=secrets, **merged)


def check_network(allow_net: bool, network: Mapping[str, Any],
                  secrets: Mapping[str, Any]) -> None:
    """The rules across the network fields; ConfigError listing every problem."""
    problems = []
    if not allow_net:
        problems += [f"{name} is set but allow_net is not: networking is off unless "
                     f"allow_net is true (--allow-net or --allow-host on the command line)"
                     for name, value in (("network", network), ("secrets", secrets)) if value]
    elif network or secrets:
        from .net import network_problems

        problems += network_problems(network or None, secrets or None)
    if problems:
        raise ConfigError(problems)


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """Fields given by SHURU_* environment variables (below the config file and flags)."""
    return {name: environ[var] for name, var in ENV_VARS.items() if environ.get(var)}


def parse_env_pairs(pairs: list[str], *, flag: str = "-e") -> dict[str, str]:
    """`KEY=VAL` strings from the command line, every malformed one reported."""
    out, problems = {}, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(f"{flag} {pair!r}: expected KEY=VALUE")
        else:
            out[key] = value
    if problems:
        raise ConfigError(problems)
    return out


def find_config_file(explicit: str | None, cwd: Path) -> Path | None:
    """The config file to use: the one named by --config, or the one in `cwd`."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError([f"--config {explicit}: no such file"])
        return path
    present = [cwd / name for name in CONFIG_NAMES if (cwd / name).is_file()]
    if len(present) > 1:
        names = " and ".join(p.name for p in present)
        raise ConfigError([f"{names} both exist in {cwd}; keep one or pass --config"])
    return present[0] if present else None


def load_file(path: Path) -> dict[str, Any]:
    """Read and validate a config file; relative host paths resolve against its folder."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read {path}: {e}"]) from None
    try:
        if path.suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except (ValueError, Exception) as e:  # json.JSONDecodeError, yaml.YAMLError
        raise ConfigError([f"{path} is not valid {path.suffix[1:].upper()}: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{path} must hold a mapping of fields, not a {type(data).__name__}"])
    values = validate(data, source=str(path))
    for name in PATH_FIELDS:
        if name in values and not os.path.isabs(values[name]):
            values[name] = str((path.parent / values[name]).resolve())
    return values
