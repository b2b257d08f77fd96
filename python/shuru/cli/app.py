"""The `shuru` command: a thin skin over the SDK.

Owns argument parsing (Typer), turning flags into a config layer, and the one place where a
`ShuruError` becomes a message on stderr and an exit status (2 for bad configuration, 125 for
shuru's own failures, like `docker run`; otherwise the guest command's own status).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from .. import config as cfg
from ..errors import ConfigError, ShuruError, ShuruWarning
from ..sanitize import neutralise

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Local-first microVM sandboxes for AI agents.",
)

EXIT_CONFIG = 2
EXIT_SHURU = 125
FLAG_NAMES = {cfg.FILE_NAMES[name]: "--" + cfg.FILE_NAMES[name].replace("_", "-")
              for name in cfg.FIELDS}


def _print_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, ShuruWarning):
        print(f"shuru: warning: {message}", file=sys.stderr, flush=True)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line),
              file=sys.stderr, end="")


def fail(message: str, code: int = EXIT_SHURU) -> typer.Exit:
    # Errors can quote the guest (paths, messages, console lines): no control sequence of
    # its may reach the terminal.
    print(f"shuru: error: {neutralise(message)}", file=sys.stderr, flush=True)
    return typer.Exit(code)


def handle_errors(fn):
    """Every command goes through here: ShuruError -> message + status, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = _print_warning
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            raise fail(str(e), EXIT_CONFIG) from None
        except ShuruError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def command_last(args: list[str], fixed: int, takes_value: set[str]) -> list[str]:
    """`args` rewritten so that a parser that reads options anywhere before `--` reads them
    exactly where shuru's commands allow them: options may come before, between and after
    the `fixed` positional arguments (a checkpoint's NAME); the guest command starts at `--`
    or at the first word after those, and everything from there is the command's own, its
    dashes included. `takes_value` names the options that take a value (`--cpus 2`)."""
    i, seen = 0, 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return args[:i] + ["--"] + args[i + 1:]
        if arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0]
            attached = "=" in arg or (not arg.startswith("--") and len(arg) > 2)
            i += 2 if name in takes_value and not attached else 1
            continue
        if seen == fixed:
            return args[:i] + ["--"] + args[i:]
        seen += 1
        i += 1
    return list(args)


class CommandLast(TyperCommand):
    """A command whose last argument is a guest command: options are options wherever they
    come before it (`shuru checkpoint create NAME --allow-host X -- cmd`), and nothing in
    the guest command is ever taken for one of shuru's options (see `command_last`)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        params = self.get_params(ctx)
        fixed = sum(1 for p in params if isinstance(p, TyperArgument) and p.nargs == 1)
        takes_value = {name for p in params if isinstance(p, TyperOption)
                       and not (p.is_flag or p.count) for name in p.opts + p.secondary_opts}
        return super().parse_args(ctx, command_last(list(args), fixed, takes_value))


def cli_layer(**flags) -> dict:
    """The flags the user actually gave, validated, with flag names in messages."""
    given = {k: v for k, v in flags.items() if v is not None}
    return cfg.validate(given, label=lambda name: FLAG_NAMES.get(name, name))


def network_flags(allow_net: bool | None, allow_hosts: list[str], secrets: list[str]) -> dict:
    """--allow-net, --allow-host (implies --allow-net) and --secret as config fields,
    every malformed value reported with its flag."""
    from ..net import network_problems, parse_secret_flag

    out: dict = {}
    problems: list[str] = []
    if allow_hosts:
        for host in allow_hosts:
            problems += [f"--allow-host {host!r}: " + p.split(": ", 1)[-1]
                         for p in network_problems({"allow": [host]}, None)]
        out["network"] = {"allow": list(allow_hosts)}
        allow_net = True if allow_net is None else allow_net
    if secrets:
        parsed = {}
        for text in secrets:
            try:
                secret = parse_secret_flag(text)
            except ConfigError as e:
                problems += e.problems
                continue
            if secret.name in parsed:
                problems.append(f"--secret {secret.name} is given more than once")
            parsed[secret.name] = {"from": secret.from_env, "hosts": list(secret.hosts)}
            if secret.in_url:
                parsed[secret.name]["in_url"] = True
        out["secrets"] = parsed
    if allow_net is not None:
        out["allow_net"] = allow_net
    if problems:
        raise ConfigError(problems)
    return out


def print_network_log(sandbox) -> None:
    """--verbose: the sandbox's network audit log on stderr, one event a line."""
    from ..net.session import format_event

    for event in sandbox.network_log():
        print(f"shuru: net: {format_event(event)}", file=sys.stderr)


