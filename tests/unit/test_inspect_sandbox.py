"""The Inspect AI sandbox environment's checks that need no VM: which configs it takes and
how a bad one fails (before any sample starts a VM)."""

import pytest

from shuru import ConfigError
from shuru.integrations.inspect_sandbox import ShuruSandboxEnvironment, _config_path


def test_config_is_a_file_name_or_nothing():
    assert _config_path(None) is None
    assert str(_config_path("shuru.yaml")) == "shuru.yaml"
    with pytest.raises(ConfigError, match="config file name"):
        _config_path(object())


def test_config_files_are_shurus_own_names():
    # What Inspect probes for next to a task that says sandbox="shuru" without a file.
    assert ShuruSandboxEnvironment.config_files() == ["shuru.json", "shuru.yaml", "shuru.yml"]


async def test_task_init_fails_on_a_bad_config_file_naming_it(tmp_path):
    path = tmp_path / "shuru.yaml"
    path.write_text("cpus: lots\nmemroy: 512\n")
    with pytest.raises(ConfigError) as e:
        await ShuruSandboxEnvironment.task_init("t", str(path))
    assert str(path) in str(e.value) and "cpus" in str(e.value) and "memory" in str(e.value)
    with pytest.raises(ConfigError, match="no-such.yaml"):
        await ShuruSandboxEnvironment.task_init("t", str(tmp_path / "no-such.yaml"))
