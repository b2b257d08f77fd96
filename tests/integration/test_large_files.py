"""A 1 GiB file goes into the guest and back out, streamed: neither the host process nor the
guest agent holds it in memory (both peaks are checked)."""

import asyncio
import hashlib
import os
import resource

import pytest

from shuru import AsyncSandbox

pytestmark = pytest.mark.usefixtures("image")
GIB = 1024 * 1024 * 1024


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _agent_peak_kib(status: str) -> int:
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


async def test_one_gib_both_ways_in_constant_memory(tmp_path):
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:  # 1 GiB of varied, not just zero, content
        block = os.urandom(1024 * 1024)
        for i in range(1024):
            f.write(block[i:] + block[:i])
    want = await asyncio.to_thread(_sha256, src)
    host_peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB

    async with await AsyncSandbox.start(memory=1024, disk_size=4096) as sb:
        await sb.files.upload(src, "/data/big.bin")
        r = await sb.exec("sha256sum /data/big.bin; stat -c %s /data/big.bin", timeout=300)
        digest, size = r.stdout.split()[0], int(r.stdout.split()[-1])
        assert (digest, size) == (want, GIB)
        back = tmp_path / "back.bin"
        await sb.files.download("/data/big.bin", back)
        agent_status = await sb.files.read_text("/proc/1/status")

    assert back.stat().st_size == GIB
    assert await asyncio.to_thread(_sha256, back) == want
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - host_peak_before) / 1024
    assert growth_mib < 256, f"host peak memory grew by {growth_mib:.0f} MiB"
    agent_mib = _agent_peak_kib(agent_status) / 1024
    assert agent_mib < 128, f"guest agent peaked at {agent_mib:.0f} MiB"
