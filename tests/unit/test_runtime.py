"""Runtime directories: locked while owned, swept when their owner is gone."""

import os
import subprocess
import sys

from shuru.runtime import RunDir, sweep


def test_owned_dir_survives_sweep_and_close_removes_it(tmp_path):
    rd = RunDir.create(tmp_path)
    assert sweep(tmp_path) == []
    assert rd.path.exists()
    rd.close()
    assert not rd.path.exists()


def test_dir_of_a_dead_owner_is_swept(tmp_path):
    # A child process creates a run dir and dies without cleaning up (as with SIGKILL).
    code = ("import sys, os; sys.path[:0] = %r; from shuru.runtime import RunDir; "
            "from pathlib import Path; rd = RunDir.create(Path(%r)); print(rd.path); os._exit(0)"
            % (sys.path, str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    left = out.stdout.strip()
    assert os.path.isdir(left)
    assert [str(p) for p in sweep(tmp_path)] == [left]
    assert not os.path.exists(left)