def print_free_ports(sandbox) -> None:
    """`-p GUEST` forwards get a free host port: say which, since nobody chose it."""
    chosen = {int(spec.split(":")[0]) for spec in sandbox.config.ports if ":" in spec}
    for fwd in sandbox.ports:
        if fwd.host_port not in chosen:
            print(f"shuru: port {fwd.host}:{fwd.host_port} -> {fwd.guest_port} in the sandbox",
                  file=sys.stderr, flush=True)


async def print_mount_changes(sandbox) -> None:
    """--diff: what the command changed under each read-only mount, on stderr."""
    from ..errors import ShuruError

    for spec in sandbox.mounts:
        if spec.mode != "ro":
            continue
        try:
            changes = await sandbox.mount_changes(spec.guest)
        except ShuruError as e:
            print(f"shuru: cannot read the changes under {spec.guest}: {e}", file=sys.stderr)
            continue
        print(f"shuru: changes under {spec.guest} (host {spec.host} is untouched):",
              file=sys.stderr)
        for line in str(changes).splitlines():
            print(f"  {line}", file=sys.stderr)


@app.command(cls=CommandLast)
@handle_errors
def run(
    command: Optional[List[str]] = typer.Argument(None, help="Command to run; put it after --."),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="Virtual CPUs [default: 2]"),
    memory: Optional[int] = typer.Option(None, "--memory", help="Memory in MiB [default: 2048]"),
    disk_size: Optional[int] = typer.Option(None, "--disk-size",
                                            help="Root disk size in MiB [default: 4096]"),
    config: Optional[str] = typer.Option(None, "--config",
                                         help="Config file [default: ./shuru.json or shuru.yaml]"),
    console: Optional[bool] = typer.Option(None, "--console",
                                           help="Show the VM's serial console on stderr"),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="Kernel [env SHURU_KERNEL]"),
    rootfs: Optional[str] = typer.Option(None, "--rootfs", help="Root disk [env SHURU_ROOTFS]"),
    initrd: Optional[str] = typer.Option(None, "--initrd", help="Initramfs [env SHURU_INITRD]"),
    accel: Optional[str] = typer.Option(None, "--accel", help="auto, kvm or tcg [default: auto]"),
    arch: Optional[str] = typer.Option(None, "--arch",
                                       help="Guest architecture: amd64 or arm64 (emulated "
                                            "on another host) [default: the host's]"),
    env: List[str] = typer.Option([], "-e", "--env", help="KEY=VALUE for the guest command"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w", help="Working directory"),
    from_: Optional[str] = typer.Option(None, "--from", help="Start from this checkpoint"),
    cold: Optional[bool] = typer.Option(None, "--cold",
                                        help="Boot instead of restoring saved machine state"),
    allow_net: Optional[bool] = typer.Option(
        None, "--allow-net", help="Give the sandbox network access through shuru's proxy "
                                  "(all hosts unless --allow-host or network.allow limit it)"),
    allow_host: List[str] = typer.Option(
        [], "--allow-host", help="Allow this host (exact, or *.example.com for subdomains); "
                                 "repeatable; implies --allow-net"),
    secret: List[str] = typer.Option(
        [], "--secret", help="NAME=HOST_ENV_VAR@host1,host2[+in_url]: the guest sees a "
                             "placeholder in $NAME; the proxy sends the real value to those "
                             "hosts only, over HTTPS, in headers (+in_url: in URLs too)"),
    verbose: bool = typer.Option(False, "--verbose", help="Print the network log at exit"),
    port: List[str] = typer.Option(
        [], "-p", "--port", help="HOST:GUEST: forward 127.0.0.1:HOST on this machine to port "
                                 "GUEST in the sandbox (no network needed; GUEST alone: a "
                                 "free host port, printed on stderr); repeatable"),
    mount: List[str] = typer.Option(
        [], "--mount", help="HOST:GUEST[:ro|:rw]: the host folder HOST at GUEST in the sandbox. "
                            "ro (default): the sandbox writes into a layer of its own and the "
                            "host stays untouched (see --diff); rw: writes reach the host, "
                            "only with --allow-host-writes; repeatable"),
    allow_host_writes: Optional[bool] = typer.Option(
        None, "--allow-host-writes", help="Let :rw mounts write to this machine (only folders "
                                          "inside the current directory)"),
    diff: bool = typer.Option(False, "--diff", help="At exit, print what the command changed "
                                                    "under each read-only mount"),
    detach: bool = typer.Option(False, "--detach", "-d",
                                help="Leave the sandbox running in the background (see "
                                     "`shuru ps`, `exec`, `shell`, `stop`); a command given "
                                     "runs in it in the background"),
    name: Optional[str] = typer.Option(None, "--name", help="Name a detached sandbox"),
    lifetime: Optional[float] = typer.Option(None, "--lifetime",
                                             help="Stop a detached sandbox after this many s"),
    idle_timeout: Optional[float] = typer.Option(
        None, "--idle-timeout", help="Stop a detached sandbox after this many s without "
                                     "exec, file or stream activity"),
):
    """Start a fresh sandbox and run a command in it (default: an interactive shell)."""
    from ..sandbox import resolve_config
    from . import terminal

    env_pairs = cfg.parse_env_pairs(env) if env else None
    flags = cli_layer(cpus=cpus, memory=memory, disk_size=disk_size, console=console,
                      kernel=kernel, rootfs=rootfs, initrd=initrd, accel=accel,
                      arch=arch, workdir=workdir, env=env_pairs, from_=from_, cold=cold,
                      command=list(command) if command else None)
    if allow_net is not None or allow_host or secret:
        flags.update(cli_layer(**network_flags(allow_net, allow_host, secret)))
    if port:
        from .. import ports

        flags["ports"] = ports.parse_flags(port)
    if mount:
        from .. import mounts

        flags["mounts"] = mounts.parse_flags(mount)
    if allow_host_writes is not None:
        flags["allow_host_writes"] = allow_host_writes
    config_file = cfg.find_config_file(config, Path.cwd())
    if detach or name is not None or lifetime is not None or idle_timeout is not None:
        if verbose or console:
            raise ConfigError([f"{'--verbose' if verbose else '--console'} shows what happens "
                               "while shuru runs: not with --detach (see `shuru ps --stats`)"])
        flags.pop("command", None)
        code = asyncio.run(run_detached(resolve_config(flags, config_file), detach, name,
                                        lifetime, idle_timeout, list(command or ())))
        raise typer.Exit(code)
    resolved = resolve_config(flags, config_file)
    on_exit = print_network_log if verbose else None
    try:
        extra = {"before_stop": print_mount_changes} if diff else {}
        code = asyncio.run(terminal.run_command(resolved, on_exit=on_exit,
                                                on_start=print_free_ports, **extra))
    except ConfigError as e:  # a host port in use, a refused mount: say it as the user wrote it
        if port:
            e = ports.relabel(e)
        if mount:
            e = ConfigError([("--mount" + p[len("mounts"):]) if p.startswith("mounts ") else p
                             for p in e.problems], source=e.source)
        raise e from None
    raise typer.Exit(code)


