"""Our newc writer, checked by the system's cpio reading what it wrote."""

import subprocess

from shuru.image.cpio import Entry, archive


def test_system_cpio_reads_our_archive(tmp_path):
    data = archive([
        Entry.dir("bin"),
        Entry.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        Entry.symlink("bin/sh", "tool"),
        Entry.file("odd", b"x" * 5),  # lengths that need padding
    ])
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == ["bin", "bin/tool", "bin/sh", "odd"]
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data,
                   cwd=tmp_path, check=True)
    assert (tmp_path / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin/sh").readlink().as_posix() == "tool"
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"


def test_deterministic():
    entries = [Entry.dir("a"), Entry.file("a/b", b"1"), Entry.chardev("dev/console", 5, 1)]
    assert archive(entries) == archive(list(entries))
    assert archive(entries).endswith(b"\0") and len(archive(entries)) % 4 == 0
