"""Big trees and big requests through the real agent (as a host subprocess): listings and
walks stream within credit, so 100,000 entries list and download in bounded memory on both
sides; an exec request bigger than a frame goes in parts, and one past what Linux takes is an
ExecError naming the limit. A fake guest plays the hostile side of the same streams."""

import asyncio
import contextlib
import os
import resource
import socket

import pytest

from shuru.channel import Channel
from shuru.errors import ExecError, ProtocolError, ShuruError
from shuru.files import Files
from shuru.process import run_to_completion
from shuru_guest import wire

FLAT, DIRS, PER_DIR = 20_000, 80, 1_000  # 100,080 entries in all


async def _run(agent, argv, **kw):
    return await run_to_completion(agent.channel.open_stream(), argv, stdin=None,
                                   **{"timeout": 60, **kw})


@pytest.fixture
def files(agent):
    return Files(lambda: agent.channel)


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM")))


def _make_tree(root) -> None:
    (root / "flat").mkdir(parents=True)
    for i in range(FLAT):
        (root / "flat" / f"f{i:05}").touch()
    for d in range(DIRS):
        sub = root / "tree" / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(PER_DIR):
            (sub / f"f{i:04}").write_bytes(b"%d\n" % i if i % 100 == 0 else b"")


async def test_a_hundred_thousand_entries_list_walk_and_download_in_bounded_memory(
        agent, files, tmp_path):
    src = tmp_path / "src"
    await asyncio.to_thread(_make_tree, src)
    agent_before = _peak_kib(agent.proc.pid)
    host_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    n = 0
    async for entry in files.iter_list(str(src / "flat")):
        assert entry.is_file and entry.path == str(src / "flat" / entry.name)
        n += 1
    assert n == FLAT

    seen_dirs = {str(src)}
    n = 0
    async for entry in files.walk(str(src)):
        assert os.path.dirname(entry.path) in seen_dirs  # a directory comes before its content
        if entry.is_dir:
            seen_dirs.add(entry.path)
        n += 1
    assert n == 2 + FLAT + DIRS + DIRS * PER_DIR

    out = tmp_path / "out"
    await files.download(str(src), out)
    assert len(os.listdir(out / "flat")) == FLAT
    assert (out / "tree/d079/f0900").read_bytes() == b"900\n"
    assert sum(len(os.listdir(out / "tree" / d)) for d in os.listdir(out / "tree")) == \
        DIRS * PER_DIR

    # Neither side held the listing: 100,000 entries as dicts alone take over 50 MiB.
    agent_growth = (_peak_kib(agent.proc.pid) - agent_before) / 1024
    host_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - host_before) / 1024
    assert agent_growth < 16, f"the agent's peak grew by {agent_growth:.0f} MiB"
    assert host_growth < 32, f"the host's peak grew by {host_growth:.0f} MiB"


async def test_list_is_sorted_and_walk_lists_links_without_following_them(files, tmp_path):
    (tmp_path / "t/b").mkdir(parents=True)
    (tmp_path / "t/a").write_text("a")
    (tmp_path / "t/b/c").write_text("c")
    os.symlink("/", tmp_path / "t/root-link")  # followed, the walk would never end
    assert [e.name for e in await files.list(str(tmp_path / "t"))] == ["a", "b", "root-link"]
    walked = {e.path[len(str(tmp_path)):]: e.type async for e in files.walk(str(tmp_path / "t"))}
    assert walked == {"/t/a": "file", "/t/b": "dir", "/t/b/c": "file", "/t/root-link": "symlink"}


