"""`shuru checkpoint create` through the real console script: options after NAME are options
(they used to become the guest command), and the machine flags reach the VM."""

import shutil
import uuid

import pytest

from shuru import checkpoints as ck

from .conftest import shuru

pytestmark = [pytest.mark.usefixtures("image")]


@pytest.fixture
def name():
    made = f"flags-{uuid.uuid4().hex[:8]}"
    yield made
    shutil.rmtree(ck.checkpoints_dir() / made, ignore_errors=True)


def test_options_after_the_name_and_the_machine_flags(name):
    r = shuru("checkpoint", "create", name, "--cpus", "1", "--disk-size", "5120",
              "-e", "MARK=flags", "--", "sh", "-c",
              'test "$(nproc)" = 1 && test "$MARK" = flags && echo ok > /root/mark')
    assert r.returncode == 0, r.stderr.decode()
    cp = ck.load(name)
    assert cp.virtual_size_mb == 5120
