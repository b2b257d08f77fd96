"""Files and watches through the real agent (as a host subprocess): the guest filesystem is
the host's, under tmp_path."""

import asyncio
import hashlib
import os

import pytest

from shuru.errors import (GuestFileError, GuestFileNotFoundError, GuestPermissionError,
                          ShuruWarning)
from shuru.files import Files, start_watch


@pytest.fixture
def files(agent):
    return Files(lambda: agent.channel)


async def test_write_read_round_trip(files, tmp_path):
    p = str(tmp_path / "a/b/c.txt")
    assert await files.write(p, "héllo") == 6
    assert await files.read_text(p) == "héllo"
    assert (tmp_path / "a/b/c.txt").read_text() == "héllo"
    await files.write(p, b" more", append=True)
    assert await files.read(p) == "héllo more".encode()


async def test_large_file_both_ways_streamed(files, tmp_path):
    src = tmp_path / "big.src"
    with open(src, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1024 * 1024))
    want = hashlib.sha256(src.read_bytes()).hexdigest()
    with open(src, "rb") as f:
        assert await files.write(str(tmp_path / "big.guest"), f) == 24 * 1024 * 1024
    h = hashlib.sha256()
    async for chunk in files.iter_read(str(tmp_path / "big.guest")):
        assert len(chunk) <= 64 * 1024
        h.update(chunk)
    assert h.hexdigest() == want


async def test_write_from_async_iterator_and_mode(files, tmp_path):
    async def gen():
        for i in range(3):
            yield f"line {i}\n"
    p = str(tmp_path / "script.sh")
    await files.write(p, gen(), mode=0o750)
    assert (tmp_path / "script.sh").read_text() == "line 0\nline 1\nline 2\n"
    assert (await files.stat(p)).mode == 0o750


async def test_metadata_ops(files, tmp_path):
    d = str(tmp_path / "d")
    await files.mkdir(d + "/x/y")
    await files.write(d + "/f", b"12345")
    names = [(e.name, e.type, e.size) for e in await files.list(d)]
    assert names == [("f", "file", 5), ("x", "dir", names[1][2])]
    assert await files.exists(d + "/f") and not await files.exists(d + "/nope")
    await files.rename(d + "/f", d + "/g")
    await files.copy(d + "/g", d + "/h")
    await files.copy(d + "/x", d + "/x2")
    assert (await files.stat(d + "/h")).size == 5
    assert await files.exists(d + "/x2/y")
    await files.chmod(d + "/h", 0o600)
    assert (await files.stat(d + "/h")).mode == 0o600
    await files.remove(d + "/x")
    assert not await files.exists(d + "/x")


async def test_errors_are_typed_and_keep_the_guest_message(files, tmp_path):
    with pytest.raises(GuestFileNotFoundError) as e:
        await files.read(str(tmp_path / "missing"))
    assert e.value.path == str(tmp_path / "missing") and e.value.code == "ENOENT"
    with pytest.raises(GuestFileError) as e:
        await files.read(str(tmp_path))
    assert e.value.code == "EISDIR"
    with pytest.raises(GuestFileError, match="UTF-8"):
        await files.read(b"/bad\xff")
    with pytest.raises(GuestFileNotFoundError):
        await files.list(str(tmp_path / "nope"))


async def test_permission_denied_is_typed(files):
    # Even root may not write a read-only sysctl: the guest's EACCES comes back typed.
    with pytest.raises(GuestPermissionError) as e:
        await files.write("/proc/sys/kernel/ostype", b"x")
    assert e.value.code == "EACCES" and e.value.path == "/proc/sys/kernel/ostype"


