"""Host folder mounts without a VM: the specs and their checks (which `:rw` mounts are
refused), and the host's folder server answering the guest's ops on a real directory
(symlinks never followed, no `..`, writes only on a `:rw` mount)."""

from __future__ import annotations

import os
import stat

import pytest

from shuru import AsyncSandbox, ConfigError
from shuru import config as cfg
from shuru.mounts import (FolderServer, MountSpec, answer, check_host, from_config,
                          parse_flags, parse_spec, write_problem)

FLAG = "--allow-host-writes"


# ---- specs ----------------------------------------------------------------------------------


def test_spec_forms():
    assert parse_spec("src:/app", "/work") == MountSpec("/work/src", "/app", "ro")
    assert parse_spec("/abs/dir:/app/:rw", "/work") == MountSpec("/abs/dir", "/app", "rw")
    assert parse_spec("./a/../b:/x//y:ro", "/w") == MountSpec("/w/b", "/x/y", "ro")
    assert [str(s) for s in from_config({"src": "/app", "lib": "/lib2:rw"}, "/w")] == [
        "/w/src:/app:ro", "/w/lib:/lib2:rw"]


@pytest.mark.parametrize("text, words", [
    ("src", "HOST:GUEST"),
    ("src:/app:rx", "mode 'rx'"),
    ("src:app", "must be absolute"),
    ("src:/", "cannot mount over /"),
    ("src:/proc/x", "cannot mount over /proc"),
    (":/app", "host path is empty"),
    ("a:b:/app:ro", "HOST:GUEST"),
])
def test_bad_specs_name_the_flag(text, words):
    with pytest.raises(ConfigError) as e:
        parse_flags([text])
    assert f"--mount {text}" in str(e.value) and words in str(e.value)


def test_config_field_names_the_entry():
    with pytest.raises(ConfigError, match=r"mounts: 'src:relative'.*must be absolute"):
        cfg.validate({"mounts": ["src:relative"]})
    with pytest.raises(ConfigError, match="overlap"):
        cfg.validate({"mounts": {"a": "/app", "b": "/app/sub"}})
    with pytest.raises(ConfigError, match="allow_host_writes must be true or false"):
        cfg.validate({"allow_host_writes": "yes"})
    assert cfg.validate({"mounts": {"/x": "/app"}})["mounts"] == ("/x:/app:ro",)


# ---- which :rw mounts are refused (pure) ----------------------------------------------------


def test_rw_needs_the_flag():
    problem = write_problem("/home/u/proj/src", cwd="/home/u/proj", home="/home/u", allowed=False)
    assert FLAG in problem


@pytest.mark.parametrize("host, words", [
    ("/", "cannot be mounted :rw"),
    ("/home/u", "home directory"),
    ("/home/u/other", "outside the current directory"),
    ("/home/u/projects", "outside the current directory"),  # a sibling sharing a prefix
    ("/etc", "outside the current directory"),
])
def test_rw_refused_paths_name_the_flag(host, words):
    problem = write_problem(host, cwd="/home/u/proj", home="/home/u", allowed=True)
    assert problem is not None and words in problem and FLAG in problem


def test_rw_allowed_inside_the_current_directory():
    for host in ("/home/u/proj", "/home/u/proj/src", "/home/u/proj/a/b"):
        assert write_problem(host, cwd="/home/u/proj", home="/home/u", allowed=True) is None
    # the current directory being $HOME does not make $HOME itself writable
    assert "home directory" in write_problem("/home/u", cwd="/home/u", home="/home/u",
                                             allowed=True)


def test_check_host_resolves_and_refuses(tmp_path):
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "proj" / "link").symlink_to(tmp_path / "out")  # a link out of the cwd
    cwd = str(tmp_path / "proj")
    ok = check_host([parse_spec("src:/app:rw", cwd)], allow_host_writes=True, cwd=cwd,
                    home=str(tmp_path))
    assert ok[0].host == os.path.realpath(tmp_path / "proj" / "src")
    with pytest.raises(ConfigError) as e:
        check_host([parse_spec("link:/app:rw", cwd), parse_spec("missing:/b", cwd)],
                   allow_host_writes=True, cwd=cwd, home=str(tmp_path))
    assert len(e.value.problems) == 2
    assert "outside the current directory" in e.value.problems[0]
    assert "not a directory" in e.value.problems[1]


async def test_start_refuses_before_booting(tmp_path, monkeypatch):
    """No VM is started for a refused mount: the error comes from the checks."""
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=FLAG):
        await AsyncSandbox.start(mounts={"src": "/app:rw"})
    with pytest.raises(ConfigError, match="not a directory"):
        await AsyncSandbox.start(mounts={"nope": "/app"})


# ---- the folder server ----------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_text("hello\n")
    (root / "sub" / "a.txt").write_text("a")
    (tmp_path / "secret").write_text("SECRET")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "x").write_text("SECRET")
    (root / "out").symlink_to(tmp_path / "secret")
    (root / "rel").symlink_to("../secret")
    (root / "dirlink").symlink_to(tmp_path / "outdir")
    return root


def op(server, **msg):
    return answer(server, msg)


