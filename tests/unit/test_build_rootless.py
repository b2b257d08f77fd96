"""`shuru init` without root: the decision whether the build can run as root of a user
namespace (pure), the exact fix it names when it cannot, and the unshare command line."""

from __future__ import annotations

import pytest

from shuru.image import build
from shuru.image.build import rootless_problem, subid_range, unshare_argv
from shuru.errors import HostError

OK = dict(user="ada", uid=1001, userns_clone=None, max_user_namespaces="63000\n",
          apparmor_restrict=None, have_newuidmap=True, have_unshare=True,
          subuid_text="bob:100000:65536\nada:165536:65536\n",
          subgid_text="1001:165536:65536\n")


def test_a_host_with_user_namespaces_and_subids_can_build():
    assert rootless_problem(**OK) is None
    assert rootless_problem(**{**OK, "userns_clone": "1\n"}) is None


@pytest.mark.parametrize("change, fix", [
    ({"userns_clone": "0\n"}, "sudo sysctl -w kernel.unprivileged_userns_clone=1"),
    ({"max_user_namespaces": "0"}, "sudo sysctl -w user.max_user_namespaces=15000"),
    ({"apparmor_restrict": "1\n"},
     "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    ({"have_newuidmap": False}, "sudo apt-get install uidmap"),
    ({"have_unshare": False}, "sudo apt-get install util-linux"),
    ({"subuid_text": "bob:100000:65536\n"},
     "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ada"),
    ({"subgid_text": ""}, "--add-subgids"),
    ({"subuid_text": "ada:165536:1000\n"}, "/etc/subuid gives ada no range of 65535+"),
])
def test_each_obstacle_names_exactly_what_to_run(change, fix):
    assert fix in rootless_problem(**{**OK, **change})


def test_subid_ranges_by_name_or_uid_first_one_wins():
    text = "# comment\nbroken\nada:x:1\nada:200000:65536\nada:300000:65536\n"
    assert subid_range(text, "ada", 1001) == (200000, 65536)
    assert subid_range("1001:5:70000", "ada", 1001) == (5, 70000)
    assert subid_range("ada:5:0", "ada", 1001) is None
    assert subid_range("", "ada", 1001) is None


def test_unshare_maps_the_user_to_root_and_its_subids_above():
    argv = unshare_argv((165536, 65536), (100000, 70000), ["python3", "-m", "shuru.cli", "init"])
    assert argv[:2] == ["unshare", "--map-root-user"]
    assert "--map-users=165536,1,65535" in argv and "--map-groups=100000,1,65535" in argv
    assert {"--mount", "--pid", "--fork", "--kill-child"} <= set(argv)
    assert argv[argv.index("--") + 1:] == ["python3", "-m", "shuru.cli", "init"]


def test_a_non_root_build_that_cannot_unshare_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(build.os, "geteuid", lambda: 1001)
    monkeypatch.setattr(build, "_host_userns_facts",
                        lambda: {**OK, "have_newuidmap": False})
    with pytest.raises(HostError) as e:
        build.build_image(tmp_path, mirror="http://127.0.0.1:9/debian")
    assert "apt-get install uidmap" in str(e.value) and "sudo shuru init" in str(e.value)


def test_a_non_root_build_reruns_init_in_a_user_namespace(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(build.os, "geteuid", lambda: 1001)
    monkeypatch.setattr(build, "_host_userns_facts", lambda: OK)

    class Done:
        returncode = 3

    monkeypatch.setattr(build.subprocess, "run", lambda argv, **kw: ran.append((argv, kw))
                        or Done())
    with pytest.raises(build.ImageError, match="user namespace failed"):
        build.build_image(tmp_path, arch="arm64", mirror="http://127.0.0.1:9/debian")
    argv, kw = ran[0]
    assert argv[0] == "unshare" and "--map-users=165536,1,65535" in argv
    assert argv[-3:] == ["init", "--arch", "arm64"]
    assert kw["env"]["SHURU_HOME"] == str(tmp_path)
    assert kw["env"]["SHURU_MIRROR"] == "http://127.0.0.1:9/debian"
