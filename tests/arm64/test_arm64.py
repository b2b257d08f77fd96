"""The arm64 guest image (the one Virtualization.framework boots on Apple silicon), built on
this x86 host by `shuru init --arch arm64` and booted through the normal QEMU backend with
qemu-system-aarch64 (TCG, `-M virt`): the agent handshake, exec, files, and a checkpoint
with a fast-start restore from it. One sandbox is shared by the module's tests (an emulated
arm64 boot is the expensive part); the checkpoint test comes last because it stops it."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from shuru import AsyncSandbox
from shuru import checkpoints as ck
from shuru.image.store import image_arch

pytestmark = [pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def arm64_image():
    from shuru.image.build import build_image

    image = build_image(arch="arm64")
    assert image_arch(image) == "arm64"
    return image


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb(arm64_image):
    sandbox = await AsyncSandbox.start(arch="arm64", cpus=1, memory=1024, cold=True)
    yield sandbox
    await sandbox.stop()


async def test_the_image_is_arm64_with_a_raw_kernel(arm64_image):
    m = arm64_image.manifest
    assert m["arch"] == "arm64" and m["kernel_package"].endswith("-arm64")
    # an uncompressed arm64 `Image`: "ARM\x64" at offset 56 (VZ boots nothing else)
    assert arm64_image.kernel.read_bytes()[56:60] == b"ARM\x64"


async def test_handshake_and_exec_run_on_an_aarch64_kernel(sb):
    r = await sb.exec("uname -m; cat /proc/cmdline; echo $((6 * 7)); exit 3")
    machine, cmdline, answer = r.stdout.splitlines()
    assert machine == "aarch64" and r.exit_code == 3 and answer == "42"
    assert "console=ttyAMA0" in cmdline
    r = await sb.exec("cat | tr a-z A-Z", stdin="arm")
    assert r.stdout == "ARM"
    r = await sb.exec("python3 -c 'import platform; print(platform.machine())'")
    assert r.stdout.strip() == "aarch64"


async def test_files(sb):
    await sb.files.write("/tmp/arm/hello.txt", b"hello from x86\n")
    assert await sb.files.read("/tmp/arm/hello.txt") == b"hello from x86\n"
    names = [f.name for f in await sb.files.list("/tmp/arm")]
    assert names == ["hello.txt"]
    r = await sb.exec("wc -c < /tmp/arm/hello.txt")
    assert r.stdout.strip() == "15"


async def test_checkpoint_and_start_from_it(sb):
    """Last: checkpointing stops the module's sandbox."""
    name = f"arm64-{uuid.uuid4().hex[:8]}"
    await sb.exec("echo kept > /root/mark")
    cp = await sb.checkpoint(name)
    try:
        assert image_arch(ck.base_image(cp)) == "arm64"
        # no `arch` given: the checkpoint's image decides it
        child = await AsyncSandbox.start(from_=name, cpus=1, memory=1024)
        try:
            r = await child.exec("cat /root/mark; uname -m")
            assert r.stdout.split() == ["kept", "aarch64"]
            # the first start saved a machine state (boot + save) and restored from it
            assert child.restored
        finally:
            await child.stop()
        again = await AsyncSandbox.start(from_=name, cpus=1, memory=1024)
        try:
            assert again.restored
            r = await again.exec("cat /root/mark; head -c 16 /dev/urandom | od -An -tx1")
            assert r.stdout.split()[0] == "kept"
        finally:
            await again.stop()
    finally:
        ck.delete(name)
