"""The host side of the trust boundary, on real VMs: a runtime root that another local user
could control is refused before any VM starts; a sandbox's disk overlay lives on disk under
the data dir (not in the runtime dir, usually a tmpfs) and goes with the sandbox; escape
sequences a guest writes to its console reach the user's terminal neutralised."""

import os
import shutil
import subprocess

import pytest

from shuru import AsyncSandbox
from shuru.launch import states
from shuru.image.store import current_image, shuru_home

from .conftest import SHURU, shuru

pytestmark = [pytest.mark.usefixtures("image")]


def image_states() -> set:
    return {st.path for st in states.list_layer(states.Layer.of_image(current_image()))}


@pytest.mark.parametrize("kind", ["owner", "mode", "symlink"])
def test_a_runtime_root_another_user_could_control_is_refused(tmp_path, kind):
    # The default root, /tmp/shuru-<uid> (XDG_RUNTIME_DIR unset), made before shuru by
    # someone else: under a TMPDIR of the test's own, so the real one is never touched.
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    root = tmpdir / f"shuru-{os.getuid()}"
    if kind == "owner":
        root.mkdir(mode=0o700)
        os.chown(root, 65534, 65534)  # nobody's, as if another user had made it
    elif kind == "mode":
        root.mkdir()
        root.chmod(0o777)  # ours, but open to everyone
    else:
        target = tmp_path / "target"  # a private directory of ours, reached by a link
        target.mkdir(mode=0o700)
        root.symlink_to(target)
    runs = tmp_path / "qemu-runs"
    qemu = tmp_path / "qemu"  # records every QEMU start but the version query
    qemu.write_text(f'#!/bin/sh\n[ "$1" = --version ] || echo "$@" >> {runs}\n'
                    f'exec {shutil.which("qemu-system-x86_64")} "$@"\n')
    qemu.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SHURU_RUNTIME_DIR", "XDG_RUNTIME_DIR")}
    env.update(TMPDIR=str(tmpdir), SHURU_QEMU=str(qemu))
    before = image_states()
    r = subprocess.run([SHURU, "run", "--accel", "tcg", "--", "true"], env=env,
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 125, err
    assert f"refusing to keep sandboxes in {root}: " in err
    assert "warning" not in err  # refused before anything else was tried
    assert {"owner": "belongs to uid 65534", "mode": "mode is 0777",
            "symlink": "symbolic link"}[kind] in err
    assert f"`rm -rf {root}`" in err or f"`rm {root}`" in err
    assert "SHURU_RUNTIME_DIR" in err
    assert not runs.exists()  # no VM was started
    assert list(root.iterdir()) == []  # nothing was put where the other user can reach
    assert image_states() == before  # and a host problem costs no saved state


async def test_the_overlay_lives_on_disk_under_the_data_dir_and_goes_with_the_sandbox(
        runtime_dir):
    sb = await AsyncSandbox.start()
    try:
        disk = sb._machine.layer
        assert disk.is_file() and disk.parent.parent == shuru_home() / "run"
        assert runtime_dir not in disk.parents
        before = disk.stat().st_blocks * 512
        await sb.exec("head -c 20000000 /dev/urandom > /root/blob && sync")
        assert disk.stat().st_blocks * 512 >= before + 20_000_000  # the guest writes land here
    finally:
        await sb.stop()
    assert not disk.exists() and not disk.parent.exists()
    assert list(runtime_dir.iterdir()) == []


def test_guest_escape_sequences_on_the_console_are_neutralised(runtime_dir):
    # OSC 52 sets the clipboard of the terminal that prints it. tcdrain: the bytes have left
    # the guest's serial port before the command ends.
    script = ("import os, termios; fd = os.open('/dev/console', os.O_WRONLY | os.O_NOCTTY); "
              "os.write(fd, b'before\\x1b]52;c;cm0gLXJmIH4K\\x07after\\n'); termios.tcdrain(fd)")
    r = shuru("run", "--console", "--", "python3", "-c", script)
    assert r.returncode == 0, r.stderr.decode()
    assert b"before\\x1b]52;c;cm0gLXJmIH4K\\x07after" in r.stderr
    assert b"\x1b" not in r.stderr and b"\x07" not in r.stderr
