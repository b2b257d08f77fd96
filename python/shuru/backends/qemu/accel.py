"""Choosing the accelerator: KVM when it really runs ordinary guests, else TCG.

`/dev/kvm` existing proves little: on a PVM host (module `kvm_pvm`) it only runs guests built
for PVM and emulates stock kernels at a crawl, and on some hosts `-cpu host` aborts at once.
So `auto` rules out the known-bad cases from sysfs, then really starts QEMU with KVM for a
moment. The verdict is cached per host (kernel, QEMU binary) so only the first start pays.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from ...errors import HostError, ShuruWarning

_warned = False


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    cpu: str  # the -cpu model to use with it
    reason: str  # why this one (shown by `shuru doctor` and in the TCG warning)

    @property
    def qemu_arg(self) -> str:
        """The -accel argument. TCG runs its vCPUs on one host thread unless
        SHURU_TCG_THREAD=multi: QEMU 7.2's multi-threaded TCG occasionally ran a stale
        translation of kernel code that another vCPU had just patched (a jump label), and
        the guest crashed at boot. One thread makes code patching synchronous; the price is
        that a guest's CPUs share one host core."""
        if self.name != "tcg":
            return self.name
        thread = "multi" if os.environ.get("SHURU_TCG_THREAD") == "multi" else "single"
        return f"tcg,thread={thread}"


# cx16 off: QEMU 7.2's TCG corrupts state around a gs-prefixed CMPXCHG16B, which SLUB in
# Linux 6.12 uses on every allocation; about one boot in ten crashed with it on, none in 50
# without it. Kernels fall back to a lock-based path when the CPU lacks CX16.
TCG_CPU = "max,-cx16"
# IA32_ARCH_CAPABILITIES is refused by some nested hosts; dropping it costs nothing.
KVM_CPU = "host,-arch-capabilities"


# Emulating arm64 (an image for Apple silicon, booted on x86): the Debian cloud kernel reached
# its root mount in 3.1 s with cortex-a72, 4.5 s with `max,pauth-impdef=on` and 6.1 s with
# `max` (whose pointer authentication and SVE are costly to emulate). See bench/arm64.py.
AARCH64_TCG_CPU = "cortex-a72"


def foreign(guest_arch: str, host_arch: str, requested: str) -> Accel:
    """The accelerator for a guest of another architecture than the host's: only TCG can
    run it, so `--accel kvm` is an error naming the flag."""
    if requested == "kvm":
        raise HostError(f"--accel kvm: KVM cannot run an {guest_arch} guest on this "
                        f"{host_arch} host", hint="use --accel tcg or --accel auto")
    cpu = AARCH64_TCG_CPU if guest_arch == "arm64" else TCG_CPU
    return Accel("tcg", cpu, f"emulating an {guest_arch} guest on an {host_arch} host")


def kvm_obstacle() -> str | None:
    """Why KVM cannot be used here, judged without starting anything; None if it might."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user (add yourself to group kvm)"
    if os.path.isdir("/sys/module/kvm_pvm"):
        return ("/dev/kvm is a PVM host (module kvm_pvm), which runs stock guest kernels only "
                "by slow emulation")
    return None


def probe_kvm(qemu: str, timeout: float = 5.0) -> str | None:
    """Start QEMU with KVM, paused, and quit it. None if it came up, else the error text."""
    try:
        proc = subprocess.run(
            [qemu, "-accel", "kvm", "-cpu", KVM_CPU, "-M", "microvm", "-nodefaults",
             "-no-user-config", "-display", "none", "-S", "-qmp", "stdio"],
            input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
            capture_output=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"QEMU with KVM did not answer within {timeout} s"
    except OSError as e:
        return f"cannot run {qemu}: {e.strerror}"
    if proc.returncode != 0:
        return proc.stderr.decode(errors="replace").strip().splitlines()[-1:][0] if proc.stderr \
            else f"QEMU with KVM exited with status {proc.returncode}"
    return None


def _cache_key(qemu: str) -> str:
    st = os.stat(qemu)
    return f"{os.uname().release}|{os.path.realpath(qemu)}|{st.st_size}|{int(st.st_mtime)}"


def detect(qemu: str, cache_file: Path) -> Accel:
    """The accelerator `auto` picks, from the cache when it is for this host and QEMU."""
    key = _cache_key(qemu)
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key and cached["name"] in ("kvm", "tcg"):
            # The CPU model is this version's choice, not part of the host's verdict.
            cpu = KVM_CPU if cached["name"] == "kvm" else TCG_CPU
            return Accel(cached["name"], cpu, cached["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    obstacle = kvm_obstacle() or probe_kvm(qemu)
    if obstacle:
        accel = Accel("tcg", TCG_CPU, f"KVM is not usable: {obstacle}")
    else:
        accel = Accel("kvm", KVM_CPU, "KVM works")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **accel.__dict__}))
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only data dir only costs the probe next time
    return accel


def choose(requested: str, qemu: str, cache_file: Path) -> Accel:
    """Resolve --accel. `kvm` fails clearly when KVM cannot work; `auto` falls back to TCG
    with one warning per process."""
    global _warned
    if requested == "tcg":
        return Accel("tcg", TCG_CPU, "requested with --accel tcg")
    if requested == "kvm":
        obstacle = kvm_obstacle() or probe_kvm(qemu)
        if obstacle:
            raise HostError(f"--accel kvm: {obstacle}",
                            hint="use --accel tcg (software emulation) or --accel auto")
        return Accel("kvm", KVM_CPU, "requested with --accel kvm")
    accel = detect(qemu, cache_file)
    if accel.name == "tcg" and not _warned:
        _warned = True
        warnings.warn(f"{accel.reason}; using TCG software emulation, which is much slower",
                      ShuruWarning, stacklevel=2)
    return accel
