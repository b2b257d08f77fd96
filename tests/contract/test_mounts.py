"""Host folder mounts on the wire, without a VM: the host's `mount` stream against a fake
guest that asks `fsop`s (as the guest's FUSE server does), and the real guest agent run on
the host as a subprocess (which refuses to mount: only the VM's PID 1 may). FUSE itself needs
the guest kernel; tests/integration/test_mounts.py covers it."""

from __future__ import annotations

import asyncio
import stat

import pytest

from tests.control import ping
from shuru.errors import MountError
from shuru.mounts import MountSpec, mount
from shuru_guest import wire

from tests.contract.test_guest_streams import pair  # noqa: F401  (the fixture)

TIMEOUT = 10  # seconds: generous bounds only


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    (tmp_path / "secret").write_text("SECRET")
    (root / "out").symlink_to(tmp_path / "secret")
    return root


async def test_mount_answers_the_guests_ops_during_setup_and_after(pair, folder):  # noqa: F811
    ch, guest = pair
    spec = MountSpec(str(folder), "/app", "ro")
    mounting = asyncio.create_task(mount(ch, spec))
    msg = await guest.expect("mount", 1)
    assert msg["path"] == "/app" and msg["rw"] is False
    # the overlay's set-up asks about the root before the mount is in place
    await guest.send("fsop", 1, id=7, op="getattr", path="")
    reply = await guest.expect("fsreply", 1)
    assert reply["id"] == 7 and stat.S_ISDIR(reply["value"][1])
    await guest.send("result", 1, value={"upper": "/run/shuru/mounts/1/layer/upper"})
    active = await asyncio.wait_for(mounting, TIMEOUT)
    assert active.upper == "/run/shuru/mounts/1/layer/upper"

    await guest.send("fsop", 1, id=8, op="open", path="hello.txt")
    fh = (await guest.expect("fsreply", 1))["value"]
    await guest.send("fsop", 1, id=9, op="read", fh=fh, off=0, size=1 << 30)
    assert (await guest.expect("fsreply", 1))["value"] == b"hello\n"
    # hostile asks: out of the folder, through a link, a write on a read-only mount
    for i, (op, fields, err) in enumerate([
            ("lookup", {"path": "../secret"}, "EINVAL"),
            ("open", {"path": "out"}, "ELOOP"),
            ("lookup", {"path": "out/x"}, "ENOTDIR"),
            ("create", {"path": "new", "flags": 1, "mode": 0o644}, "EROFS"),
            ("read", {"fh": "x", "off": 0, "size": 1}, "EBADF")]):
        await guest.send("fsop", 1, id=100 + i, op=op, **fields)
        reply = await guest.expect("fsreply", 1)
        assert (reply["id"], reply.get("err")) == (100 + i, err), op
    assert not (folder / "new").exists()
    await active.close()
    await guest.expect("close", 1)


async def test_a_guest_refusal_is_a_mount_error_naming_both_paths(pair, folder):  # noqa: F811
    ch, guest = pair
    mounting = asyncio.create_task(mount(ch, MountSpec(str(folder), "/app", "rw")))
    assert (await guest.expect("mount", 1))["rw"] is True
    await guest.send("error", 1, code="EBUSY", message="/app overlaps another mount")
    with pytest.raises(MountError, match=f"cannot mount {folder} on /app.*overlaps"):
        await asyncio.wait_for(mounting, TIMEOUT)
    assert 1 not in ch.streams


async def test_the_agent_mounts_only_as_pid_1(agent, folder):
    with pytest.raises(MountError, match="only as the VM's PID 1"):
        await asyncio.wait_for(mount(agent.channel, MountSpec(str(folder), "/app")), TIMEOUT)
    await asyncio.wait_for(ping(agent.channel), TIMEOUT)  # and the channel goes on serving


def test_wire_schema_knows_mount_messages():
    for t, fields in [("mount", {"path": "/app", "rw": True}),
                      ("fsop", {"id": 1, "op": "read", "fh": 2, "off": 0, "size": 10}),
                      ("fsreply", {"id": 1, "value": b"x"}),
                      ("fsreply", {"id": 1, "err": "ENOENT"})]:
        assert wire.FrameDecoder().feed(wire.message(t, 3, **fields)) == [
            {"t": t, "s": 3, **fields}]
    for t, fields in [("mount", {"path": 5}), ("fsop", {"id": "1", "op": "read"}),
                      ("fsreply", {"id": 1, "err": 2})]:
        with pytest.raises(wire.WireError):
            wire.FrameDecoder().feed(wire.message(t, 3, **fields))
