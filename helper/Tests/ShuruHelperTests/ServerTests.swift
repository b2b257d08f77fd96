/// The whole helper core over a real Unix socket: a client connects, greets, creates and
/// starts a process-driver machine, receives the agent's channel as a descriptor, and the
/// server shuts down when the client goes away.
import ShuruHelperCore
import ShuruWire
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A blocking test client for the helper protocol.
final class TestClient {
    let fd: Int32
    private var reader = FrameReader()
    private var fds: [Int32] = []

    init(path: String) throws { fd = try UnixSocket.connect(path: path) }

    deinit { close(fd) }

    func send(_ message: MsgValue) throws { try FdPassing.send(fd, try Frame.encode(message), passing: nil) }

    /// The next message, with the descriptor that came with it, if any.
    func next() throws -> (MsgValue, Int32?)? {
        while true {
            if let message = try reader.next() {
                let isConnectReply = message["ok"] == true && !fds.isEmpty
                return (message, isConnectReply ? fds.removeFirst() : nil)
            }
            guard try UnixSocket.waitReadable(fd, timeout: 10) else { return nil }
            let (bytes, more) = try FdPassing.receive(fd)
            if bytes.isEmpty { return nil }
            reader.feed(bytes)
            fds += more
        }
    }

    /// Messages up to and including the reply to `id`.
    func reply(to id: Int64) throws -> [(MsgValue, Int32?)] {
        var seen: [(MsgValue, Int32?)] = []
        while let message = try next() {
            seen.append(message)
            if message.0["id"]?.intValue == id { return seen }
        }
        XCTFail("no reply to \(id); got \(seen.map(\.0))")
        return seen
    }
}

final class ServerTests: XCTestCase {
    func socketPath() -> String { "/tmp/shuru-helper-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

    func testServeOneClientEndToEnd() throws {
        let path = socketPath()
        let server = Server(socketPath: path, driver: ProcessDriver(), acceptTimeout: 10)
        try server.listen()
        let exited = expectation(description: "server exits")
        var status: Int32 = -1
        server.serve { status = $0; exited.fulfill() }

        let client = try TestClient(path: path)
        try client.send(["id": 1, "op": "hello", "version": .int(HelperProtocol.version)])
        XCTAssertEqual(try client.reply(to: 1).last?.0["driver"], "process")
        XCTAssertNotEqual(access(path, F_OK), 0, "the socket path is unlinked once the client is in")

        let config: MsgValue = ["kernel": "/k", "initrd": .null, "disk": "/d", "cpus": 1, "memory_mb": 256,
                                "cmdline": "", "network": "none", "agent_port": 1024, "console": true,
                                "agent_command": ["/bin/sh", "-c", "echo booted >&2; cat <&3 >&3", "agent"]]
        try client.send(["id": 2, "op": "create", "config": config])
        XCTAssertEqual(try client.reply(to: 2).last?.0["ok"], true)
        try client.send(["id": 3, "op": "start"])
        let started = try client.reply(to: 3).map(\.0)
        XCTAssertEqual(started.last, ["id": 3, "ok": true])
        XCTAssertTrue(started.contains(["event": "state", "state": "running"]))

        try client.send(["id": 4, "op": "connect", "port": 1024])
        let connected = try client.reply(to: 4)
        let channel = try XCTUnwrap(connected.last?.1, "the connect reply carries the agent's channel")
        // The stand-in agent echoes: bytes go straight to it, not through the helper.
        XCTAssertEqual(write(channel, "ping", 4), 4)
        var buffer = [UInt8](repeating: 0, count: 8)
        XCTAssertEqual(read(channel, &buffer, 8), 4)
        XCTAssertEqual(Array(buffer[0..<4]), Array("ping".utf8))
        close(channel)

        // Closing the channel ends the echoing agent: the machine stops by itself.
        var events: [MsgValue] = connected.map(\.0)
        while !events.contains(where: { $0["state"] == "stopped" }), let (message, _) = try client.next() {
            events.append(message)
        }
        XCTAssertTrue(events.contains(["event": "console", "line": "booted"]), "\(events)")
        XCTAssertTrue(events.contains(["event": "state", "state": "stopped"]), "\(events)")

        close(client.fd)  // the owner goes away: the helper stops and exits
        wait(for: [exited], timeout: 10)
        XCTAssertEqual(status, 0)
    }

    func testGarbageFromTheClientEndsTheHelper() throws {
        let path = socketPath()
        let server = Server(socketPath: path, driver: ProcessDriver(), acceptTimeout: 10)
        try server.listen()
        let exited = expectation(description: "server exits")
        var status: Int32 = -1
        server.serve { status = $0; exited.fulfill() }
        let fd = try UnixSocket.connect(path: path)
        defer { close(fd) }
        try FdPassing.send(fd, [0, 0, 0, 0], passing: nil)  // a zero-length frame
        wait(for: [exited], timeout: 10)
        XCTAssertEqual(status, 2)
    }

    func testNoClientMeansExit() throws {
        let server = Server(socketPath: socketPath(), driver: ProcessDriver(), acceptTimeout: 0.2)
        try server.listen()
        let exited = expectation(description: "server exits")
        server.serve { XCTAssertEqual($0, 1); exited.fulfill() }
        wait(for: [exited], timeout: 10)
    }

    func testListeningRefusesToReplaceANonSocket() throws {
        let path = socketPath()
        let fd = open(path, O_CREAT | O_WRONLY, 0o600)
        close(fd)
        defer { unlink(path) }
        XCTAssertThrowsError(try Server(socketPath: path, driver: ProcessDriver()).listen())
    }
}
