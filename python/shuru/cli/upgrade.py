"""`shuru upgrade`: upgrade the installed package with pip, then refresh the guest image.

pip does the work and reads its own configuration (index URL, find-links, proxies), so
upgrades come from whatever index the user configured. A source checkout (editable install)
is not upgraded by pip: we say how to update it instead. After an upgrade, the *new*
version's `shuru init` runs in a fresh interpreter: the guest agent is baked into the image,
so a version whose agent changed rebuilds it, and one whose agent did not is a no-op.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

from ..errors import ShuruError

PACKAGE = "shuru"


def installed_version() -> str:
    return metadata.version(PACKAGE)


def source_checkout() -> str | None:
    """The project directory if shuru is installed editable from a source tree."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    info = json.loads(raw)
    if info.get("dir_info", {}).get("editable"):
        return info.get("url", "").removeprefix("file://")
    return None


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def available_version() -> str | None:
    """The version pip would install as an upgrade, or None if it would install nothing."""
    proc = _pip("install", "--upgrade", "--dry-run", "--quiet", "--no-deps", "--report", "-",
                PACKAGE)
    if proc.returncode != 0:
        raise ShuruError(f"pip could not look up {PACKAGE}: {_last_line(proc.stderr)}",
                         hint="check pip's index configuration (PIP_INDEX_URL, pip.conf)")
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise ShuruError(f"pip gave an unreadable report: {_last_line(proc.stdout)}") from None
    for item in report.get("install", []):
        if item.get("metadata", {}).get("name", "").lower() == PACKAGE:
            return item["metadata"]["version"]
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def upgrade(check_only: bool = False, out=print) -> int:
    current = installed_version()
    checkout = source_checkout()
    if checkout:
        out(f"shuru {current} is installed from a source checkout at {checkout}.\n"
            f"Update it with: git -C {checkout} pull && {checkout}/scripts/setup")
        return 0
    newer = available_version()
    if newer is None or newer == current:
        out(f"shuru {current} is up to date")
        return 0
    if check_only:
        out(f"shuru {newer} is available (installed: {current}); run `shuru upgrade`")
        return 0
    out(f"upgrading shuru {current} -> {newer}")
    proc = _pip("install", "--upgrade", "--quiet", PACKAGE)
    if proc.returncode != 0:
        raise ShuruError(f"pip failed to upgrade {PACKAGE}: {_last_line(proc.stderr)}")
    # The new version decides whether its agent needs a new image.
    refresh = subprocess.run([sys.executable, "-m", "shuru.cli", "init"])
    if refresh.returncode != 0:
        raise ShuruError("shuru was upgraded, but refreshing the guest image failed",
                         hint="run `shuru init` to retry")
    out(f"shuru {newer} installed")
    return 0
