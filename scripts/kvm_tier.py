"""The KVM tier's host side: run tests/kvm inside a shuru sandbox whose CPU offers
virtualisation (nested KVM), so the KVM path and the vsock channel run for real on a host
without hardware KVM.

Four steps, the first two cheap after the first time:
  1. a checkpoint `kvm-host-<key>` with QEMU and the project's Python dependencies from
     Debian's archive (the only network it ever uses); `<key>` hashes the package list and
     the set-up commands, so changing either builds a new one (old ones are deleted);
  2. a checkpoint over it with the current guest image installed, keyed by the image's id;
  3. a sandbox from that, with this checkout (its working tree, as git sees it) copied in
     and the KVM and vhost-vsock modules loaded;
  4. pytest on tests/kvm inside it, its output streamed here.

Usage: scripts/test-kvm [pytest args]    (`--keep NAME` leaves the sandbox running, detached,
for `shuru exec NAME ...`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from shuru import AsyncSandbox, checkpoints as ck
from shuru.image.store import current_image
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's tests/ package, for registry_network

from tests.registries import registry_network  # noqa: E402

GUEST_SRC = "/opt/kvmtier/src"
GUEST_VENV = "/opt/kvmtier/venv"
GUEST_HOME = "/root/.local/share/shuru"
# The host sandbox: enough memory for an inner VM of the default size plus its QEMU.
HOST_CPUS, HOST_MEMORY, HOST_DISK = 2, 5120, 8192

PACKAGES = (
    "qemu-system-x86 qemu-utils kmod python3-venv python3-typer python3-rich python3-aiohttp "
    "python3-watchfiles python3-yaml python3-cryptography python3-msgpack python3-pytest "
    "python3-pytest-asyncio python3-pytest-timeout python3-hypothesis python3-setuptools "
    "python3-wheel"
)
# The project is not installed: a .pth puts the uploaded checkout on the venv's path, and
# `shuru` is a two-line script, so a new checkout needs no reinstall.
SETUP = f"""set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends {PACKAGES}
apt-get clean
python3 -m venv --system-site-packages {GUEST_VENV}
echo {GUEST_SRC}/python > $({GUEST_VENV}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/shuru-src.pth
printf '#!{GUEST_VENV}/bin/python\\nimport sys\\nfrom shuru.cli import main\\nsys.exit(main())\\n' > {GUEST_VENV}/bin/shuru
chmod +x {GUEST_VENV}/bin/shuru
mkdir -p {GUEST_SRC} {GUEST_HOME}
"""
KEY = hashlib.sha256(SETUP.encode()).hexdigest()[:12]
CHECKPOINT = f"kvm-host-{KEY}"


def say(msg: str) -> None:
    print(f"test-kvm: {msg}", file=sys.stderr, flush=True)


async def run(sb: AsyncSandbox, command: str, *, timeout: float = 600, echo: bool = True) -> int:
    """Run `command` in the sandbox, its output streamed to ours; its exit code."""
    proc = await sb.spawn(command)
    if echo:
        proc.on("stdout", lambda d: (sys.stdout.buffer.write(d), sys.stdout.flush()))
        proc.on("stderr", lambda d: (sys.stderr.buffer.write(d), sys.stderr.flush()))
    return await asyncio.wait_for(proc.wait(), timeout)


async def prepare() -> None:
    if (ck.checkpoints_dir() / CHECKPOINT).is_dir():
        return
    for old in ck.checkpoints_dir().glob("kvm-host-*"):
        shutil.rmtree(old, ignore_errors=True)
    say(f"building checkpoint {CHECKPOINT} (QEMU and Python packages from Debian; minutes)")
    t = time.monotonic()
    sb = await AsyncSandbox.start(cpus=HOST_CPUS, memory=HOST_MEMORY, disk_size=HOST_DISK,
                                  allow_net=True, network=registry_network("deb.debian.org"))
    try:
        if await run(sb, SETUP, timeout=1800) != 0:
            raise SystemExit("test-kvm: setting up the host sandbox failed")
        await sb.checkpoint(CHECKPOINT)
    finally:
        await sb.stop()
    say(f"checkpoint built in {time.monotonic() - t:.0f} s")


def checkout_tar() -> bytes:
    """This checkout's files as git sees them (tracked and untracked, not ignored)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in filter(None, names):
            path = ROOT / name.decode()
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=name.decode())
    return buf.getvalue()


