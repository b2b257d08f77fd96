"""`shuru doctor`: what is installed, whether KVM works, whether the image is ready, and the
fix for each problem. Each check is a small function returning a `Check`.

On macOS the checks are about the Swift helper instead of QEMU: found, signed, carrying the
virtualization entitlement, Virtualization.framework usable through it, and a guest image of
the Mac's own architecture. There the facts are gathered first (`gather_mac_facts`: the
helper's path, `codesign`'s output, the helper's hello under `--driver vz`, the image
manifest) and each check is a pure function of them, so all of it is tested on Linux.
"""

from __future__ import annotations

import os
import platform
import plistlib
import re
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


# ---- macOS: facts, gathered once -------------------------------------------------------------

VIRTUALIZATION = "com.apple.security.virtualization"
MIN_MACOS = (13,)  # the helper's deployment target (helper/Package.swift)
SAVE_STATE_MACOS = (14,)  # VZ saves machine state from macOS 14, on Apple silicon only
# Debian's name for the architecture of guests a Mac boots (VZ runs the host's own only).
GUEST_ARCH = {"arm64": "arm64", "aarch64": "arm64", "x86_64": "amd64"}


@dataclass(frozen=True)
class Ran:
    """A command's exit status and output."""

    status: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class MacFacts:
    """What `shuru doctor` knows about a Mac; every field is data, so the checks are pure."""

    macos: str = ""  # platform.mac_ver()'s release, "" when unknown
    machine: str = ""  # platform.machine(): "arm64" on Apple silicon, "x86_64" on Intel
    helper: str | None = None  # the helper binary shuru would run, None when none is found
    helper_problem: str = ""  # why none is found (find_helper's message)
    codesign: Ran | None = None  # `codesign --display --entitlements - --xml HELPER`
    codesign_problem: str = ""  # why codesign did not run
    hello: dict | None = None  # the helper's hello reply under `--driver vz`
    hello_problem: str = ""  # why there is no hello
    image_manifest: dict | None = None  # the current guest image's manifest
    entitlements_file: str | None = None  # helper/shuru-helper.entitlements of a checkout


def _version(text: str) -> tuple[int, ...] | None:
    parts = re.findall(r"\d+", text or "")
    return tuple(int(p) for p in parts[:3]) if parts else None


def entitlements(codesign_stdout: str) -> dict | None:
    """The entitlements in `codesign --display --entitlements -` output: its XML plist
    (`--xml`, or older codesigns' raw blob), or the `[Key] ... [Bool] true` listing newer ones
    print without `--xml`. None when the output holds none (an unsigned or bare binary)."""
    text = codesign_stdout or ""
    start = text.find("<?xml")
    if start < 0:
        start = text.find("<plist")
    if start >= 0:
        end = text.find("</plist>", start)
        blob = text[start:end + len("</plist>")] if end >= 0 else text[start:]
        try:
            value = plistlib.loads(blob.encode())
        except Exception:  # plistlib raises several kinds on a damaged plist
            return None
        return value if isinstance(value, dict) else None
    found = {}
    for key, kind, raw in re.findall(r"\[Key\]\s*(\S+)\s*\[Value\]\s*\[(\w+)\]\s*(\S+)", text):
        found[key] = raw == "true" if kind == "Bool" else raw
    return found or None


def sign_command(facts: MacFacts) -> str:
    """The exact command that signs the helper with the entitlement it needs."""
    plist = facts.entitlements_file or "shuru-helper.entitlements"
    binary = facts.helper or "shuru-helper"
    command = f"codesign --sign - --entitlements {plist} --force {binary}"
    if facts.entitlements_file is None:
        command += (f" (shuru-helper.entitlements is in shuru's helper/ folder: a plist with "
                    f"{VIRTUALIZATION} set to true)")
    return command


# ---- macOS: the checks (pure) -----------------------------------------------------------------


def check_mac_helper(facts: MacFacts) -> Check:
    if facts.helper:
        return Check("helper", True, facts.helper)
    return Check("helper", False, facts.helper_problem or "shuru-helper not found",
                 "build it: `cd helper && swift build -c release`, sign it (see the helper "
                 "signature check), then put .build/release/shuru-helper on PATH or set "
                 "SHURU_HELPER to it")


def check_mac_signature(facts: MacFacts) -> Check:
    name = "helper signature"
    if not facts.helper:
        return Check(name, False, "not checked: no shuru-helper")
    if facts.codesign is None:
        return Check(name, False, f"cannot run codesign: {facts.codesign_problem or 'not found'}",
                     "install the Command Line Tools (`xcode-select --install`), which "
                     "bring codesign")
    if facts.codesign.status != 0:
        said = (facts.codesign.stderr.strip().splitlines() or ["codesign failed"])[-1]
        return Check(name, False, f"{facts.helper}: {said}", sign_command(facts))
    return Check(name, True, "signed")


def check_mac_entitlement(facts: MacFacts) -> Check:
    name = "virtualization entitlement"
    if not facts.helper or facts.codesign is None or facts.codesign.status != 0:
        return Check(name, False, "not checked: the helper's signature cannot be read")
    granted = entitlements(facts.codesign.stdout) or {}
    if granted.get(VIRTUALIZATION) is True:
        return Check(name, True, VIRTUALIZATION)
    return Check(name, False,
                 f"the helper is signed without {VIRTUALIZATION}: Virtualization.framework "
                 "will refuse to run its VMs (EENTITLEMENT)", sign_command(facts))


