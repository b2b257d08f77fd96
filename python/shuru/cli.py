"""The `shuru` command: a thin skin over the SDK.

Owns argument parsing (Typer), turning flags into a config layer, and the one place where a
`ShuruError` becomes a message on stderr and an exit status (2 for bad configuration, 125 for
shuru's own failures, like `docker run`; otherwise the guest command's own status).
"""

from __future__ import annotations

import asyncio
import functools
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperOption

from . import config as cfg
from .errors import ConfigError, ShuruError, ShuruWarning
from .sanitize import neutralise

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
    from .net import network_problems, parse_secret_flag

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
    from .guestnet import format_event

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
    from .errors import ShuruError

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
):
    """Start a fresh sandbox and run a command in it (default: an interactive shell)."""
    from .sandbox import resolve_config
    from . import terminal

    env_pairs = cfg.parse_env_pairs(env) if env else None
    flags = cli_layer(cpus=cpus, memory=memory, disk_size=disk_size, console=console,
                      kernel=kernel, rootfs=rootfs, initrd=initrd, accel=accel,
                      workdir=workdir, env=env_pairs, from_=from_, cold=cold,
                      command=list(command) if command else None)
    if allow_net is not None or allow_host or secret:
        flags.update(cli_layer(**network_flags(allow_net, allow_host, secret)))
    if port:
        from . import ports

        flags["ports"] = ports.parse_flags(port)
    if mount:
        from . import mounts

        flags["mounts"] = mounts.parse_flags(mount)
    if allow_host_writes is not None:
        flags["allow_host_writes"] = allow_host_writes
    config_file = cfg.find_config_file(config, Path.cwd())
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
    config: Optional[str] = typer.Option(None, "--config", help="Config file"),
    env: List[str] = typer.Option([], "-e", "--env", help="KEY=VALUE for the command"),
    allow_net: Optional[bool] = typer.Option(None, "--allow-net", help="Network for the command"),
    allow_host: List[str] = typer.Option([], "--allow-host",
                                         help="Allow this host (repeatable; implies --allow-net)"),
    secret: List[str] = typer.Option([], "--secret", help="NAME=HOST_ENV_VAR@host1,host2[+in_url]"),
):
    """Boot a sandbox, run a command in it, and save its disk as a checkpoint."""
    from . import checkpoints, terminal
    from .sandbox import AsyncSandbox, resolve_config

    checkpoints.check_name(name)
    if (checkpoints.checkpoints_dir() / name).exists() and not force:
        raise checkpoints.CheckpointError(f"a checkpoint named {name!r} already exists",
                                          hint="pass --force to replace it")
    if from_:
        checkpoints.load(from_)  # fail before booting if it is missing or damaged
    flags = cli_layer(from_=from_, cpus=cpus, memory=memory, disk_size=disk_size,
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

    from . import checkpoints

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
    from . import checkpoints

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

    from . import snapshots
    from .backends.qemu import find_qemu, qemu_version
    from .image import image_status

    try:
        qemu = qemu_version(find_qemu())
    except ShuruError:
        qemu = None
    status = image_status()
    rows = snapshots.inventory(qemu=qemu)
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
    table = Table("layer", "name", "cpus", "memory", "disk", "accel", "size", "created", "status",
                  title="saved machine states (later starts restore these instead of booting)")
    for r in rows:
        table.add_row(r["layer"], r["name"], str(r["cpus"]), f"{r['memory']} MiB",
                      f"{r['disk_size']} MiB", r["accel"] or "?", f"{r['size'] / 1048576:.0f} MiB",
                      r["created"] or "", r["status"])
    console.print(table)


@app.command()
@handle_errors
def init(force: bool = typer.Option(False, "--force", help="Rebuild even if the image is current")):
    """Build the guest image (Debian rootfs, kernel, initramfs) into the data dir."""
    from .build import build_image
    from .progress import RichProgress

    with RichProgress() as progress:
        image = build_image(force=force, progress=progress)
    print(f"guest image {image.id} ready at {image.path}")


@app.command()
@handle_errors
def doctor():
    """Check the host: QEMU, KVM, the guest image; print the fix for each problem."""
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
def version():
    """Print shuru's version."""
    from . import __version__

    print(__version__)


def main() -> None:
    app(prog_name="shuru")


if __name__ == "__main__":
    main()
