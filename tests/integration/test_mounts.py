"""Host folders on real VMs: a read-only mount (the guest reads the host folder, its writes
land in a layer of its own, the host stays untouched, `mount_changes` says exactly what
changed and `apply` copies it out), host changes seen at once, symlinks that never lead out
of the folder, a `:rw` mount that writes to the host, a checkpoint that holds nothing of a
mount, and `shuru run --mount --diff`. Each SDK test runs on a restored sandbox (the default
start) and on a cold-booted one; one sandbox of each serves the module."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil

import pytest
import pytest_asyncio

from shuru import AsyncSandbox, GuestFileError
from shuru.mounts import Change

from .conftest import shuru

pytestmark = [pytest.mark.usefixtures("image")]
on_module_loop = pytest.mark.asyncio(loop_scope="module")

BIG = os.urandom(3 * 1024 * 1024 + 17)  # several FUSE reads, not a multiple of a page


def make_tree(root) -> None:
    (root / "proj" / "src" / "sub").mkdir(parents=True)
    (root / "proj" / "rw").mkdir()
    src = root / "proj" / "src"
    (src / "hello.txt").write_text("hello\n")
    (src / "sub" / "a.txt").write_text("a\n")
    (src / "sub" / "gone.txt").write_text("to be deleted\n")
    (src / "big.bin").write_bytes(BIG)
    (root / "secret").write_text("SECRET\n")
    (root / "outdir").mkdir()
    (root / "outdir" / "x").write_text("SECRET\n")
    (src / "out").symlink_to(root / "secret")
    (src / "rel").symlink_to("../../secret")
    (src / "dirlink").symlink_to(root / "outdir")
    (root / "proj" / "rw" / "existing.txt").write_text("host\n")


def snapshot(path) -> dict:
    """Every entry under `path` with its content (or link target)."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir",)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
    return out


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    root = tmp_path_factory.mktemp("mounts")
    make_tree(root)
    here = os.getcwd()
    os.chdir(root / "proj")  # :rw mounts must be inside the current directory
    yield root
    os.chdir(here)


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["restored", "cold"])
async def sb(request, host):
    cold = request.param == "cold"
    sandbox = await AsyncSandbox.start(mounts={"src": "/app", "rw": "/rw:rw"},
                                       allow_host_writes=True, cold=cold)
    assert sandbox.restored is not cold
    sandbox.host_before = snapshot(host / "proj" / "src")
    yield sandbox
    await sandbox.stop()


async def sh(sandbox, command: str) -> str:
    result = await sandbox.exec(command, timeout=120)
    assert result.exit_code == 0, (command, result.stdout, result.stderr)
    return result.stdout


@on_module_loop
async def test_guest_reads_the_host_folder(sb):
    assert await sh(sb, "cat /app/hello.txt /app/sub/a.txt") == "hello\na\n"
    assert (await sh(sb, "ls /app")).split() == ["big.bin", "dirlink", "hello.txt", "out",
                                                 "rel", "sub"]
    digest = (await sh(sb, "sha256sum /app/big.bin")).split()[0]
    assert digest == hashlib.sha256(BIG).hexdigest()
    assert [s.guest for s in sb.mounts] == ["/app", "/rw"]


@on_module_loop
async def test_writes_land_in_the_layer_and_are_listed(sb, host, tmp_path):
    await sh(sb, "echo more >> /app/hello.txt && echo new > /app/new.txt && "
                 "rm /app/sub/gone.txt && mkdir -p /app/made/deep && "
                 "printf 12345 > /app/made/deep/f && ln -s hello.txt /app/made/link")
    assert await sh(sb, "cat /app/hello.txt") == "hello\nmore\n"
    # the host folder is untouched
    assert snapshot(host / "proj" / "src") == sb.host_before
    changes = await sb.mount_changes("/app")
    assert list(changes) == [
        Change("hello.txt", "modified", "file", 11),
        Change("made", "added", "dir", 0),
        Change("made/deep", "added", "dir", 0),
        Change("made/deep/f", "added", "file", 5),
        Change("made/link", "added", "symlink", 9),
        Change("new.txt", "added", "file", 4),
        Change("sub/gone.txt", "deleted", "file", 0),
    ]
    assert "D sub/gone.txt" in str(changes) and "A new.txt  (4 bytes)" in str(changes)
    # the review step: copy them onto a copy of the folder, which then matches the guest
    copy = tmp_path / "copy"
    shutil.copytree(host / "proj" / "src", copy, symlinks=True)
    await changes.apply(copy)
    assert (copy / "hello.txt").read_text() == "hello\nmore\n"
    assert (copy / "new.txt").read_text() == "new\n"
    assert (copy / "made" / "deep" / "f").read_text() == "12345"
    assert os.readlink(copy / "made" / "link") == "hello.txt"
    assert not (copy / "sub" / "gone.txt").exists()
    assert snapshot(host / "proj" / "src") == sb.host_before


