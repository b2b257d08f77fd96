"""`exec` against a guest that never stops writing, on a real VM: the output is capped per
stream, the command is killed, and the host process's memory stays bounded (it used to keep
everything, so `exec("yes")` grew the host until it died). One sandbox for the module."""

import pytest
import pytest_asyncio

from shuru import AsyncSandbox, ExecOutputLimitError
from shuru.process import DEFAULT_MAX_OUTPUT

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]

MiB = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    sandbox = await AsyncSandbox.start(cpus=2, memory=1024)
    yield sandbox
    await sandbox.stop()


def _kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakGrowth:
    """How far this process's resident memory rose above where it started (Linux: the
    kernel's high-water mark, reset through clear_refs)."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.before = _kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth = _kib("VmHWM") - self.before


async def no_yes_left(sb) -> None:
    r = await sb.exec("pgrep -c -x yes || true")
    assert r.stdout.strip() == "0"


async def test_exec_yes_stops_at_the_default_cap_with_bounded_host_memory(sb):
    with PeakGrowth() as peak, pytest.raises(ExecOutputLimitError) as e:
        await sb.exec("yes", timeout=120)
    assert (e.value.stream, e.value.limit) == ("stdout", DEFAULT_MAX_OUTPUT)
    assert len(e.value.stdout) == DEFAULT_MAX_OUTPUT == 16 * MiB
    assert e.value.stdout[:6] == b"y\ny\ny\n" and e.value.stderr == b""
    # The kept 16 MiB, a copy of it, and a window or two in flight: nowhere near unbounded.
    assert peak.growth < 96 * MiB, f"the host grew by {peak.growth / MiB:.0f} MiB"
    await no_yes_left(sb)


async def test_exec_writing_many_times_the_cap_to_stderr(sb):
    with PeakGrowth() as peak, pytest.raises(ExecOutputLimitError) as e:
        await sb.exec("echo start; head -c 64M /dev/zero >&2; echo never", timeout=120,
                      max_output=4 * MiB)
    assert (e.value.stream, e.value.limit) == ("stderr", 4 * MiB)
    assert e.value.stderr == bytes(4 * MiB) and e.value.stdout == b"start\n"
    # Keeping all 64 MiB (as before) would grow the host by twice that.
    assert peak.growth < 48 * MiB, f"the host grew by {peak.growth / MiB:.0f} MiB"
    r = await sb.exec("echo ok")
    assert (r.stdout, r.exit_code) == ("ok\n", 0)

