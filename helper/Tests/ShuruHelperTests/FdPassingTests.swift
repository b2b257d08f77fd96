/// SCM_RIGHTS over a real socketpair: the descriptor arrives with the first byte of its
/// message, works on the receiving side, and the bytes around it are intact.
import ShuruHelperCore
import ShuruWire
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class FdPassingTests: XCTestCase {
    func testDescriptorTravelsWithItsFrame() throws {
        let (a, b) = try UnixSocket.pair()
        defer { close(a); close(b) }
        var pipeFds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&pipeFds), 0)
        defer { close(pipeFds[0]) }

        let before = try Frame.encode(["event": "console", "line": "x"])
        let reply = try Frame.encode(["id": 4, "ok": true])
        try FdPassing.send(a, before, passing: nil)
        try FdPassing.send(a, reply, passing: pipeFds[1])
        close(pipeFds[1])  // the sender's copy: the receiver now holds the only write end

        var received: [UInt8] = []
        var fds: [Int32] = []
        while received.count < before.count + reply.count {
            let (chunk, more) = try FdPassing.receive(b)
            received += chunk
            fds += more
        }
        XCTAssertEqual(received, before + reply)
        XCTAssertEqual(fds.count, 1)
        let passed = fds[0]
        XCTAssertNotEqual(fcntl(passed, F_GETFD) & FD_CLOEXEC, 0, "received fds are close-on-exec")
        XCTAssertEqual(write(passed, "hi", 2), 2)
        close(passed)
        var buffer = [UInt8](repeating: 0, count: 8)
        XCTAssertEqual(read(pipeFds[0], &buffer, 8), 2)
        XCTAssertEqual(Array(buffer[0..<2]), Array("hi".utf8))
        XCTAssertEqual(read(pipeFds[0], &buffer, 8), 0, "no copy of the write end is left anywhere")
    }

    func testEndOfStreamIsEmpty() throws {
        let (a, b) = try UnixSocket.pair()
        close(a)
        defer { close(b) }
        let (bytes, fds) = try FdPassing.receive(b)
        XCTAssertTrue(bytes.isEmpty)
        XCTAssertTrue(fds.isEmpty)
    }

    func testWritingToAVanishedPeerIsAnErrorNotASignal() throws {
        let (a, b) = try UnixSocket.pair()
        close(b)
        defer { close(a) }
        XCTAssertThrowsError(try FdPassing.send(a, [1, 2, 3], passing: nil))
        XCTAssertThrowsError(try FdPassing.send(a, [1, 2, 3], passing: 0))
    }
}