async def test_a_listing_left_midway_is_cancelled_and_the_channel_goes_on(files, tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(5000):
        (d / f"{i}").touch()
    async with contextlib.aclosing(files.iter_list(str(d))) as entries:
        async for _ in entries:
            break  # leaving the block cancels the listing in the guest
    assert len(await files.list(str(d))) == 5000


async def test_an_exec_of_a_megabyte_of_arguments_runs(agent):
    args = [chr(ord("a") + i) * (64 * 1024) for i in range(16)]
    env = {"BIG": "z" * (100 * 1024)}
    r = await _run(
        agent,
        ["python3", "-c", "import os, sys; print(sum(map(len, sys.argv[1:])), "
         "len(os.environ['BIG']), sys.argv[16][:3])", *args], env=env, timeout=60)
    assert (r.exit_code, r.stdout.split()) == (0, [str(16 * 64 * 1024), str(100 * 1024), "ppp"])


async def test_an_exec_past_what_linux_takes_is_an_exec_error_naming_the_limit(agent):
    # Within the agent's request limit, past ARG_MAX (2 MiB with an 8 MiB stack)...
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    limit = 6 << 20 if soft == resource.RLIM_INFINITY else max(min(soft // 4, 6 << 20), 128 << 10)
    too_many = ["x" * (100 * 1024)] * (limit // (100 * 1024) + 1)
    with pytest.raises(ExecError, match=f"limit of {limit} bytes"):
        await _run(agent, ["true", *too_many], timeout=60)
    # ...one string past the kernel's per-string limit...
    with pytest.raises(ExecError, match="per string"):
        await _run(agent, ["true", "y" * (200 * 1024)],
                                timeout=60)
    # ...and past the agent's own limit on a request.
    with pytest.raises(ExecError, match=f"limit of {wire.MAX_REQUEST} bytes"):
        await _run(agent,
                                ["true", *["z" * (100 * 1024)] * 100], timeout=60)
    r = await _run(agent, ["echo", "still", "here"])
    assert r.stdout == "still here\n"


# ---- a hostile guest on the same streams --------------------------------------------------


class FakeGuest:
    """Says hello, then answers each request the host opens with the frames `script` gives
    for it (by request type), as a hostile guest would."""

    def __init__(self, sock, script):
        self.sock = sock
        self.script = script
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        decoder = wire.FrameDecoder()
        while data := await loop.sock_recv(self.sock, 65536):
            for msg in decoder.feed(data):
                key = msg.get("op", msg["t"])
                if key in self.script:
                    await loop.sock_sendall(self.sock, b"".join(self.script[key](msg["s"])))


@pytest.fixture
async def fake_guest():
    host, guest = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=host)
    ch = Channel(reader, writer)
    guest.sendall(wire.message("hello", version=wire.VERSION))
    await ch.handshake()
    fakes = []

    def play(script) -> Files:
        fakes.append(FakeGuest(guest, script))
        return Files(lambda: ch)

    yield play
    await ch.close()
    guest.close()
    for fake in fakes:
        fake.task.cancel()


def _entries(*entries, count=1):
    data = b"".join(e if isinstance(e, bytes) else wire.pack_entry(e) for e in entries)
    return lambda s: [wire.message("data", s, fd=1, d=data), wire.message("eof", s, fd=1),
                      wire.message("result", s, value={"count": count})]


ENTRY = {"name": "x", "path": "/d/x", "type": "dir", "size": 0, "mode": 0o755, "mtime": 0,
         "uid": 0, "gid": 0}


@pytest.mark.parametrize("bad", [
    b"\x93\x01\x02\x03",                                        # not a map
    wire.pack_entry({"name": "a", "path": "/d/a", "type": "file"}),  # fields missing
    b"\xc1",                                                    # not msgpack
    wire.pack_entry(dict(ENTRY, name="a" * (wire.MAX_ENTRY + 1))),  # oversized
    wire.pack_entry(ENTRY)[:-1],                                 # ends midway
])
async def test_a_bad_listing_from_the_guest_is_a_protocol_error(fake_guest, bad):
    files = fake_guest({"list": _entries(bad)})
    with pytest.raises(ProtocolError):
        await files.list("/d")


async def test_a_walk_naming_paths_outside_the_tree_is_refused(fake_guest, tmp_path):
    files = fake_guest({
        "stat": lambda s: [wire.message("result", s, value=dict(ENTRY, name="d", path="/d"))],
        "walk": _entries(dict(ENTRY, path="/d/../../etc"))})
    with pytest.raises(ProtocolError, match="outside"):
        await files.download("/d", tmp_path / "out")
    assert not (tmp_path / "etc").exists()


async def test_a_guest_sending_more_than_the_files_size_is_cut_off(fake_guest, tmp_path):
    stat = dict(ENTRY, name="f", path="/f", type="file", size=10)
    files = fake_guest({
        "stat": lambda s: [wire.message("result", s, value=stat)],
        "read": lambda s: [wire.message("data", s, fd=1, d=b"x" * 11),
                           wire.message("eof", s, fd=1),
                           wire.message("result", s, value={"size": 11})]})
    with pytest.raises(ProtocolError, match="more than the 10 bytes"):
        await files.download("/f", tmp_path / "f")
    assert not list(tmp_path.iterdir())  # no file, and no partial file left behind


async def test_foreign_exceptions_never_reach_the_caller(agent, tmp_path):
    """Every public files method and exec, through the failure paths a caller can meet:
    bad arguments, guest errors, host errors, and a dead agent. Each raises a ShuruError."""
    files = Files(lambda: agent.channel)
    missing = str(tmp_path / "missing")
    (tmp_path / "plain").write_text("x")
    calls = {
        "stat": lambda: files.stat(missing),
        "exists": lambda: files.exists("/bad\0path"),
        "list": lambda: files.list(missing),
        "iter_list": lambda: _drain(files.iter_list(str(tmp_path / "plain"))),
        "walk": lambda: _drain(files.walk(missing)),
        "mkdir": lambda: files.mkdir(str(tmp_path / "d"), mode="rwx"),
        "remove": lambda: files.remove(missing),
        "rename": lambda: files.rename(missing, str(tmp_path / "b")),
        "copy": lambda: files.copy(missing, str(tmp_path / "b")),
        "chmod": lambda: files.chmod(str(tmp_path / "plain"), 2**40),
        "symlink": lambda: files.symlink(str(tmp_path / "l"), ""),
        "iter_read": lambda: _drain(files.iter_read(missing)),
        "read": lambda: files.read(str(tmp_path)),
        "read_text": lambda: files.read_text(missing),
        "write": lambda: files.write(str(tmp_path / "plain/under-a-file"), b"x"),
        "upload": lambda: files.upload(tmp_path / "no-such-host-file", str(tmp_path / "u")),
        "download": lambda: files.download(str(tmp_path), tmp_path / "plain/sub"),
        "exec": lambda: _run(agent, ["true"], cwd=missing),
    }
    public = {n for n in dir(Files) if not n.startswith("_")}
    assert public <= set(calls), public - set(calls)
    for name, call in calls.items():
        with pytest.raises(ShuruError):
            await call()
    agent.proc.kill()
    await asyncio.to_thread(agent.proc.wait)
    for name, call in calls.items():
        with pytest.raises(ShuruError):
            await call()


async def _drain(agen) -> None:
    async for _ in agen:
        pass


async def test_names_that_are_not_utf8_are_skipped_not_fatal(files, tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    (d / "fine").touch()
    os.mkdir(os.fsencode(d) + b"/bad\xff")
    open(os.fsencode(d) + b"/bad\xff/inner", "wb").close()
    assert [e.name for e in await files.list(str(d))] == ["fine"]
    assert [e.name async for e in files.walk(str(d))] == ["fine"]


async def test_a_walk_deeper_than_the_open_directory_limit_lists_everything(files, tmp_path):
    from shuru_guest import fsops
    deep = tmp_path / "deep"
    d = deep
    for level in range(fsops.MAX_OPEN_DIRS + 20):
        d = d / f"{level}"
        d.mkdir(parents=True)
        (d / "f").touch()
        (d / "g").touch()  # a parent with entries left to read when its child is entered
    walked = [e.path async for e in files.walk(str(deep))]
    assert len(walked) == 3 * (fsops.MAX_OPEN_DIRS + 20)
    assert len(set(walked)) == len(walked)
