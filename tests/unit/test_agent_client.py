"""The host's agent client (`shuru.agent_client`): every message the host builds is the
golden vectors' (protocol/vectors/agent.json), and every answer it parses is checked."""

import pytest

from tests import vectors

from shuru import agent_client as agent
from shuru.errors import ExecError, GuestFileNotFoundError, ProtocolError
from shuru_guest import wire

VECTORS = {case["name"]: case for case in vectors.load("agent")["valid"]}


def _golden(name: str) -> dict:
    """A vector's value, decoded from its frame (so the bytes are what is compared)."""
    case = VECTORS[name]
    [value] = wire.FrameDecoder().feed(bytes.fromhex(case["frame"]))
    assert value == vectors.value(case["value"])
    return value


BUILT = {
    "host hello": lambda: agent.hello(),
    "ping": lambda: agent.ping(7),
    "exec piped": lambda: agent.exec_(["sh", "-c", "echo hi"], env={"A": "b"}, cwd="/root",
                                      stdin=True),
    "exec tty": lambda: agent.exec_(["/bin/sh"], tty=True, rows=40, cols=120),
    "stdin data binary": lambda: agent.data(0, bytes(range(256)) * 2),
    "eof stdin": lambda: agent.eof(0),
    "credit": lambda: agent.credit(1, 262144),
    "signal group": lambda: agent.signal(15),
    "resize": lambda: agent.resize(50, 200),
    "shutdown": lambda: agent.shutdown(),
    "net enable": lambda: agent.net(ca_bundle="/etc/ssl/certs/shuru-ca-bundle.pem"),
    "connection close": lambda: agent.close(),
    "dns answer": lambda: agent.dns_answer(vectors.value(VECTORS["dns answer"]["value"])["d"]),
    "park": lambda: agent.park(),
    "resume": lambda: agent.resume(bytes(range(16)), 1796135340865254647),
    "port forward connect": lambda: agent.tcp_connect(8000),
    "port forward data to server": lambda: agent.data(0, b"GET /\r\n"),
    "fs walk": lambda: agent.fs("walk", "/app"),
    "fs symlink": lambda: agent.fs("symlink", "/app/link", target="../etc/hosts"),
    "read with limit": lambda: agent.read("/data/huge", 1048576),
    "mount a host folder": lambda: agent.mount("/app", rw=False),
    "mount lookup answer": lambda: agent.fsreply(42, {"value": [
        1234, 33188, 1, 11, 8, 1700000000000000000, 1700000000000000000,
        1700000000000000000]}),
    "mount read answer": lambda: agent.fsreply(43, {"value": b"print('hi')\n"}),
    "mount failed op": lambda: agent.fsreply(45, {"err": "ENOENT"}),
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_request_the_host_builds_is_the_golden_frame(name):
    golden = _golden(name)
    if name == "stdin data binary":
        golden = dict(golden, d=golden["d"])
        built = agent.data(0, golden["d"])
    else:
        built = BUILT[name]()
    msg = {**built, "s": golden["s"]}
    assert msg == golden
    # and what it encodes to decodes back to the same value, as the guest will read it
    assert wire.FrameDecoder().feed(b"".join(wire.request_frames(msg))) == [golden]


def test_every_host_request_type_is_in_the_vectors():
    built = {BUILT[name]()["t"] for name in BUILT}
    sent = {"hello", "ping", "exec", "data", "eof", "credit", "signal", "resize", "shutdown",
            "net", "close", "dns", "park", "resume", "tcp_connect", "fs", "read", "mount",
            "fsreply"}
    assert sent <= built


def test_unset_fields_are_left_to_the_guest():
    assert agent.exec_(["true"]) == {"t": "exec", "argv": ["true"]}
    assert agent.net() == {"t": "net"}
    assert agent.exec_(["true"], env={}, cwd="/") == {"t": "exec", "argv": ["true"], "env": {},
                                                      "cwd": "/"}


def test_resume_carries_fresh_entropy_and_the_clock():
    a, b = agent.resume(), agent.resume()
    assert len(a["entropy"]) == agent.RESUME_ENTROPY and a["entropy"] != b["entropy"]
    assert isinstance(a["time_ns"], int) and a["time_ns"] > 1_700_000_000 * 10**9
    for size in (agent.MIN_ENTROPY - 1, agent.MAX_ENTROPY + 1):
        with pytest.raises(ValueError):
            agent.resume(b"x" * size, 1)


def test_an_unknown_fs_op_is_never_sent():
    with pytest.raises(ValueError):
        agent.fs("format", "/")


# ---- parsing answers --------------------------------------------------------------------------


def _msg(t, s=1, **fields):
    return {"t": t, "s": s, **fields}


def test_hello_is_checked():
    assert agent.parse_hello(_golden("guest hello"))["pid"] == 1
    with pytest.raises(ProtocolError, match="before hello"):
        agent.parse_hello(_msg("started", 0, pid=1))
    with pytest.raises(ProtocolError, match="version 9"):
        agent.parse_hello(_msg("hello", 0, version=9))


def test_exec_answers():
    assert agent.parse_started(_golden("started"), ["sh"]) == 42
    with pytest.raises(ExecError, match="working directory /nope"):
        agent.parse_started(_golden("error"), ["sh"])
    with pytest.raises(ProtocolError, match="answered exec of 'sh' with 'result'"):
        agent.parse_started(_msg("result", value=None), ["sh"])
    assert agent.exec_output(_golden("stdout data"))["d"] == b"hi\n"
    assert agent.exec_output(_msg("eof", fd=1)) is None
    for t, fields in [("started", {"pid": 1}), ("result", {"value": None}),
                      ("event", {"kind": "create", "path": "/x"})]:
        with pytest.raises(ProtocolError, match="running process"):
            agent.exec_output(_msg(t, **fields))


def test_exit_status():
    assert agent.exit_status(_golden("exit code")) == (3, None)
    assert agent.exit_status(_golden("exit signal")) == (137, 9)
    for code, sig in [(None, None), (0, 9), (None, 0), (None, 200)]:
        with pytest.raises(ProtocolError):
            agent.exit_status(_msg("exit", code=code, signal=sig))


ENTRY = {"name": "a", "path": "/a", "type": "file", "size": 1, "mode": 0o644, "mtime": 0,
         "uid": 0, "gid": 0}


@pytest.mark.parametrize("op,value", [
    ("stat", ENTRY), ("exists", True), ("list", {"count": 2}), ("walk", {"count": 0}),
    ("mkdir", None), ("remove", None), ("rename", None), ("copy", None), ("chmod", None),
    ("symlink", None)])
def test_each_fs_ops_value_is_accepted(op, value):
    expected = value["count"] if op in ("list", "walk") else value
    assert agent.parse_value(op, "/a", value) == expected


@pytest.mark.parametrize("op,value", [
    ("stat", {"name": "a"}), ("stat", None), ("exists", "yes"), ("exists", 1),
    ("list", None), ("walk", {"count": -1}), ("list", {"count": True}), ("mkdir", 5),
    ("remove", {"size": 1}), ("symlink", "x")])
def test_a_value_of_the_wrong_shape_is_a_protocol_error(op, value):
    with pytest.raises(ProtocolError, match=op if op != "stat" else "entry"):
        agent.parse_value(op, "/a", value)


def test_result_answers():
    assert agent.parse_result(_golden("listing result"), "walk", "/app") == {"count": 2}
    with pytest.raises(GuestFileNotFoundError):
        agent.parse_result(_msg("error", code="ENOENT", message="gone"), "stat", "/a")
    for t, fields in [("started", {"pid": 1}), ("exit", {"code": 0, "signal": None}),
                      ("data", {"fd": 1, "d": b""}), ("fsop", {"id": 1, "op": "lookup"})]:
        with pytest.raises(ProtocolError, match=f"answered stat of /a with '{t}'"):
            agent.parse_result(_msg(t, **fields), "stat", "/a")
    assert agent.parse_size({"size": 3}, "read") == 3
    for bad in (None, {"size": "3"}, {"size": -1}, {"size": False}, [3]):
        with pytest.raises(ProtocolError):
            agent.parse_size(bad, "read")


def test_watch_events():
    msg = _msg("event", kind="rename", path="/a", dest="/b", is_dir=True)
    assert agent.parse_event(msg, "/") == ("rename", "/a", "/b", True)
    assert agent.parse_event(_msg("result", value=None), "/") is None
    with pytest.raises(ProtocolError, match="kind 'explode'"):
        agent.parse_event(_msg("event", kind="explode", path="/a"), "/")
    with pytest.raises(ProtocolError, match="'started' on the watch"):
        agent.parse_event(_msg("started", pid=1), "/")


def test_network_and_mount_answers():
    assert agent.parse_net(_msg("result", value=None)) is None
    assert agent.parse_net(_msg("error", code="ENET", message="no nft")) == "no nft"
    with pytest.raises(ProtocolError):
        agent.parse_net(_msg("started", pid=1))
    assert agent.parse_mount_ready(_golden("mount ready")["value"]) == \
        "/run/shuru/mounts/9/layer/upper"
    assert agent.parse_mount_ready(None) is None
    assert agent.parse_mount_ready({"upper": None}) is None
    for bad in ({"upper": 5}, "upper", [1]):
        with pytest.raises(ProtocolError):
            agent.parse_mount_ready(bad)
    assert agent.parse_fsop(_golden("mount lookup"))["id"] == 42
    assert agent.parse_fsop(_msg("result", value=None)) is None
    assert agent.parse_fsop(_msg("fsop", id=True, op="lookup")) is None


def test_port_connection_answers():
    assert agent.parse_tcp_answer(_golden("port forward connected")) is True
    assert agent.parse_tcp_answer(_golden("port forward refused")) is False
    assert agent.parse_tcp_answer(_golden("port forward data to server")) is None
    with pytest.raises(ProtocolError, match="tcp_connect with 'exit'"):
        agent.parse_tcp_answer(_msg("exit", code=0, signal=None))


def test_control_acknowledgements_pair_with_their_requests():
    assert agent.ack_key(agent.ping(7)) == agent.ack_key(_msg("pong", 0, id=7))
    assert agent.ack_key(agent.park()) == agent.ack_key(_golden("parked"))
    assert agent.ack_key(agent.shutdown()) == agent.ack_key(_golden("shutdown"))
