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

from . import config as cfg
from .errors import ConfigError, ShuruError, ShuruWarning

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Local-first microVM sandboxes for AI agents.",
)

EXIT_CONFIG = 2
EXIT_SHURU = 125
FLAG_NAMES = {name: "--" + name.replace("_", "-") for name in cfg.FIELDS}


def _print_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, ShuruWarning):
        print(f"shuru: warning: {message}", file=sys.stderr, flush=True)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line),
              file=sys.stderr, end="")


def fail(message: str, code: int = EXIT_SHURU) -> typer.Exit:
    print(f"shuru: error: {message}", file=sys.stderr, flush=True)
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


def cli_layer(**flags) -> dict:
    """The flags the user actually gave, validated, with flag names in messages."""
    given = {k: v for k, v in flags.items() if v is not None}
    return cfg.validate(given, label=lambda name: FLAG_NAMES.get(name, name))


@app.command(context_settings={"allow_interspersed_args": False})
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
):
    """Boot a fresh sandbox and run a command in it (default: an interactive shell)."""
    from .sandbox import resolve_config
    from . import terminal

    env_pairs = cfg.parse_env_pairs(env) if env else None
    flags = cli_layer(cpus=cpus, memory=memory, disk_size=disk_size, console=console,
                      kernel=kernel, rootfs=rootfs, initrd=initrd, accel=accel,
                      workdir=workdir, env=env_pairs,
                      command=list(command) if command else None)
    config_file = cfg.find_config_file(config, Path.cwd())
    resolved = resolve_config(flags, config_file)
    code = asyncio.run(terminal.run_command(resolved))
    raise typer.Exit(code)


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