def check_mac_vz(facts: MacFacts) -> Check:
    name = "virtualization"
    version = _version(facts.macos)
    where = f"macOS {facts.macos or '?'}"
    if version is not None and version < MIN_MACOS:
        return Check(name, False, f"{where}: shuru's helper needs macOS "
                     f"{'.'.join(map(str, MIN_MACOS))} or later", "upgrade macOS")
    if facts.hello is None:
        if not facts.helper:
            return Check(name, False, "not checked: no shuru-helper")
        return Check(name, False, f"{where}: the helper did not start its vz driver: "
                     f"{facts.hello_problem or 'no answer'}",
                     "build the helper on macOS 13 or later with Xcode's Swift (the vz driver "
                     "is compiled only where Virtualization.framework exists)")
    driver = facts.hello.get("driver")
    if driver != "vz":
        return Check(name, False, f"{where}: the helper answered with driver {driver!r}, "
                     "not vz", "rebuild the helper on macOS (`swift build -c release`)")
    caps = facts.hello.get("capabilities")
    save_state = isinstance(caps, dict) and caps.get("save_state") is True
    helper = facts.hello.get("helper")
    release = f" {helper}" if isinstance(helper, str) else ""
    fast = ("fast start: yes" if save_state else
            f"fast start: no (VZ saves machine state from macOS "
            f"{'.'.join(map(str, SAVE_STATE_MACOS))}, on Apple silicon only; sandboxes boot)")
    return Check(name, True, f"Virtualization.framework through shuru-helper{release} on "
                 f"{where} ({facts.machine or '?'}); {fast}")


def check_mac_image_arch(facts: MacFacts) -> Check:
    name = "image architecture"
    want = GUEST_ARCH.get(facts.machine)
    if want is None:
        return Check(name, False, f"unknown Mac architecture {facts.machine!r}")
    if facts.image_manifest is None:
        return Check(name, False, "not checked: no guest image (see the guest image check)")
    # Manifests from before images had an architecture are all amd64 images.
    have = facts.image_manifest.get("arch", "amd64")
    if not isinstance(have, str) or not have:
        return Check(name, False, f"the guest image's manifest names no architecture "
                     f"({have!r})", "rebuild the image (`shuru init --force` on Linux)")
    if have == want:
        return Check(name, True, f"{have} image on an {facts.machine} Mac")
    return Check(name, False, f"the guest image is {have}, but this Mac ({facts.machine}) boots "
                 f"only {want} guests: Virtualization.framework runs the host's architecture",
                 f"on a Linux machine run `shuru init --arch {want}` and `shuru image export "
                 f"FILE`, then here `shuru image import FILE`")


def mac_checks(facts: MacFacts) -> list[Check]:
    return [check_mac_helper(facts), check_mac_signature(facts), check_mac_entitlement(facts),
            check_mac_vz(facts), check_mac_image_arch(facts)]


# ---- macOS: gathering the facts (I/O) ---------------------------------------------------------


def gather_mac_facts() -> MacFacts:
    from ..backends.helper.machine import CHECKOUT_HELPER, find_helper
    from ..image.store import current_image

    facts: dict = {"macos": platform.mac_ver()[0], "machine": platform.machine()}
    plist = CHECKOUT_HELPER.parents[2] / "shuru-helper.entitlements"
    facts["entitlements_file"] = str(plist) if plist.is_file() else None
    try:
        helper = facts["helper"] = str(find_helper())
    except ShuruError as e:
        facts["helper_problem"] = e.message
        helper = None
    if helper:
        codesign = shutil.which("codesign")
        if codesign is None:
            facts["codesign_problem"] = "codesign is not on PATH"
        else:
            try:
                done = subprocess.run([codesign, "--display", "--entitlements", "-", "--xml",
                                       helper], capture_output=True, text=True, timeout=20)
                facts["codesign"] = Ran(done.returncode, done.stdout, done.stderr)
            except (OSError, subprocess.TimeoutExpired) as e:
                facts["codesign_problem"] = str(e)
        try:
            facts["hello"] = _helper_hello(helper)
        except ShuruError as e:
            facts["hello_problem"] = e.message
    try:
        facts["image_manifest"] = dict(current_image().manifest)
    except ShuruError:
        facts["image_manifest"] = None
    return MacFacts(**facts)


def _helper_hello(helper: str) -> dict:
    """Launch the helper with its vz driver and say hello: the reply names the driver, the
    helper's release and its capabilities. No VM is made."""
    import asyncio
    from pathlib import Path

    from ..backends.helper import protocol as hp
    from ..backends.helper.machine import HelperMachine
    from ..backends.rundir import RunDir

    async def hello() -> dict:
        machine = HelperMachine(Path(helper), RunDir.create(), None)
        try:
            await machine.launch("vz")
            return dict(await machine._call("hello", "say hello", version=hp.VERSION))
        finally:
            await machine.stop()

    return asyncio.run(hello())


def run_checks(system: str | None = None) -> list[Check]:
    if (system or sys.platform) == "darwin":
        facts = gather_mac_facts()
        helper, signature, entitlement, vz, arch = mac_checks(facts)
        return [check_python(), helper, signature, entitlement, vz, check_image(), arch,
                check_saved_states(), check_runtime_dir()]
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
