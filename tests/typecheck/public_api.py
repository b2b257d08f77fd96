"""What a type checker sees of the public API: mypy checks this file (scripts/test), and
each `assert_type` fails the check when a sync method's type drifts from its async twin's,
or when a public method loses its annotations. Never run: the calls would start VMs."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Iterator, assert_type

from shuru import AsyncSandbox, ExecResult, OutputChunk, Process, Sandbox, SyncProcess
from shuru.checkpoints import Checkpoint
from shuru.files import FileInfo, Watch
from shuru.mounts import Changes, MountSpec
from shuru.ports import Address, Forward
from shuru.sandbox import State
from shuru.sync import SyncChanges, SyncWatch


def sync_sandbox() -> None:
    with Sandbox.start(cpus=1, lifetime=60) as sb:
        assert_type(sb, Sandbox)
        assert_type(sb.exec("true"), ExecResult)
        assert_type(sb.exec(["ls", "/"], cwd="/", timeout=5).exit_code, int)
        process = sb.spawn("sleep 1")
        assert_type(process, SyncProcess)
        assert_type(process.wait(), int)
        assert_type(process.returncode, int | None)
        assert_type(process.exit_signal, int | None)
        for chunk in process:
            assert_type(chunk, OutputChunk)
        assert_type(sb.files.read("/etc/hostname"), bytes)
        assert_type(sb.files.list("/"), list[FileInfo])
        assert_type(sb.files.iter_read("/etc/hostname"), Iterator[bytes])
        assert_type(sb.files.walk("/"), Iterator[FileInfo])
        assert_type(sb.files.write("/tmp/x", b"x"), int)
        assert_type(sb.watch("/tmp", print), SyncWatch)
        assert_type(sb.expose(8000), Address)
        assert_type(sb.connect(8000), socket.socket)
        assert_type(sb.ports, list[Forward])
        assert_type(sb.mounts, list[MountSpec])
        assert_type(sb.mount_changes("/app"), SyncChanges)
        assert_type(sb.network_log(), list[dict[Any, Any]])
        assert_type(sb.state, State)
        assert_type(sb.accel, str | None)
        assert_type(sb.checkpoint("ready"), Checkpoint)
    assert_type(Sandbox.attach("box"), Sandbox)
    assert_type(Sandbox.list(), list[dict[Any, Any]])


async def async_sandbox() -> None:
    async with await AsyncSandbox.start(cpus=1) as sb:
        assert_type(sb, AsyncSandbox)
        assert_type(await sb.exec("true"), ExecResult)
        process = await sb.spawn("sleep 1")
        assert_type(process, Process)
        assert_type(await process.wait(), int)
        async for chunk in process:
            assert_type(chunk, OutputChunk)
        assert_type(await sb.files.read("/etc/hostname"), bytes)
        assert_type(await sb.files.list("/"), list[FileInfo])
        async for data in sb.files.iter_read("/etc/hostname"):
            assert_type(data, bytes)
        assert_type(await sb.watch("/tmp", print), Watch)
        assert_type(await sb.expose(8000), Address)
        assert_type(await sb.connect(8000),
                    tuple[asyncio.StreamReader, asyncio.StreamWriter])
        assert_type(sb.ports, list[Forward])
        assert_type(sb.mounts, list[MountSpec])
        assert_type(await sb.mount_changes("/app"), Changes)
        assert_type(sb.network_log(), list[dict[Any, Any]])
        assert_type(await sb.checkpoint("ready"), Checkpoint)
    assert_type(await AsyncSandbox.attach("box"), AsyncSandbox)