async def test_upload_and_download_trees(files, tmp_path):
    src = tmp_path / "src"
    (src / "sub/deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "sub/deeper/x.bin").write_bytes(os.urandom(200_000))
    await files.upload(src, str(tmp_path / "guest"))
    out = tmp_path / "out"
    await files.download(str(tmp_path / "guest"), out)
    assert (out / "top.txt").read_text() == "top"
    assert (out / "sub/deeper/x.bin").read_bytes() == (src / "sub/deeper/x.bin").read_bytes()


async def test_watch_sees_creates_in_new_subdirs_modify_rename_delete(agent, tmp_path):
    events = []
    changed = asyncio.Event()

    def on_event(e):
        events.append(e)
        changed.set()

    w = await start_watch(agent.channel, str(tmp_path), on_event)
    files = Files(lambda: agent.channel)

    async def until(pred):
        while not pred():
            changed.clear()
            await asyncio.wait_for(changed.wait(), 10)

    await files.write(str(tmp_path / "new/deep/file.txt"), "x")
    await until(lambda: any(e.kind == "create" and e.path.endswith("new/deep/file.txt")
                            for e in events))
    await files.write(str(tmp_path / "new/deep/file.txt"), "y", append=True)
    await until(lambda: any(e.kind == "modify" and e.path.endswith("file.txt") for e in events))
    await files.rename(str(tmp_path / "new/deep/file.txt"), str(tmp_path / "new/renamed.txt"))
    await until(lambda: any(e.kind == "rename" and e.dest == str(tmp_path / "new/renamed.txt")
                            for e in events))
    await files.remove(str(tmp_path / "new/renamed.txt"))
    await until(lambda: any(e.kind == "delete" and e.path.endswith("renamed.txt") for e in events))
    await w.stop()
    n = len(events)
    await files.write(str(tmp_path / "after.txt"), "z")
    await files.exists(str(tmp_path / "after.txt"))  # a round trip after the write
    assert len(events) == n  # nothing delivered after stop


async def test_download_of_a_sparse_terabyte_is_refused_naming_the_cap(files, tmp_path):
    huge = tmp_path / "guest/huge"
    huge.parent.mkdir()
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, no blocks
    (tmp_path / "guest/small").write_bytes(b"s" * 100)
    with pytest.raises(GuestFileError, match=f"max_size cap of {4 << 30} bytes") as e:
        await files.download(str(huge), tmp_path / "out/huge")
    assert e.value.code == "EFBIG" and e.value.path == str(huge)
    assert not (tmp_path / "out").exists()
    # In a tree, as well; and a smaller cap counts every file of the call.
    with pytest.raises(GuestFileError, match="max_size cap of 50 bytes"):
        await files.download(str(tmp_path / "guest"), tmp_path / "tree", max_size=50)
    assert sum(p.stat().st_size for p in (tmp_path / "tree").rglob("*")) == 0


async def test_download_never_writes_more_than_the_size_it_listed(files, tmp_path):
    # The guest's file grows after download looked at it (here: a read that stops at a
    # limit, as download asks for each file); what arrives is cut at the listed size.
    grows = tmp_path / "grows"
    grows.write_bytes(b"a" * 1000)
    got = b"".join([c async for c in files._read(str(grows), limit=10)])
    assert got == b"a" * 10
    await files.download(str(grows), tmp_path / "copy", max_size=1000)
    assert (tmp_path / "copy").read_bytes() == b"a" * 1000


async def test_upload_recreates_links_and_never_reads_through_them(files, tmp_path):
    secret = tmp_path / "outside/secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOP SECRET")
    (tmp_path / "outside/dir").mkdir()
    (tmp_path / "outside/dir/inner.txt").write_text("ALSO SECRET")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub/real.txt").write_text("real")
    os.symlink(secret, tree / "abs-secret")
    os.symlink("../outside/dir", tree / "rel-dir-out")
    os.symlink("sub/real.txt", tree / "inside")
    os.symlink("nowhere", tree / "dangling")
    os.mkfifo(tree / "fifo")  # opened for reading, it would block forever
    dest = tmp_path / "guest"
    with pytest.warns(ShuruWarning, match="fifo"):
        await files.upload(tree, str(dest))
    assert os.readlink(dest / "abs-secret") == str(secret)
    assert os.readlink(dest / "rel-dir-out") == "../outside/dir"
    assert os.readlink(dest / "inside") == "sub/real.txt"
    assert os.readlink(dest / "dangling") == "nowhere"
    assert (dest / "inside").read_text() == "real"
    assert not (dest / "fifo").exists()
    for path in dest.rglob("*"):  # rglob does not descend through links
        if path.is_file() and not path.is_symlink():
            assert "SECRET" not in path.read_text()
    # Uploading again replaces the links (and files) in place.
    with pytest.warns(ShuruWarning, match="fifo"):
        await files.upload(tree, str(dest))
    assert os.readlink(dest / "abs-secret") == str(secret)


async def test_relative_guest_paths_are_relative_to_the_working_directory(agent, tmp_path):
    files = Files(lambda: agent.channel, lambda: str(tmp_path))
    await files.write("rel/x.txt", "x")
    assert (tmp_path / "rel/x.txt").read_text() == "x"
    assert await files.read_text("rel/../rel/x.txt") == "x"
    assert [e.name for e in await files.list("rel")] == ["x.txt"]
    await files.rename("rel/x.txt", "rel/y.txt")
    await files.download("rel", tmp_path / "host-copy")
    assert (tmp_path / "host-copy/y.txt").read_text() == "x"
    # Without a configured working directory, the base is root's home, as for exec.
    assert Files(lambda: agent.channel)._path("notes.txt") == "/root/notes.txt"


async def test_download_follows_the_link_it_is_given(files, tmp_path):
    (tmp_path / "real.txt").write_text("through the link")
    os.symlink("real.txt", tmp_path / "link")
    await files.download(str(tmp_path / "link"), tmp_path / "copy")
    assert (tmp_path / "copy").read_text() == "through the link"
    assert (await files.stat(str(tmp_path / "link"))).type == "symlink"
