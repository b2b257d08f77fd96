"""Every operation of the backend contract, called on QEMU with the real guest image (the
same exerciser runs on the helper's process driver in tests/contract/test_helper.py)."""

import pytest

from shuru.backends.qemu.machine import QemuBackend
from shuru.image.store import shuru_home

from tests.backend_contract import exercise, spec_for

pytestmark = [pytest.mark.usefixtures("image")]


async def test_every_contract_operation_on_qemu(image, tmp_path):
    caps = await exercise(QemuBackend(shuru_home()), spec_for(image), tmp_path)
    assert (caps.fast_start, caps.pause, caps.checkpoint) == (True, True, True)
