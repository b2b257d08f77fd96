"""Guest listings and the host folder mounts the agent serves itself: a mount point is shown,
never entered (the agent would wait on a request only it can answer)."""

import os
from shuru_guest import fsops, wire


def test_a_served_mount_point_is_listed_as_a_directory_and_never_entered(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "inside").write_text("x")
    (tmp_path / "plain").write_text("y")
    served = lambda path: path == f"{tmp_path}/app"  # noqa: E731
    listed = list(fsops.open_listing({"op": "list", "path": str(tmp_path)}, served))
    walked = list(fsops.open_listing({"op": "walk", "path": str(tmp_path)}, served))
    for entries in (listed, walked):
        by_name = {e["name"]: e for e in entries}
        assert set(by_name) == {"app", "plain"}  # nothing from inside the mount
        assert by_name["app"]["type"] == "dir" and by_name["app"]["size"] == 0
        for entry in entries:
            wire.check_entry(entry)