checkpoint_app = typer.Typer(no_args_is_help=True, help="Save sandbox disks and start from them.")
app.add_typer(checkpoint_app, name="checkpoint")


@checkpoint_app.command("create", cls=CommandLast)
@handle_errors
def checkpoint_create(
    name: str = typer.Argument(..., help="Name for the checkpoint"),
    command: Optional[List[str]] = typer.Argument(None, help="Command to run first; after --."),
    from_: Optional[str] = typer.Option(None, "--from", help="Start from this checkpoint"),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="Virtual CPUs [default: 2]"),
    memory: Optional[int] = typer.Option(None, "--memory", help="Memory in MiB [default: 2048]"),
    disk_size: Optional[int] = typer.Option(
        None, "--disk-size", help="Root disk size in MiB [default: 4096]; sandboxes started "
                                  "from the checkpoint get at least this much"),
    force: bool = typer.Option(False, "--force", help="Replace a checkpoint of that name"),
    arch: Optional[str] = typer.Option(None, "--arch", help="Guest architecture: amd64 or "
                                                            "arm64 [default: the host's]"),
    config: Optional[str] = typer.Option(None, "--config", help="Config file"),
    env: List[str] = typer.Option([], "-e", "--env", help="KEY=VALUE for the command"),
    allow_net: Optional[bool] = typer.Option(None, "--allow-net", help="Network for the command"),
    allow_host: List[str] = typer.Option([], "--allow-host",
                                         help="Allow this host (repeatable; implies --allow-net)"),
    secret: List[str] = typer.Option([], "--secret", help="NAME=HOST_ENV_VAR@host1,host2[+in_url]"),
):
    """Boot a sandbox, run a command in it, and save its disk as a checkpoint."""
    from .. import checkpoints
    from . import terminal
    from ..sandbox import AsyncSandbox, resolve_config

    checkpoints.check_name(name)
    if (checkpoints.checkpoints_dir() / name).exists() and not force:
        raise checkpoints.CheckpointError(f"a checkpoint named {name!r} already exists",
                                          hint="pass --force to replace it")
    if from_:
        checkpoints.load(from_)  # fail before booting if it is missing or damaged
    flags = cli_layer(from_=from_, cpus=cpus, memory=memory, disk_size=disk_size, arch=arch,
                      env=cfg.parse_env_pairs(env) if env else None)
    if allow_net is not None or allow_host or secret:
        flags.update(cli_layer(**network_flags(allow_net, allow_host, secret)))
    resolved = resolve_config(flags, cfg.find_config_file(config, Path.cwd()))

    async def go() -> int:
        sandbox = AsyncSandbox(resolved)
        async with sandbox:
            if command:
                code = await terminal.run_piped(sandbox, list(command))
                if code != 0:
                    print(f"shuru: {' '.join(command)} exited with {code}; no checkpoint saved",
                          file=sys.stderr)
                    return code
            cp = await sandbox.checkpoint(name, overwrite=force)
            print(f"checkpoint {cp.name} saved ({cp.manifest['disk']['size'] // 1024} KiB)")
            return 0

    raise typer.Exit(asyncio.run(go()))


