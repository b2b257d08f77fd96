"""A stream's inbox (pure: no socket) and `exec`'s output-cap option."""

from __future__ import annotations

import pytest

from shuru import AsyncSandbox, ConfigError
from shuru.channel import _Inbox
from shuru_guest import wire


def msg(t: str, **fields) -> dict:
    return {"t": t, "s": 1, **fields}


async def drain(inbox: _Inbox, n: int) -> list[tuple]:
    out = []
    for _ in range(n):
        m = await inbox.get()
        out.append((m["t"], m.get("fd"), m.get("d")))
    return out


async def test_order_is_kept_per_fd_and_nothing_overtakes_the_data_before_it():
    inbox = _Inbox(1)
    for m in [msg("data", fd=1, d=b"a"), msg("data", fd=2, d=b"b"), msg("data", fd=1, d=b"c"),
              msg("eof", fd=1), msg("data", fd=2, d=b"d"), msg("exit", code=0)]:
        inbox.put_nowait(m)
    assert await drain(inbox, 5) == [
        ("data", 1, b"ac"),  # stdout's bytes merge; the oldest fd goes first
        ("data", 2, b"b"),  # only what stderr had before the eof
        ("eof", 1, None),
        ("data", 2, b"d"),
        ("exit", None, None),
    ]
    assert inbox.qsize() == 0


async def test_data_comes_out_in_chunks_of_at_most_chunk_bytes_taking_turns():
    inbox = _Inbox(1)
    inbox.put_nowait(msg("data", fd=1, d=b"o" * (2 * wire.CHUNK + 1)))
    inbox.put_nowait(msg("data", fd=2, d=b"e" * 10))
    got = await drain(inbox, 4)
    assert [(t, fd, len(d)) for t, fd, d in got] == [
        ("data", 1, wire.CHUNK), ("data", 2, 10), ("data", 1, wire.CHUNK), ("data", 1, 1)]


async def test_tiny_frames_merge_empty_ones_leave_nothing_and_clear_drops_everything():
    inbox = _Inbox(1)
    for i in range(3 * wire.CHUNK):
        inbox.put_nowait(msg("data", fd=1 + i % 2, d=b"x"))
        inbox.put_nowait(msg("data", fd=1 + i % 2, d=b""))
    assert inbox.qsize() == 4  # 1.5 chunks' worth on each fd
    inbox.clear()
    assert inbox.qsize() == 0
    inbox.put_nowait(msg("data", fd=1, d=b"x"))
    inbox.put_nowait(msg("started", pid=1))
    inbox.clear()
    assert inbox.qsize() == 0
    inbox.put_nowait(msg("exit", code=1))
    assert await drain(inbox, 1) == [("exit", None, None)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "1M", True, None])
async def test_exec_max_output_must_be_a_positive_byte_count(bad):
    with pytest.raises(ConfigError, match="max_output"):
        await AsyncSandbox().exec("true", max_output=bad)