def test_reads_and_lists(tree):
    server = FolderServer(str(tree))
    try:
        attr = op(server, op="lookup", path="hello.txt")["value"]
        assert stat.S_ISREG(attr[1]) and attr[3] == 6
        fh = op(server, op="open", path="hello.txt")["value"]
        assert op(server, op="read", fh=fh, off=1, size=100)["value"] == b"ello\n"
        assert op(server, op="release", fh=fh) == {"value": None}
        dh = op(server, op="opendir", path="")["value"]
        names = [e[0] for e in op(server, op="readdir", fh=dh, off=0)["value"]]
        assert names == ["dirlink", "hello.txt", "out", "rel", "sub"]
        assert op(server, op="readdir", fh=dh, off=5)["value"] == []
        assert op(server, op="readlink", path="out")["value"] == os.fsencode(
            tree.parent / "secret")
    finally:
        server.close()


def test_symlinks_never_followed(tree):
    server = FolderServer(str(tree))
    try:
        # the link itself is described, not what it points to
        assert stat.S_ISLNK(op(server, op="lookup", path="out")["value"][1])
        assert op(server, op="open", path="out") == {"err": "ELOOP"}
        assert op(server, op="open", path="rel") == {"err": "ELOOP"}
        # a link to a directory outside is not a way through
        assert op(server, op="lookup", path="dirlink/x") == {"err": "ENOTDIR"}
        assert op(server, op="open", path="dirlink/x") == {"err": "ENOTDIR"}
        assert op(server, op="opendir", path="dirlink") == {"err": "ENOTDIR"}
        for bad in ("..", "../secret", "sub/../../secret", "/etc/passwd", "sub//a.txt", "."):
            assert op(server, op="lookup", path=bad) == {"err": "EINVAL"}, bad
        assert op(server, op="read", fh=999, off=0, size=10) == {"err": "EBADF"}
    finally:
        server.close()


def test_read_only_server_refuses_writes(tree):
    server = FolderServer(str(tree))
    try:
        for msg in ({"op": "create", "path": "n", "flags": 1, "mode": 0o644},
                    {"op": "unlink", "path": "hello.txt"},
                    {"op": "mkdir", "path": "d", "mode": 0o755},
                    {"op": "open", "path": "hello.txt", "flags": 2}):
            assert answer(server, msg) == {"err": "EROFS"}, msg
        assert (tree / "hello.txt").read_text() == "hello\n"
        assert sorted(os.listdir(tree)) == ["dirlink", "hello.txt", "out", "rel", "sub"]
    finally:
        server.close()


def test_writable_server(tree):
    server = FolderServer(str(tree), writable=True)
    try:
        fh, attr = op(server, op="create", path="sub/new", flags=0o1 | 0o200,
                      mode=0o6755)["value"]
        assert op(server, op="write", fh=fh, off=0, d=b"data") == {"value": 4}
        op(server, op="release", fh=fh)
        new = tree / "sub" / "new"
        assert new.read_bytes() == b"data"
        assert stat.S_IMODE(new.stat().st_mode) & 0o6000 == 0  # never setuid on the host
        assert op(server, op="setattr", path="sub/new", mode=0o4700, size=2)["value"][3] == 2
        assert stat.S_IMODE(new.stat().st_mode) == 0o700 and new.read_bytes() == b"da"
        assert op(server, op="rename", path="sub/new", dest="moved")["value"] is None
        assert (tree / "moved").exists() and not new.exists()
        assert op(server, op="mkdir", path="d", mode=0o755)["value"]
        assert op(server, op="rmdir", path="d") == {"value": None}
        # links are never written through or replaced by what they point to
        assert op(server, op="setattr", path="out", mode=0o777) == {"err": "ELOOP"}
        assert op(server, op="open", path="out", flags=1) == {"err": "ELOOP"}
        assert op(server, op="create", path="dirlink/y", flags=1, mode=0o644) == {
            "err": "ENOTDIR"}
        assert op(server, op="create", path="out", flags=1 | 0o200, mode=0o644) == {
            "err": "EEXIST"}
        assert op(server, op="rename", path="moved", dest="../escape") == {"err": "EINVAL"}
        assert (tree.parent / "secret").read_text() == "SECRET"
        assert not (tree.parent / "outdir" / "y").exists()
        assert op(server, op="unlink", path="out") == {"value": None}  # the link, not its target
        assert (tree.parent / "secret").exists()
    finally:
        server.close()


def test_handles_are_bounded(tree, monkeypatch):
    import shuru.mounts as mounts

    monkeypatch.setattr(mounts, "MAX_HANDLES", 3)
    server = FolderServer(str(tree))
    try:
        for _ in range(3):
            assert "value" in op(server, op="open", path="hello.txt")
        assert op(server, op="open", path="hello.txt") == {"err": "EMFILE"}
    finally:
        server.close()


def test_bad_fields_are_einval(tree):
    server = FolderServer(str(tree))
    try:
        assert op(server, op="lookup", path=5) == {"err": "EINVAL"}
        assert op(server, op="lookup", path="a\0b") == {"err": "EINVAL"}
        assert op(server, op="nope") == {"err": "ENOSYS"}
    finally:
        server.close()
