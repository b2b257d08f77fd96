"""`shuru doctor`: what is installed, whether KVM works, whether the image is ready, and the
fix for each problem. Each check is a small function returning a `Check`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from ..backends.qemu import accel as accel_mod
from ..errors import ShuruError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run: {e}"
    return out.strip().splitlines()[0] if out.strip() else "?"


def check_python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check("python", ok, sys.version.split()[0], "" if ok else "shuru needs Python 3.11+")


def check_tool(name: str, package: str, purpose: str) -> Check:
    path = shutil.which(name)
    if not path:
        return Check(name, False, f"not installed (needed {purpose})",
                     f"apt-get install {package}")
    return Check(name, True, _version_line([path, "--version"]) if name.startswith("qemu")
                 else path)


def check_accel() -> Check:
    from ..backends.qemu.machine import find_qemu
    from ..image.store import shuru_home

    try:
        qemu = find_qemu()
    except ShuruError as e:
        return Check("acceleration", False, str(e.message), e.hint or "")
    verdict = accel_mod.detect(qemu, shuru_home() / "cache" / "accel.json")
    if verdict.name == "kvm":
        return Check("acceleration", True, "KVM works")
    return Check("acceleration", True, f"TCG (software emulation): {verdict.reason}",
                 "sandboxes work but boot and run slower; on a host with hardware "
                 "virtualisation, make /dev/kvm available to this user")


def check_image() -> Check:
    from ..image.store import image_status

    st = image_status()
    if not st["ok"]:
        return Check("guest image", False, st.get("error", "unusable"),
                     st.get("hint") or "run `shuru init`")
    detail = (f"{st['id']} (Debian {st.get('debian_suite')}, kernel {st.get('kernel_version')}, "
              f"{st.get('disk_usage_bytes', 0) // (1024 * 1024)} MiB) at {st['path']}")
    if st.get("stale"):
        return Check("guest image", False, f"{detail}; stale: {st['stale_reason']}",
                     "run `shuru init` to rebuild it for this version")
    return Check("guest image", True, detail)


def check_saved_states() -> Check:
    from ..launch import states

    rows = states.inventory()
    size = sum(r["size"] for r in rows) // (1024 * 1024)
    detail = (f"{len(rows)} saved machine state(s), {size} MiB on disk; "
              "`shuru image list` shows them" if rows else
              "none yet: the first start of each image, checkpoint and machine size saves one")
    return Check("fast start", True, detail)


def check_runtime_dir() -> Check:
    from ..backends.rundir import private_dir, runtime_root

    root = runtime_root()
    try:
        private_dir(root)  # owned by the user, mode 0700, not a symlink
    except ShuruError as e:
        return Check("runtime dir", False, e.message, e.hint or "")
    ok = os.access(root, os.W_OK)
    return Check("runtime dir", ok, str(root),
                 "" if ok else "set SHURU_RUNTIME_DIR to a writable directory")


def run_checks() -> list[Check]:
    return [
        check_python(),
        check_tool("qemu-system-x86_64", "qemu-system-x86", "to run sandboxes"),
        check_tool("qemu-img", "qemu-utils", "to create disk overlays"),
        check_tool("mmdebstrap", "mmdebstrap", "by `shuru init`"),
        check_tool("mke2fs", "e2fsprogs", "by `shuru init`"),
        check_accel(),
        check_image(),
        check_saved_states(),
        check_runtime_dir(),
    ]


def render(checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("check")
    table.add_column("status")
    table.add_column("fix")
    for c in checks:
        table.add_row("[green]ok[/]" if c.ok else "[red]FAIL[/]", c.name, c.detail, c.fix)
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
