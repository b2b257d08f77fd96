"""Checkpoints on real VMs: save, fan out, stack, refuse to delete what others need, detect
damage. Checkpoints are made under unique names in the real data dir and removed after."""

import asyncio
import json
import shutil
import uuid
import warnings

import pytest

from shuru import AsyncSandbox
from shuru.launch import states
from shuru import checkpoints as ck

from .conftest import shuru

pytestmark = [pytest.mark.usefixtures("image")]


@pytest.fixture
def names():
    made = []

    def new(prefix: str = "t") -> str:
        made.append(f"{prefix}-{uuid.uuid4().hex[:8]}")
        return made[-1]

    yield new
    for name in reversed(made):  # children first
        shutil.rmtree(ck.checkpoints_dir() / name, ignore_errors=True)


async def test_fan_out_isolated_forks_and_an_unchanged_checkpoint(names):
    ready = names("ready")
    sb = await AsyncSandbox.start()
    await sb.exec("mkdir -p /work/repo/objects/ab && echo blob > /work/repo/objects/ab/cd && "
                  "echo ref > /work/repo/HEAD && echo tool-v1 > /usr/local/bin/tool-version")
    cp = await sb.checkpoint(ready)
    assert sb.state.value == "stopped"
    assert cp.parent is None and cp.manifest["image_id"]
    before = dict(cp.manifest["disk"])
    # checkpoint() left the machine state its forks restore: none of them boots cold.
    saved = states.list_layer(states.Layer.of_checkpoint(cp))
    assert len(saved) == 1

    async def fork(i: int) -> str:
        async with await AsyncSandbox.start(from_=ready) as s:
            assert s.restored and s._machine.restored_from == saved[0].path
            await s.exec(f"echo {i} > /work/mine-{i} && cat /work/repo/HEAD >> /work/mine-{i}")
            return (await s.exec("cat /usr/local/bin/tool-version; ls /work; "
                                 "cat /work/repo/objects/ab/cd")).stdout

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outputs = await asyncio.gather(*(fork(i) for i in range(4)))
    assert not [w for w in caught if "machine state" in str(w.message)]
    for i, out in enumerate(outputs):
        lines = out.split()
        assert lines[0] == "tool-v1" and lines[-1] == "blob"
        assert [x for x in lines if x.startswith("mine-")] == [f"mine-{i}"]  # only its own
    after = ck.load(ready)  # re-hashes the disk
    assert after.manifest["disk"] == before


async def test_chain_of_two_and_delete_refusal(names):
    a, b = names("a"), names("b")
    sb = await AsyncSandbox.start()
    await sb.files.write("/layer/a", "A")
    await sb.checkpoint(a)
    sb = await AsyncSandbox.start(from_=a)
    await sb.files.write("/layer/b", "B")
    cp_b = await sb.checkpoint(b)
    assert cp_b.parent == a
    async with await AsyncSandbox.start(from_=b) as s:
        assert (await s.exec("cat /layer/a /layer/b")).stdout == "AB"
    with pytest.raises(ck.CheckpointError, match=f"{b} stand on it"):
        ck.delete(a)
    r = shuru("checkpoint", "delete", a)
    assert r.returncode == 125 and b in r.stderr.decode()
    listed = json.loads(shuru("checkpoint", "list", "--json").stdout)
    assert {"name": b, "parent": a} in [{"name": x["name"], "parent": x["parent"]} for x in listed]
    ck.delete(b)
    ck.delete(a)
    assert a not in [c.name for c in ck.list_all()]


async def test_damaged_checkpoints_are_refused_and_others_still_work(names):
    good = names("good")
    sb = await AsyncSandbox.start()
    await sb.files.write("/marker", "ok")
    await sb.checkpoint(good)
    root = ck.checkpoints_dir()
    flipped, truncated = names("flipped"), names("truncated")
    for name in (flipped, truncated):
        shutil.copytree(root / good, root / name)
        (root / name / "disk.qcow2").chmod(0o644)
    with open(root / flipped / "disk.qcow2", "r+b") as f:
        f.seek(70000)
        byte = f.read(1)
        f.seek(70000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with open(root / truncated / "disk.qcow2", "r+b") as f:
        f.truncate(4096)
    with pytest.raises(ck.CheckpointError, match="does not match the sha256") as e:
        await AsyncSandbox.start(from_=flipped)
    assert str(root / flipped / "disk.qcow2") in str(e.value)
    with pytest.raises(ck.CheckpointError, match="has 4096 bytes"):
        await AsyncSandbox.start(from_=truncated)
    async with await AsyncSandbox.start(from_=good) as s:
        assert await s.files.read_text("/marker") == "ok"


def test_cli_create_run_from_and_names(names, tmp_path):
    name = names("cli")
    r = shuru("checkpoint", "create", name, "--", "sh", "-c", "echo hello > /root/greeting")
    assert r.returncode == 0, r.stderr.decode()
    r = shuru("run", "--from", name, "--", "cat", "/root/greeting")
    assert (r.returncode, r.stdout) == (0, b"hello\n")
    (tmp_path / "shuru.yaml").write_text(f"from: {name}\ncommand: [cat, /root/greeting]\n")
    r = shuru("run", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"hello\n")
    r = shuru("checkpoint", "create", name, "--", "true")
    assert r.returncode == 125 and b"already exists" in r.stderr
    r = shuru("checkpoint", "create", "../evil", "--", "true")
    assert r.returncode == 125 and b"not valid" in r.stderr
    r = shuru("run", "--from", "no-such-checkpoint", "--", "true")
    assert r.returncode == 125 and b"no checkpoint named 'no-such-checkpoint'" in r.stderr
    r = shuru("checkpoint", "create", names("failing"), "--", "sh", "-c", "exit 3")
    assert r.returncode == 3 and b"no checkpoint saved" in r.stderr


async def test_checkpoint_outlives_a_new_current_image(tmp_path, monkeypatch, image):
    """After `shuru init --force` makes another image current, a checkpoint still starts on
    the image it was made from (which is kept)."""
    home = tmp_path / "home"
    (home / "images").mkdir(parents=True)
    (home / "images" / image.id).symlink_to(image.path)
    (home / "images" / "current").symlink_to(image.id)
    monkeypatch.setenv("SHURU_HOME", str(home))
    sb = await AsyncSandbox.start()
    await sb.files.write("/kept", "yes")
    await sb.checkpoint("old-base")
    # A "rebuilt" image becomes current; the checkpoint's own image stays where it was.
    newer = home / "images" / "0000newer0000000"
    newer.mkdir()
    (home / "images" / "current").unlink()
    (home / "images" / "current").symlink_to(newer.name)
    async with await AsyncSandbox.start(from_="old-base") as s:
        assert await s.files.read_text("/kept") == "yes"
