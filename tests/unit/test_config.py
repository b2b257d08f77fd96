"""Config validation and the CLI > env > file > default merge."""

import json

import pytest

from shuru import config as cfg
from shuru.errors import ConfigError
from shuru.sandbox import resolve_config


def test_defaults():
    c = cfg.merge()
    assert (c.cpus, c.memory, c.disk_size, c.command, c.accel) == (2, 2048, 4096, ("/bin/sh",), "auto")


def test_later_layers_win_and_env_merges_by_key():
    c = cfg.merge({"cpus": 4, "env": {"A": "1", "B": "2"}}, {"cpus": 1, "env": {"B": "3"}})
    assert c.cpus == 1
    assert dict(c.env) == {"A": "1", "B": "3"}


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        cfg.validate({"cpus": "two", "memroy": 512, "accel": "fast", "workdir": "rel"},
                     source="shuru.json")
    text = str(e.value)
    assert len(e.value.problems) == 4
    assert "shuru.json" in text
    assert "cpus must be an integer" in text
    assert "'memroy'" in text and "did you mean 'memory'" in text
    assert "accel must be one of auto, kvm, tcg" in text
    assert "workdir must be an absolute guest path" in text


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="cpus must be an integer"):
        cfg.validate({"cpus": True})


def test_labels_name_the_flag():
    with pytest.raises(ConfigError, match="--disk-size must be between"):
        cfg.validate({"disk_size": 1}, label=lambda n: "--" + n.replace("_", "-"))


def test_command_string_runs_through_the_shell():
    assert cfg.validate({"command": "echo hi"})["command"] == ("/bin/sh", "-c", "echo hi")
    assert cfg.validate({"command": ["ls", "-l"]})["command"] == ("ls", "-l")


def test_env_pairs():
    assert cfg.parse_env_pairs(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ConfigError) as e:
        cfg.parse_env_pairs(["novalue", "=x"])
    assert len(e.value.problems) == 2


def test_yaml_file_with_relative_paths(tmp_path):
    (tmp_path / "shuru.yaml").write_text("cpus: 3\nkernel: boot/vmlinuz\nenv:\n  N: 5\n")
    values = cfg.load_file(tmp_path / "shuru.yaml")
    assert values["cpus"] == 3
    assert values["kernel"] == str(tmp_path / "boot/vmlinuz")
    assert values["env"] == {"N": "5"}


def test_bad_json_names_the_file(tmp_path):
    (tmp_path / "shuru.json").write_text("{cpus: 2")
    with pytest.raises(ConfigError, match="shuru.json is not valid JSON"):
        cfg.load_file(tmp_path / "shuru.json")


def test_non_mapping_file(tmp_path):
    (tmp_path / "shuru.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        cfg.load_file(tmp_path / "shuru.yaml")


def test_find_config_file(tmp_path):
    assert cfg.find_config_file(None, tmp_path) is None
    (tmp_path / "shuru.json").write_text("{}")
    assert cfg.find_config_file(None, tmp_path) == tmp_path / "shuru.json"
    (tmp_path / "shuru.yml").write_text("{}")
    with pytest.raises(ConfigError, match="both exist"):
        cfg.find_config_file(None, tmp_path)
    with pytest.raises(ConfigError, match="--config nope.json: no such file"):
        cfg.find_config_file("nope.json", tmp_path)


def test_resolution_order_flag_env_file_default(tmp_path):
    path = tmp_path / "shuru.json"
    path.write_text(json.dumps({"cpus": 3, "memory": 1024, "kernel": "/file/k"}))
    c = resolve_config({"cpus": 1}, path, environ={"SHURU_KERNEL": "/env/k"})
    assert c.cpus == 1  # flag beats file
    assert c.memory == 1024  # file beats default
    assert c.disk_size == 4096  # default
    assert c.kernel == "/env/k"  # env beats file
    c = resolve_config({"kernel": "/flag/k"}, path, environ={"SHURU_KERNEL": "/env/k"})
    assert c.kernel == "/flag/k"
