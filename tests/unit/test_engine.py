"""The run state the three protocol engines share (`shuru.engine`), and the one credit rule
of the agent channel (`channel.Inflow`, `channel.Outflow`)."""

import pytest

from shuru.channel import Inflow, Outflow
from shuru.engine import Runstate, RunState
from shuru.errors import ProtocolError, SandboxDiedError, ShuruError
from shuru_guest import wire


async def test_require_names_the_state_it_wanted():
    run = RunState("the thing")
    run.require(Runstate.IDLE)
    with pytest.raises(ShuruError, match="the thing is idle, not running"):
        run.require(Runstate.RUNNING)
    run.enter(Runstate.RUNNING)
    run.require(Runstate.CONNECTING, Runstate.RUNNING)


async def test_failing_ends_every_pending_request_with_its_own_copy_of_the_error():
    run = RunState("the thing")
    run.enter(Runstate.RUNNING)
    a, b = run.expect("a"), run.expect(("b", 1))
    assert run.fail(ProtocolError("nonsense from the peer"))
    assert not run.fail(SandboxDiedError("later"))  # the first error wins
    for fut in (a, b):
        with pytest.raises(ProtocolError, match="nonsense"):
            fut.result()
    assert a.exception() is not b.exception()
    assert run.state is Runstate.CLOSED and not run.is_open
    # Whatever comes later fails at once with the same error.
    with pytest.raises(ProtocolError, match="nonsense"):
        run.require(Runstate.RUNNING)
    with pytest.raises(ProtocolError, match="nonsense"):
        run.expect("c")
    run.enter(Runstate.RUNNING)  # a closed connection stays closed
    assert run.state is Runstate.CLOSED


async def test_any_other_error_is_reported_as_the_peers_death():
    run = RunState("the thing", gone="it is gone")
    assert str(run.closed_error()) == "it is gone"
    run.fail(OSError("broken pipe"))
    err = run.closed_error()
    assert isinstance(err, SandboxDiedError) and "the thing failed: broken pipe" in str(err)


async def test_answers_settle_their_request_once():
    run = RunState("the thing")
    fut = run.expect(7)
    with pytest.raises(ShuruError, match="already waiting"):
        run.expect(7)
    assert run.take(7) is fut and run.take(7) is None
    fut.set_result("x")
    run.expect(8).cancel()
    assert run.take(8) is None  # given up on: its late answer is dropped
    run.forget(8)
    assert run._pending == {}


def test_the_guest_may_send_a_window_beyond_what_was_granted_back():
    flow = Inflow()
    flow.receive(wire.WINDOW, "s")
    with pytest.raises(ProtocolError, match="beyond"):
        flow.receive(1, "s")
    # Consumed bytes are granted back in quarter windows, and only then count as room.
    assert flow.consume(wire.WINDOW // 4 - 1) == 0
    with pytest.raises(ProtocolError):
        flow.receive(1, "s")
    assert flow.consume(1) == wire.WINDOW // 4
    flow.receive(wire.WINDOW // 4, "s")
    with pytest.raises(ProtocolError):
        flow.receive(1, "s")
    # Discarding grants back everything received and not yet consumed.
    assert flow.consume_all() == wire.WINDOW
    assert flow.outstanding == 0


async def test_the_host_sends_only_within_the_guests_credit():
    flow = Outflow()
    assert flow.take(10 * wire.WINDOW) == wire.CHUNK
    while flow.credit:
        flow.take(wire.CHUNK)
    assert flow.take(1) == 0
    flow.grant(-5)  # a negative grant is no grant
    assert flow.credit == 0
    flow.grant(2**62)
    assert flow.credit == 2**40