async def prepare_image() -> str:
    """A checkpoint over the base one with the current guest image in place, keyed by the
    image's id (the image is half a gigabyte: copying it is most of a run's set-up)."""
    image = current_image()
    name = f"kvm-host-{KEY}-{image.id}"
    if (ck.checkpoints_dir() / name).is_dir():
        return name
    for old in ck.checkpoints_dir().glob(f"kvm-host-{KEY}-*"):
        shutil.rmtree(old, ignore_errors=True)
    t = time.monotonic()
    sb = await AsyncSandbox.start(from_=CHECKPOINT, cpus=HOST_CPUS, memory=HOST_MEMORY,
                                  disk_size=HOST_DISK)
    try:
        dest = f"{GUEST_HOME}/images/{image.path.name}"
        await sb.files.mkdir(dest)
        for f in sorted(image.path.iterdir()):
            if f.is_file():
                await sb.files.upload(f, f"{dest}/{f.name}")
        if await run(sb, f"ln -sfn {image.path.name} {GUEST_HOME}/images/current") != 0:
            raise SystemExit("test-kvm: installing the image failed")
        await sb.checkpoint(name)
    finally:
        await sb.stop()
    say(f"image {image.id} copied into checkpoint {name} in {time.monotonic() - t:.0f} s")
    return name


async def enter(base: str, name: str | None) -> AsyncSandbox:
    """A sandbox from `base` with the checkout in place and the modules loaded."""
    t = time.monotonic()
    sb = await AsyncSandbox.start(from_=base, cpus=HOST_CPUS, memory=HOST_MEMORY,
                                  disk_size=HOST_DISK, name=name, detach=name is not None)
    say(f"host sandbox up in {time.monotonic() - t:.1f} s (accel {sb.accel})")
    t = time.monotonic()
    await sb.files.write("/tmp/src.tgz", checkout_tar())
    script = (f"set -e; rm -rf {GUEST_SRC}; mkdir -p {GUEST_SRC}; tar -xzf /tmp/src.tgz -C {GUEST_SRC}; "
              # The packages the wheel maps from guest/ and rootfs/ (pyproject's package-dir).
              f"ln -s ../guest {GUEST_SRC}/python/shuru_guest; ln -s ../rootfs {GUEST_SRC}/python/shuru_rootfs; "
              "if grep -q '^vendor_id.*AuthenticAMD' /proc/cpuinfo; then modprobe kvm_amd; "
              "else modprobe kvm_intel; fi; modprobe vhost_vsock; ls -l /dev/kvm /dev/vhost-vsock")
    if await run(sb, script) != 0:
        raise SystemExit("test-kvm: preparing the host sandbox failed")
    say(f"checkout copied in and modules loaded in {time.monotonic() - t:.1f} s")
    return sb


async def main(argv: list[str]) -> int:
    keep = None
    if argv[:1] == ["--keep"]:
        keep, argv = argv[1], argv[2:]
    started = time.monotonic()
    await prepare()
    sb = await enter(await prepare_image(), keep)
    if keep:
        say(f"sandbox {keep} is up: shuru exec {keep} ...; shuru stop {keep} when done")
        await sb.disconnect()
        return 0
    try:
        args = " ".join(map(shlex_quote, argv))
        # One inner vCPU (see tests/kvm), and boot time allowed for a nested guest's crawl.
        code = await run(sb, f"cd {GUEST_SRC} && SHURU_TEST_KVM=1 SHURU_KVM_TIER_CPUS=1 SHURU_BOOT_TIMEOUT=900 "
                             f"SHURU_RESUME_TIMEOUT=300 {GUEST_VENV}/bin/python -m pytest -q -p no:cacheprovider "
                             f"tests/kvm {args}", timeout=3600)
    finally:
        await sb.stop()
    say(f"tier finished in {time.monotonic() - started:.0f} s, exit {code}")
    return code


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
