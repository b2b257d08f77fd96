"""`shuru run` with a terminal: driven through tmux like a person at a keyboard."""

import shutil
import subprocess
import time
import uuid

import pytest

from .conftest import SHURU

pytestmark = pytest.mark.usefixtures("image")


class Tmux:
    def __init__(self, command: str, width: int = 100, height: int = 30):
        self.name = f"shuru-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", str(width),
                        "-y", str(height), command], check=True)

    def send(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def wait_for(self, text: str, timeout: float = 120) -> str:
        # The screen is only observable by looking at it; poll with a generous bound.
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; screen:\n{screen}")
            time.sleep(0.1)

    def wait_for_prompt(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.strip() == "#" for line in self.screen().splitlines()):
            assert time.monotonic() < deadline, f"no shell prompt; screen:\n{self.screen()}"
            time.sleep(0.1)

    def wait_for_prompt_last(self, timeout: float = 120) -> None:
        """Until the shell's prompt is the screen's last non-empty line."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.screen().splitlines() if line.strip()]
            if lines and lines[-1].strip() == "#":
                return
            assert time.monotonic() < deadline, f"no fresh prompt; screen:\n{self.screen()}"
            time.sleep(0.1)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True).returncode == 0

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def tmux_run(tmp_path, runtime_dir):
    assert shutil.which("tmux"), "tmux is needed (scripts/setup installs it)"
    status = tmp_path / "status"
    sessions = []

    def start(args: str = "") -> Tmux:
        env = f"SHURU_RUNTIME_DIR={runtime_dir}"
        t = Tmux(f"env {env} {SHURU} run {args}; echo $? > {status}; sleep 600")
        sessions.append(t)
        return t

    start.status = status
    yield start
    for t in sessions:
        t.kill()


def test_interactive_shell_prompt_ctrl_c_resize_and_exit(tmux_run):
    t = tmux_run()
    t.wait_for_prompt()
    t.send("echo $((6 * 7)) $(tty) $(hostname)", "Enter")
    t.wait_for("42 /dev/pts/0 shuru")
    t.send("stty size", "Enter")
    t.wait_for("30 100")
    # Ctrl-C reaches the guest's foreground job, not shuru. Each key waits for what it
    # answers: ^C flushes the terminal's queues, so keys typed ahead of it may be dropped.
    t.send("echo $((40 + 2))-zz; sleep 1000", "Enter")
    t.wait_for("42-zz")
    t.send("C-c")
    t.wait_for_prompt_last()
    t.send("echo after-$((1 + 1))", "Enter")
    t.wait_for("after-2")
    # A window resize follows into the guest.
    subprocess.run(["tmux", "resize-window", "-t", t.name, "-x", "120", "-y", "40"], check=True)
    t.send("stty size", "Enter")
    t.wait_for("40 120")
    t.send("exit 3", "Enter")
    deadline = time.monotonic() + 60
    while not tmux_run.status.exists():
        assert time.monotonic() < deadline, t.screen()
        time.sleep(0.1)
    assert tmux_run.status.read_text().strip() == "3"
