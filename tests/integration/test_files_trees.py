"""Trees, big commands and hostile files on a real VM (one sandbox for the module): a
5,000-entry tree goes in and comes back out (listings stream; 100,000 entries are covered by
the contract tests, too slow under TCG here), an exec of a megabyte of arguments runs, a 1 TiB
sparse guest file cannot fill the host's disk, an upload never sends what a host symlink
points at, and relative guest paths are relative to the working directory."""

import os

import pytest
import pytest_asyncio

from shuru import AsyncSandbox, ExecError, GuestFileError

pytestmark = [pytest.mark.usefixtures("image"), pytest.mark.asyncio(loop_scope="module")]
DIRS, PER_DIR = 50, 99  # with the directories: 5,000 entries


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    sandbox = await AsyncSandbox.start(memory=1024, workdir="/srv")
    yield sandbox
    await sandbox.stop()


async def test_a_five_thousand_entry_tree_goes_in_and_comes_back(sb, tmp_path):
    src = tmp_path / "src"
    for d in range(DIRS):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(PER_DIR):
            (src / f"d{d:02}" / f"f{i:02}").write_text(f"{d}/{i}\n")
    await sb.files.upload(src, "/data/tree")
    r = await sb.exec("find /data/tree -mindepth 1 | wc -l; cat /data/tree/d49/f98")
    assert r.stdout.split() == [str(DIRS * (PER_DIR + 1)), "49/98"]
    await sb.exec("mkdir /data/tree/flat && cd /data/tree/flat && seq 1 1000 | xargs touch")
    assert len(await sb.files.list("/data/tree/flat")) == 1000

    out = tmp_path / "out"
    await sb.files.download("/data/tree", out)
    assert sum(1 for _ in out.rglob("*")) == DIRS * (PER_DIR + 1) + 1 + 1000
    assert (out / "d49/f98").read_text() == "49/98\n"


async def test_an_exec_of_a_megabyte_of_arguments_runs(sb):
    args = [chr(ord("a") + i) * (64 * 1024) for i in range(16)]
    r = await sb.exec(["sh", "-c", 'echo $#; printf %s "$@" | wc -c', "sh", *args])
    assert r.stdout.split() == ["16", str(16 * 64 * 1024)]
    with pytest.raises(ExecError, match="limit of"):
        await sb.exec(["true", *["x" * (100 * 1024)] * 30])  # 3 MiB: past ARG_MAX (2 MiB)


async def test_a_sparse_terabyte_cannot_fill_the_host_disk(sb, tmp_path):
    await sb.exec("mkdir -p /data/sparse && truncate -s 1T /data/sparse/huge "
                  "&& echo small > /data/sparse/small")
    with pytest.raises(GuestFileError, match="max_size cap") as e:
        await sb.files.download("/data/sparse/huge", tmp_path / "huge")
    assert e.value.code == "EFBIG"
    assert not (tmp_path / "huge").exists()
    with pytest.raises(GuestFileError, match="max_size cap of 1048576 bytes"):
        await sb.files.download("/data/sparse", tmp_path / "tree", max_size=1 << 20)
    written = sum(p.stat().st_size for p in (tmp_path / "tree").rglob("*") if p.is_file())
    assert written <= len("small\n")


async def test_an_upload_never_sends_what_a_host_link_points_at(sb, tmp_path):
    (tmp_path / "secret.txt").write_text("TOP SECRET VALUE")
    (tmp_path / "secret-dir").mkdir()
    (tmp_path / "secret-dir/key").write_text("TOP SECRET KEY")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "real.txt").write_text("real")
    os.symlink(tmp_path / "secret.txt", tree / "to-secret")
    os.symlink("../secret-dir", tree / "to-dir")
    os.symlink("real.txt", tree / "inside")
    await sb.files.upload(tree, "/data/up")
    r = await sb.exec("readlink /data/up/to-secret /data/up/to-dir /data/up/inside; "
                      "cat /data/up/inside; echo; find /data/up -type f | wc -l; "
                      "test -e /data/up/to-secret || echo dangling")
    assert r.stdout.split() == [str(tmp_path / "secret.txt"), "../secret-dir", "real.txt",
                                "real", "1", "dangling"]
    r = await sb.exec("grep -rsI 'TOP SECRET' /data /root /tmp; echo $?")
    assert "TOP SECRET" not in r.stdout


async def test_relative_guest_paths_are_relative_to_the_working_directory(sb):
    await sb.files.write("notes/today.txt", "relative")
    r = await sb.exec("cat /srv/notes/today.txt")
    assert r.stdout == "relative"
    assert await sb.files.read_text("notes/today.txt") == "relative"
    assert [e.name for e in await sb.files.list("notes")] == ["today.txt"]