@checkpoint_app.command("list")
@handle_errors
def checkpoint_list(as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """List checkpoints: name, parent, size on disk, created."""
    import json

    from .. import checkpoints

    rows = [{"name": c.name, "parent": c.parent, "size": c.manifest["disk"]["size"],
             "created": c.manifest.get("created"), "image": c.manifest.get("image_id")}
            for c in checkpoints.list_all()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "parent", "size", "created", "image")
    for r in rows:
        table.add_row(r["name"], r["parent"] or "-", f"{r['size'] / 1048576:.1f} MiB",
                      r["created"] or "", r["image"] or "")
    Console().print(table)


@checkpoint_app.command("delete")
@handle_errors
def checkpoint_delete(name: str = typer.Argument(..., help="Checkpoint to delete")):
    """Delete a checkpoint (refused while other checkpoints stand on it)."""
    from .. import checkpoints

    checkpoints.delete(name)
    print(f"checkpoint {name} deleted")


image_app = typer.Typer(no_args_is_help=True,
                        help="Guest images and the machine states saved for fast start.")
app.add_typer(image_app, name="image")


@image_app.command("list")
@handle_errors
def image_list(as_json: bool = typer.Option(False, "--json", help="Print JSON")):
    """List the installed guest image and every saved machine state (image or checkpoint,
    the options it was saved with, its size, whether this QEMU can restore it)."""
    import json

    from ..launch import states
    from ..backends.qemu.machine import find_qemu, qemu_version
    from ..image.store import current_images, image_status

    try:
        qemu = qemu_version(find_qemu())
    except ShuruError:
        qemu = None
    status = image_status()
    rows = states.inventory(qemu=qemu)
    if as_json:
        print(json.dumps({"image": status, "states": rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if status["ok"]:
        console.print(f"current image: {status['id']} (Debian {status.get('debian_suite')}, "
                      f"kernel {status.get('kernel_version')}) at {status['path']}")
    else:
        console.print(f"current image: none usable ({status.get('error')})")
    for link, path in current_images().items():
        if link != "current":  # another architecture's image (`shuru init --arch`)
            console.print(f"{link}: {path.name} at {path}")
    table = Table("layer", "name", "cpus", "memory", "disk", "accel", "size", "created", "status",
                  title="saved machine states (later starts restore these instead of booting)")
    for r in rows:
        table.add_row(r["layer"], r["name"], str(r["cpus"]), f"{r['memory']} MiB",
                      f"{r['disk_size']} MiB", r["accel"] or "?", f"{r['size'] / 1048576:.0f} MiB",
                      r["created"] or "", r["status"])
    console.print(table)


@image_app.command("export")
@handle_errors
def image_export(
    file: str = typer.Argument(..., help="The tarball to write (.tar.gz)"),
    arch: Optional[str] = typer.Option(None, "--arch",
                                       help="Export the current image of this architecture "
                                            "[default: the host's]"),
):
    """Write the current guest image to a tarball (manifest and files, each with its
    sha256) to carry to another machine, e.g. an arm64 image built on Linux to a Mac."""
    from ..image.store import normalize_arch
    from ..image.transfer import export_image

    image = export_image(Path(file), arch=normalize_arch(arch) if arch else None)
    print(f"exported guest image {image.id} ({image.manifest.get('arch')}) to {file}")


@image_app.command("import")
@handle_errors
def image_import(file: str = typer.Argument(..., help="A tarball written by `shuru image export`")):
    """Install a guest image from a tarball made by `shuru image export`, checking every
    file against the manifest's sha256s, and make it current for its architecture."""
    from ..image.transfer import import_image

    image = import_image(Path(file))
    print(f"guest image {image.id} ({image.manifest.get('arch')}) ready at {image.path}")


@app.command()
@handle_errors
def init(force: bool = typer.Option(False, "--force", help="Rebuild even if the image is current"),
         arch: Optional[str] = typer.Option(
             None, "--arch", help="Build for this architecture: amd64 (x86_64) or arm64 "
                                  "(aarch64, for Apple silicon) [default: the host's]")):
    """Build the guest image (Debian rootfs, kernel, initramfs) into the data dir."""
    from ..image.build import build_image
    from ..image.store import normalize_arch
    from .progress import RichProgress

    arch = normalize_arch(arch) if arch else None
    with RichProgress() as progress:
        image = build_image(force=force, progress=progress, arch=arch)
    print(f"guest image {image.id} ready at {image.path}")


@app.command()
@handle_errors
def doctor():
    """Check the host (QEMU and KVM on Linux; the signed helper and Virtualization.framework
    on macOS) and the guest image; print the fix for each problem."""
    from .doctor import run_checks, render

    checks = run_checks()
    render(checks)
    if any(not c.ok for c in checks):
        raise typer.Exit(1)


@app.command()
@handle_errors
def upgrade(check: bool = typer.Option(False, "--check", help="Only report whether an upgrade exists")):
    """Upgrade shuru with pip from the configured index, then refresh the guest image."""
    from .upgrade import upgrade as do_upgrade

    raise typer.Exit(do_upgrade(check_only=check))


@app.command()
@handle_errors
def mcp(secret: List[str] = typer.Option(
        [], "--secret", help="Offer a secret to sandboxes: NAME=HOST_ENV_VAR@host1,host2")):
    """Serve sandboxes to an MCP client (Claude Desktop, Cursor, ...) over stdio.

    Register it in the client's MCP configuration
    (claude_desktop_config.json, .cursor/mcp.json, ...):

        {"mcpServers": {"shuru": {"command": "shuru", "args": ["mcp"]}}}

    or with Claude Code:  claude mcp add shuru -- shuru mcp

    Give the full path of shuru if the client does not see your PATH.
    --secret KEY=KEY@api.example.com (repeatable, in "args" after "mcp")
    lets a model name KEY when it starts a sandbox: it never sees the
    value, which goes only to those hosts (put KEY in the entry's "env":
    clients pass a server little of their own environment). Every sandbox a client
    started stops when it disconnects. Needs pip install 'shuru\\[mcp]'.
    """
    import importlib.util

    if importlib.util.find_spec("mcp") is None:  # the optional extra is not installed
        raise fail("shuru mcp needs the mcp package: pip install 'shuru[mcp]'")
    from ..integrations.mcp import main as serve

    offered = network_flags(None, [], secret).get("secrets", {})
    # Found out now, by whoever set the server up, rather than by a model at its first start.
    unset = [f"--secret {name}: the host variable {s['from']} is not set"
             for name, s in offered.items() if s["from"] not in os.environ]
    if unset:
        raise ConfigError(unset)
    serve(offered)


@app.command()
@handle_errors
def version():
    """Print shuru's version."""
    from .. import __version__

    print(__version__)


# ---- detached sandboxes ----------------------------------------------------------------


async def run_detached(config, detach: bool, name: str | None, lifetime: float | None,
                       idle_timeout: float | None, command: list[str]) -> int:
    """`shuru run --detach`: start the sandbox under a supervisor, start the command (if
    any) in its own session so that it outlives this connection, print the name."""
    from ..sandbox import AsyncSandbox

    if not detach:
        which = "--name" if name is not None else (
            "--lifetime" if lifetime is not None else "--idle-timeout")
        raise ConfigError([f"{which} is for detached sandboxes: add --detach"])
    sandbox = await AsyncSandbox._start_detached(
        config, name, _positive("--lifetime", lifetime), _positive("--idle-timeout", idle_timeout))
    try:
        if command:
            await sandbox.exec(["setsid", "-f", "sh", "-c",
                                'exec "$@" </dev/null >/tmp/shuru-detached.log 2>&1', "sh",
                                *command])
        for fwd in sandbox.ports:
            print(f"shuru: port {fwd.host}:{fwd.host_port} -> {fwd.guest_port} in the sandbox",
                  file=sys.stderr, flush=True)
        print(sandbox.name)
    except BaseException:
        await sandbox.stop()
        raise
    await sandbox.disconnect()
    return 0


def _positive(flag: str, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ConfigError([f"{flag} must be a positive number of seconds, got {value:g}"])
    return value


@app.command("ps")
@handle_errors
def ps(as_json: bool = typer.Option(False, "--json", help="Print JSON"),
       stats: bool = typer.Option(False, "--stats", help="Add CPU, memory, disk, network")):
    """List your detached sandboxes (dead: its supervisor crashed; `shuru prune` cleans up)."""
    import json
    import time

    from ..named import registry, remote

    rows = registry.list_records()
    if stats:
        for row in rows:
            if row.get("state") in ("running", "paused"):
                try:
                    row["stats"] = asyncio.run(remote.request(row["name"], "metrics"))
                except ShuruError as e:
                    row["stats"] = {"error": e.message}
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    columns = ["name", "id", "state", "uptime", "from", "cpus", "memory", "ports", "owner pid"]
    if stats:
        columns += ["cpu s", "rss", "pss", "guest used", "disk", "net up/down"]
    table = Table(*columns)
    mib = lambda n: f"{n / 1048576:.0f} MiB" if isinstance(n, (int, float)) else "-"
    for r in rows:
        started = r.get("started")
        up = f"{time.time() - started:.0f} s" if isinstance(started, (int, float)) else "-"
        cells = [r["name"], r.get("id", "-"), r.get("state", "?"), up, r.get("from") or "-",
                 str(r.get("cpus", "-")), f"{r['memory']} MiB" if r.get("memory") else "-",
                 ", ".join(r.get("ports") or []), str(r.get("owner_pid") or "-")]
        if stats:
            st = r.get("stats") or {}
            mem, guest, net = st.get("memory") or {}, st.get("guest_memory") or {}, st.get("network") or {}
            cpu = st.get("cpu_seconds")
            cells += [f"{cpu:.1f}" if isinstance(cpu, (int, float)) else "-", mib(mem.get("rss")),
                      mib(mem.get("pss")), mib(guest.get("used")), mib(st.get("disk")),
                      f"{net.get('up', 0)}/{net.get('down', 0)} B" if net else "-"]
        table.add_row(*cells)
    Console().print(table)


@app.command("exec", cls=CommandLast)
@handle_errors
def exec_(
    name: str = typer.Argument(..., help="The detached sandbox"),
    command: List[str] = typer.Argument(..., help="Command to run; put it after --."),
    env: List[str] = typer.Option([], "-e", "--env", help="KEY=VALUE for the command"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w", help="Working directory"),
):
    """Run a command in a detached sandbox; exits with its status."""
    from . import terminal
    from ..sandbox import AsyncSandbox

    env_pairs = cfg.parse_env_pairs(env) if env else None

    async def go() -> int:
        sandbox = await AsyncSandbox.attach(name)
        try:
            return await terminal.run_piped(sandbox, list(command), env=env_pairs, cwd=workdir)
        finally:
            await sandbox.disconnect()

    raise typer.Exit(asyncio.run(go()))


@app.command("shell")
@handle_errors
def shell(name: str = typer.Argument(..., help="The named sandbox"),
          user: Optional[str] = typer.Option(None, "--user", "-u",
                                             help="Run the shell as this guest user")):
    """An interactive shell (a PTY) in a named sandbox."""
    import os

    from . import terminal
    from ..sandbox import AsyncSandbox

    async def go() -> int:
        sandbox = await AsyncSandbox.attach(name)
        try:
            argv = list(sandbox.config.command)
            if os.isatty(0):
                return await terminal._interactive(sandbox, argv, user=user)
            return await terminal.run_piped(sandbox, argv, user=user)
        finally:
            await sandbox.disconnect()

    raise typer.Exit(asyncio.run(go()))


@app.command("stop")
@handle_errors
def stop(names: Optional[List[str]] = typer.Argument(None, help="Detached sandboxes to stop"),
         all_: bool = typer.Option(False, "--all", help="Stop every detached sandbox of yours")):
    """Stop detached sandboxes (their disks are discarded)."""
    from ..named import registry, remote

    if all_:
        names = [r["name"] for r in registry.list_records() if r.get("state") != "dead"]
    elif not names:
        raise ConfigError(["name the sandboxes to stop, or pass --all"])
    for n in names:
        registry.check_name(n)

    async def go() -> None:
        for n in names:
            await remote.request(n, "stop")
            await asyncio.to_thread(registry.slot(n).wait_gone, 60)
            print(f"stopped {n}")

    asyncio.run(go())


@app.command("pause")
@handle_errors
def pause(name: str = typer.Argument(..., help="The detached sandbox")):
    """Stop a detached sandbox's CPUs, keeping its memory (`shuru resume` runs it again)."""
    from ..named import remote

    asyncio.run(remote.request(name, "pause"))


@app.command("resume")
@handle_errors
def resume(name: str = typer.Argument(..., help="The detached sandbox")):
    """Run a paused detached sandbox again."""
    from ..named import remote

    asyncio.run(remote.request(name, "resume"))


@app.command("prune")
@handle_errors
def prune():
    """Remove what crashed supervisors left (records, sockets, run directories)."""
    from ..named import registry

    for n in registry.prune():
        print(f"pruned {n}")


def main() -> None:
    app(prog_name="shuru")


if __name__ == "__main__":
    main()