@on_module_loop
async def test_host_changes_show_in_the_guest(sb, host):
    src = host / "proj" / "src"
    name = f"from-host-{id(sb)}.txt"
    (src / name).write_text("fresh\n")
    (src / "sub" / "a.txt").write_text("a, longer now\n")
    try:
        assert await sh(sb, f"cat /app/{name}") == "fresh\n"
        assert await sh(sb, "cat /app/sub/a.txt") == "a, longer now\n"
        assert name in (await sh(sb, "ls /app")).split()
    finally:
        (src / name).unlink()
        (src / "sub" / "a.txt").write_text("a\n")


@on_module_loop
async def test_symlinks_do_not_lead_out_of_the_folder(sb, host):
    # The guest sees the links as links and resolves them in its own filesystem, where
    # the host's secret is not.
    assert (await sh(sb, "readlink /app/out")).strip() == str(host / "secret")
    result = await sb.exec("cat /app/out /app/rel /app/dirlink/x; ls /app/dirlink/", timeout=60)
    assert result.exit_code != 0
    assert "SECRET" not in result.stdout + result.stderr


@on_module_loop
async def test_agent_file_calls_under_a_mount_are_refused_not_hung(sb):
    with pytest.raises(GuestFileError, match="host folder mounted on /app") as e:
        await asyncio.wait_for(sb.files.read("/app/hello.txt"), 30)
    assert e.value.code == "EBUSY"


@on_module_loop
async def test_listing_a_parent_shows_the_mount_point_without_entering_it(sb):
    # The agent serves the mount: a stat of the mount point from the agent itself would be
    # a request that only the agent, busy listing, could answer. (Walks never enter it
    # either: tests/unit/test_guest_listing.py.)
    listed = await asyncio.wait_for(sb.files.list("/"), 60)
    assert {e.name: e.type for e in listed if e.name in ("app", "rw")} == \
        {"app": "dir", "rw": "dir"}


@on_module_loop
async def test_exec_in_a_directory_of_the_mount(sb):
    """The agent serves the mount, so it must not enter it itself: the process does."""
    result = await asyncio.wait_for(sb.exec("pwd && ls", cwd="/app/sub", timeout=60), 120)
    assert (result.exit_code, result.stdout) == (0, "/app/sub\na.txt\n")
    result = await asyncio.wait_for(sb.exec("pwd", cwd="/app/nowhere", timeout=60), 120)
    assert result.exit_code == 126 and "nowhere" in result.stderr


@on_module_loop
async def test_rw_mount_writes_to_the_host(sb, host):
    rw = host / "proj" / "rw"
    assert await sh(sb, "cat /rw/existing.txt") == "host\n"
    await sh(sb, "echo from guest > /rw/made.txt && mkdir /rw/d && mv /rw/made.txt /rw/d/ && "
                 "echo more >> /rw/existing.txt && chmod 4755 /rw/d/made.txt")
    try:
        assert (rw / "d" / "made.txt").read_text() == "from guest\n"
        assert (rw / "existing.txt").read_text() == "host\nmore\n"
        assert (rw / "d" / "made.txt").stat().st_mode & 0o7777 == 0o755  # no setuid on the host
        result = await sb.exec("ln -s /etc/passwd /rw/link", timeout=60)
        assert result.exit_code != 0 and not os.path.lexists(rw / "link")
        with pytest.raises(Exception, match=":rw"):
            await sb.mount_changes("/rw")
    finally:
        shutil.rmtree(rw / "d", ignore_errors=True)
        (rw / "existing.txt").write_text("host\n")


@pytest.mark.asyncio
async def test_a_checkpoint_holds_nothing_of_a_mount(host):
    name = f"mounts-test-{os.getpid()}"
    sandbox = await AsyncSandbox.start(mounts={"src": "/app"})
    try:
        await sh(sandbox, "echo layer > /app/layer.txt && echo disk > /root/disk.txt")
        await sandbox.checkpoint(name, overwrite=True)
        again = await AsyncSandbox.start(from_=name)
        try:
            assert await sh(again, "cat /root/disk.txt") == "disk\n"
            assert await sh(again, "ls -A /app 2>/dev/null; true") == ""
        finally:
            await again.stop()
    finally:
        await sandbox.stop()
        from shuru import checkpoints

        if (checkpoints.checkpoints_dir() / name).exists():
            checkpoints.delete(name)


def test_cli_mount_and_diff(host):
    result = shuru("run", "--mount", "src:/app", "--diff", "--", "sh", "-c",
                   "cat /app/hello.txt && echo x > /app/cli.txt && rm /app/sub/a.txt",
                   cwd=host / "proj")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout.decode() == "hello\n"
    assert "A cli.txt  (2 bytes)" in err and "D sub/a.txt" in err
    assert not (host / "proj" / "src" / "cli.txt").exists()
    assert (host / "proj" / "src" / "sub" / "a.txt").exists()


def test_cli_refuses_rw_without_the_flag(host):
    result = shuru("run", "--mount", "rw:/rw:rw", "--", "true", cwd=host / "proj")
    assert result.returncode != 0
    assert "--allow-host-writes" in result.stderr.decode()
