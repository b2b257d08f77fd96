"""`shuru run` end to end: real VMs booted from the installed image."""

import json
import os
import select
import signal
import subprocess

import pytest

from shuru.image.store import shuru_home

from .conftest import SHURU, shuru

pytestmark = pytest.mark.usefixtures("image")


def test_os_release_says_debian(runtime_dir):
    r = shuru("run", "--", "cat", "/etc/os-release")
    assert r.returncode == 0, r.stderr.decode()
    assert b"Debian GNU/Linux" in r.stdout
    assert b'VERSION_CODENAME=trixie' in r.stdout
    assert list(runtime_dir.iterdir()) == []  # nothing left behind after a run


def test_exit_codes_and_command_not_found(runtime_dir):
    r = shuru("run", "--", "sh", "-c", "echo out; echo err >&2; exit 42")
    assert (r.returncode, r.stdout, r.stderr.splitlines()[-1]) == (42, b"out\n", b"err")
    r = shuru("run", "--", "no-such-program", "arg")
    assert r.returncode == 127
    assert b"no-such-program: command not found" in r.stderr
    assert b"Traceback" not in r.stderr


def test_stdin_is_piped_in(runtime_dir):
    r = shuru("run", "--", "sh", "-c", "tr a-z A-Z; echo; hostname", input=b"hello")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"HELLO\nshuru\n"


def test_root_disk_is_ephemeral(runtime_dir):
    r = shuru("run", "--", "sh", "-c", "echo x > /root/marker && sync && cat /root/marker")
    assert r.returncode == 0 and r.stdout == b"x\n", r.stderr.decode()
    r = shuru("run", "--", "test", "-e", "/root/marker")
    assert r.returncode == 1


def test_machine_size_flags_and_config_file(runtime_dir, tmp_path):
    (tmp_path / "shuru.yaml").write_text(
        "cpus: 1\nmemory: 1024\ndisk_size: 6144\nenv:\n  FROM_FILE: yes-file\n"
        "workdir: /tmp\ncommand: [sh, -c, 'nproc; grep MemTotal /proc/meminfo; "
        "df -m / | tail -1; echo $FROM_FILE $FROM_FLAG; pwd']\n")
    r = shuru("run", "--cpus", "3", "-e", "FROM_FLAG=yes-flag", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "3"  # the flag beat the file's cpus: 1
    mem_kib = int(lines[1].split()[1])
    assert 900_000 < mem_kib <= 1024 * 1024  # the file's memory: 1024
    disk_mib = int(lines[2].split()[1])
    assert 5500 < disk_mib <= 6144  # filesystem grown to the file's disk_size
    assert lines[3] == "yes-file yes-flag"
    assert lines[4] == "/tmp"


def test_bad_config_lists_every_problem(tmp_path):
    (tmp_path / "shuru.json").write_text(json.dumps({"cpus": "many", "memroy": 1, "accel": "x"}))
    r = shuru("run", "--", "true", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2
    assert "cpus must be an integer" in err and "'memroy'" in err and "accel must be one of" in err
    assert "Traceback" not in err


def test_bad_flag_names_the_flag(tmp_path):
    r = shuru("run", "--disk-size", "1", "--", "true", cwd=tmp_path)
    assert r.returncode == 2
    assert "--disk-size must be between" in r.stderr.decode()


def test_missing_image_says_how_to_build_it(tmp_path):
    r = shuru("run", "--", "true", env={"SHURU_HOME": str(tmp_path / "empty")}, cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 125
    assert "shuru init" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err


def test_missing_qemu_is_named(tmp_path, runtime_dir):
    r = shuru("run", "--", "true", env={"PATH": str(tmp_path)}, cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 125
    assert "qemu-system-x86_64 is not installed" in err and "apt-get install" in err


def test_kernel_that_does_not_boot_shows_console_tail(tmp_path, runtime_dir):
    bad_initrd = tmp_path / "initrd.img"
    bad_initrd.write_bytes(os.urandom(4096))
    r = shuru("run", "--initrd", str(bad_initrd), "--", "true", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 125
    assert "console (last lines)" in err
    assert "Kernel panic" in err
    assert "Traceback" not in err
    assert list(runtime_dir.iterdir()) == []


def test_no_qemu_survives_sigkill_of_the_cli(runtime_dir):
    cli = subprocess.Popen([SHURU, "run", "--", "sh", "-c", "echo up; sleep 1000"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    assert cli.stdout.readline() == b"up\n"  # the VM is up and running our command
    qemu = _children_named(cli.pid, "qemu-system")
    assert len(qemu) == 1
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    _wait_gone(qemu[0], timeout=30)
    # Its run dirs are left (the owner could not clean up), and the next start sweeps them:
    # the one in the runtime dir and the one with its disk overlay under the data dir.
    assert len(list(runtime_dir.iterdir())) == 1
    disks = [d for d in (shuru_home() / "run").iterdir() if (d / "disk.qcow2").exists()]
    assert disks
    r = shuru("run", "--", "true")
    assert r.returncode == 0
    assert list(runtime_dir.iterdir()) == []
    assert not any(d.exists() for d in disks)


def _children_named(ppid: int, name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")[0].decode()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == ppid and name in os.path.basename(cmd):
            found.append(int(entry))
    return found


def _wait_gone(pid: int, timeout: float) -> None:
    """Block until `pid` exits: a pidfd becomes readable then (works for non-children)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"qemu {pid} outlived its owner by {timeout} s"
    finally:
        os.close(fd)
