"""The QMP client's run state against a fake QEMU on a socketpair: once QEMU's socket is
gone, every command and event waiter fails at once with SandboxDiedError, never hangs."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from shuru.backends.qemu.qmp import QMP
from shuru.errors import QMPError, SandboxDiedError

TIMEOUT = 10  # generous: each answer here takes milliseconds


class FakeQemu:
    """Greets, then answers each command with `answer(request)` (a dict, or bytes sent as
    they are); None answers nothing."""

    def __init__(self, sock: socket.socket, answer):
        self.sock = sock
        self.answer = answer
        sock.setblocking(False)
        self.task = asyncio.create_task(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, b'{"QMP": {"version": {}, "capabilities": []}}\n')
        buf = b""
        while data := await loop.sock_recv(self.sock, 65536):
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                request = json.loads(line)
                if request["execute"] == "qmp_capabilities":
                    reply = {"return": {}, "id": request["id"]}
                else:
                    reply = self.answer(request)
                if isinstance(reply, dict):
                    reply = json.dumps(reply).encode() + b"\n"
                if reply is not None:
                    await loop.sock_sendall(self.sock, reply)

    def close(self) -> None:
        self.task.cancel()
        self.sock.close()


@pytest.fixture
async def qemu():
    made = []

    async def start(answer=lambda request: None) -> tuple[QMP, FakeQemu]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        fake = FakeQemu(theirs, answer)
        qmp = QMP(reader, writer)
        made.append((qmp, fake))
        await asyncio.wait_for(qmp.start(), TIMEOUT)
        return qmp, fake

    yield start
    for qmp, fake in made:
        fake.close()
        await qmp.close()


async def test_commands_are_answered_and_errors_translated(qemu):
    def answer(request):
        if request["execute"] == "bad":
            return {"error": {"class": "GenericError", "desc": "no"}, "id": request["id"]}
        return {"return": {"status": "running"}, "id": request["id"]}

    qmp, _ = await qemu(answer)
    assert await qmp.execute("query-status") == {"status": "running"}
    with pytest.raises(QMPError, match="no"):
        await qmp.execute("bad")


async def test_a_command_after_qemu_went_away_fails_at_once(qemu):
    qmp, fake = await qemu()
    pending = asyncio.ensure_future(qmp.execute("query-status"))
    fake.close()
    # The command in flight fails with the sandbox's death (it was a HostError before)...
    with pytest.raises(SandboxDiedError, match="QMP"):
        await asyncio.wait_for(pending, TIMEOUT)
    # ...and so does every later one, at once: before, it waited for an answer forever.
    with pytest.raises(SandboxDiedError, match="QMP"):
        await asyncio.wait_for(qmp.execute("cont"), TIMEOUT)
    with pytest.raises(SandboxDiedError, match="QMP"):
        qmp.event_waiter("MIGRATION")


async def test_an_event_waiter_fails_when_qemu_goes_away(qemu):
    qmp, fake = await qemu()
    finished = qmp.event_waiter("MIGRATION")
    fake.close()
    with pytest.raises(SandboxDiedError, match="QMP"):
        await asyncio.wait_for(finished, TIMEOUT)


async def test_a_line_that_is_not_an_object_fails_the_pending_command(qemu):
    # Before, the reader task died of an AttributeError and the command waited forever.
    qmp, _ = await qemu(lambda request: b"[1, 2]\n")
    with pytest.raises(SandboxDiedError, match="QMP connection failed"):
        await asyncio.wait_for(qmp.execute("query-status"), TIMEOUT)


async def test_events_are_delivered_to_the_matching_waiter(qemu):
    def answer(request):
        return (json.dumps({"event": "MIGRATION", "data": {"status": "active"}}) + "\n" +
                json.dumps({"event": "MIGRATION", "data": {"status": "completed"}}) + "\n" +
                json.dumps({"return": {}, "id": request["id"]}) + "\n").encode()

    qmp, _ = await qemu(answer)
    done = qmp.event_waiter("MIGRATION", lambda d: d.get("status") == "completed")
    given_up = qmp.event_waiter("MIGRATION", lambda d: False)
    given_up.cancel()
    await qmp.execute("migrate")
    assert await asyncio.wait_for(done, TIMEOUT) == {"status": "completed"}
    assert [e["data"]["status"] for e in qmp.events] == ["active", "completed"]
    assert qmp.run._pending == {}  # the waiter given up on left nothing behind
