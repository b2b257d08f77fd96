"""The guest watcher's pairing of rename halves, fed inotify records by hand: a read can fall
between the two halves of one rename, so the pair must survive across reads."""

from shuru_guest import watch


def _watcher(tmp_path):
    w = watch.Watcher(str(tmp_path), recursive=True)
    (wd,) = w.paths
    return w, wd


def test_a_rename_split_across_two_reads_is_still_a_rename(tmp_path):
    w, wd = _watcher(tmp_path)
    try:
        first, second = [], []
        w._translate(wd, watch.IN_MOVED_FROM, 7, "f", first)
        assert first == [] and w.deadline() is not None
        w._translate(wd, watch.IN_MOVED_TO, 7, "g", second)
        assert second == [{"kind": "rename", "path": f"{tmp_path}/f", "dest": f"{tmp_path}/g",
                           "is_dir": False}]
        assert w.deadline() is None and w.expire(float("inf")) == []
    finally:
        w.close()


def test_a_move_out_of_the_tree_becomes_a_delete_when_its_wait_is_over(tmp_path):
    w, wd = _watcher(tmp_path)
    try:
        w._translate(wd, watch.IN_MOVED_FROM, 9, "f", [])
        deadline = w.deadline()
        assert w.expire(deadline - watch.MOVE_WAIT / 2) == []
        assert w.expire(deadline) == [{"kind": "delete", "path": f"{tmp_path}/f"}]
        assert w.deadline() is None
    finally:
        w.close()
