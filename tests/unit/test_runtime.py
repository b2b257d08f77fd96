"""Runtime directories: locked while owned, swept when their owner is gone, refused when
their root is not private to the user."""

import os
import stat
import subprocess
import sys

import pytest

from shuru.errors import HostError
from shuru.backends.rundir import RunDir, disk_root, private_dir, root_problem, sweep


def test_owned_dir_survives_sweep_and_close_removes_it(tmp_path):
    rd = RunDir.create(tmp_path)
    assert sweep(tmp_path) == []
    assert rd.path.exists()
    rd.close()
    assert not rd.path.exists()


def test_dir_of_a_dead_owner_is_swept(tmp_path):
    # A child process creates a run dir and dies without cleaning up (as with SIGKILL).
    code = ("import sys, os; sys.path[:0] = %r; from shuru.backends.rundir import RunDir; "
            "from pathlib import Path; rd = RunDir.create(Path(%r)); print(rd.path); os._exit(0)"
            % (sys.path, str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    left = out.stdout.strip()
    assert os.path.isdir(left)
    assert [str(p) for p in sweep(tmp_path)] == [left]
    assert not os.path.exists(left)


# ---- the runtime root must be private to the user ------------------------------------------


def test_root_problem_names_each_unsafe_root(tmp_path):
    me = os.getuid()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert root_problem(private, os.lstat(private), me) is None
    why, fix = root_problem(private, os.lstat(private), me + 1)
    assert f"belongs to uid {me}, not to you (uid {me + 1})" in why and str(private) in fix
    for mode in (0o777, 0o750, 0o701):
        private.chmod(mode)
        why, fix = root_problem(private, os.lstat(private), me)
        assert f"mode is {mode:04o}" in why and f"chmod 700 {private}" in fix
    link = tmp_path / "link"
    link.symlink_to(private)
    assert "symbolic link" in root_problem(link, os.lstat(link), me)[0]
    file = tmp_path / "file"
    file.write_text("")
    assert "not a directory" in root_problem(file, os.lstat(file), me)[0]


def test_a_missing_root_is_made_private(tmp_path):
    root = tmp_path / "shuru-1000"
    rd = RunDir.create(root)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(rd.path).st_mode) == 0o700
    rd.close()


@pytest.mark.parametrize("kind", ["mode", "symlink", "owner"])
def test_an_unsafe_root_is_refused_and_left_alone(tmp_path, kind):
    root = tmp_path / "shuru-0"
    if kind == "mode":  # made first by someone else, open to all
        root.mkdir()
        root.chmod(0o777)
    elif kind == "symlink":  # pointing at a directory that is itself fine
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        root.symlink_to(target)
    else:
        root.mkdir(mode=0o700)
    with pytest.raises(HostError) as e:
        if kind == "owner":  # as if another user had made it (no second uid needed)
            private_dir(root, uid=os.getuid() + 1)
        else:
            RunDir.create(root)
    text = str(e.value)
    assert f"refusing to keep sandboxes in {root}" in text
    assert {"mode": "mode is 0777", "symlink": "symbolic link",
            "owner": "belongs to uid"}[kind] in text
    assert "`rm " in text and f" {root}`" in text and "SHURU_RUNTIME_DIR" in text  # the fix
    assert list(root.iterdir()) == []  # nothing was made in it


def test_disk_dir_lives_under_its_own_root_and_goes_on_close(tmp_path):
    rd = RunDir.create(tmp_path / "run", disk_root=tmp_path / "disks")
    assert rd.path.parent == tmp_path / "run" and rd.disk_dir.parent == tmp_path / "disks"
    assert stat.S_IMODE(os.lstat(tmp_path / "disks").st_mode) == 0o700
    assert sweep(tmp_path / "disks") == []  # locked while owned
    rd.close()
    assert not rd.path.exists() and not rd.disk_dir.exists()
    link = tmp_path / "disks-link"
    link.symlink_to(tmp_path / "disks")
    with pytest.raises(HostError, match="SHURU_DISK_DIR"):
        RunDir.create(tmp_path / "run", disk_root=link)
    assert list((tmp_path / "run").iterdir()) == []  # the half made is undone


def test_disk_root_is_on_the_data_dir_unless_configured(tmp_path, monkeypatch):
    monkeypatch.delenv("SHURU_DISK_DIR", raising=False)
    assert disk_root(tmp_path) == tmp_path / "run"
    monkeypatch.setenv("SHURU_DISK_DIR", str(tmp_path / "elsewhere"))
    assert disk_root(tmp_path) == tmp_path / "elsewhere"


def test_sweep_does_not_follow_a_planted_lock_link(tmp_path):
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    planted = root / "sb-planted"
    planted.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (planted / "lock").symlink_to(victim)
    sweep(root)
    assert victim.read_text() == "keep"


def test_doctor_names_an_unsafe_runtime_root_and_its_fix(tmp_path, monkeypatch):
    from shuru.cli.doctor import check_runtime_dir

    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o777)
    monkeypatch.setenv("SHURU_RUNTIME_DIR", str(root))
    check = check_runtime_dir()
    assert not check.ok and "mode is 0777" in check.detail and f"chmod 700 {root}" in check.fix
    root.chmod(0o700)
    assert check_runtime_dir().ok
