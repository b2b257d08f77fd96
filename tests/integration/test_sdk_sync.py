"""The sync SDK against real VMs, and the examples (which the README points people to)."""

import runpy
import signal
import threading
from pathlib import Path

import pytest

from shuru import Sandbox, SandboxStateError

pytestmark = pytest.mark.usefixtures("image")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def sb():
    with Sandbox.start(cpus=1, memory=1024) as sandbox:
        yield sandbox


def test_exec(sb):
    r = sb.exec("echo hi >&2; echo out; exit 5")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "hi\n", 5)


def test_spawn_iterate_write_kill(sb):
    proc = sb.spawn(["sh", "-c", "echo ready; read x; echo got $x; sleep 600"])
    text = ""
    for chunk in proc:
        text += chunk.text
        if text == "ready\n":
            proc.write("it\n")
        if "got it" in text:
            proc.kill()
    assert text == "ready\ngot it\n"
    assert proc.wait() == 128 + signal.SIGKILL


def test_files_and_watch(sb):
    events = []
    got = threading.Event()

    def on_event(e):
        events.append(e)
        if e.kind == "create" and e.path == "/w/sub/file":
            got.set()

    sb.files.mkdir("/w")
    watch = sb.watch("/w", on_event)
    sb.files.write("/w/sub/file", b"data")
    assert got.wait(30)
    watch.stop()
    assert sb.files.read("/w/sub/file") == b"data"
    assert [e.name for e in sb.files.list("/w")] == ["sub"]
    assert b"".join(sb.files.iter_read("/w/sub/file")) == b"data"


def test_stop_is_idempotent_and_guards_calls():
    sandbox = Sandbox.start(cpus=1, memory=512)
    sandbox.stop()
    sandbox.stop()
    with pytest.raises(SandboxStateError):
        sandbox.exec("true")


def test_walkthrough_example(capsys):
    runpy.run_path(str(EXAMPLES / "walkthrough.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert 'PRETTY_NAME="Debian GNU/Linux' in out
    assert "server: got hello" in out
    assert "last message: hello" in out
    assert "('create', '/app/last-message')" in out


def test_agent_loop_example():
    transcript = runpy.run_path(str(EXAMPLES / "agent_loop.py"))["main"]()
    assert transcript[0].startswith("wrote")
    assert transcript[1] == "exit=0\n55\n"
    assert "fib.py" in transcript[2]


async def test_fanout_example():
    diffs = await runpy.run_path(str(EXAMPLES / "fanout.py"))["main"]()
    assert list(diffs) == ["fix-typo", "add-sub", "drop-readme"]
    assert "+calc: a tiny calculator" in diffs["fix-typo"] and "VERSION" not in diffs["fix-typo"]
    assert "+1.4.3" in diffs["add-sub"] and "+def sub(a, b):" in diffs["add-sub"]  # the tool ran
    assert "README" not in diffs["add-sub"]
    assert "+calc: add numbers" in diffs["drop-readme"] and "calc.py" not in diffs["drop-readme"]
