/// Request dispatch through the `Controller` with a scripted machine: replies, state events
/// and their order, guards, version checks, fd hand-over, and shutdown.
import ShuruHelperCore
import ShuruWire
import Dispatch
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Collects what the controller sends; a passed fd is duplicated, as the kernel would.
final class RecordingOutbox: Outbox {
    private let lock = TestLock()
    private var sent: [(MsgValue, Int32?)] = []

    func send(_ message: MsgValue, passing fd: Int32?) {
        lock.run { sent.append((message, fd.map { dup($0) })) }
    }

    /// Wait (up to `timeout` s) until `done` holds for what was sent; return it all.
    func wait(timeout: Double = 5, until done: ([(MsgValue, Int32?)]) -> Bool) -> [(MsgValue, Int32?)] {
        let deadline = DispatchTime.now() + timeout
        while DispatchTime.now() < deadline {
            let snapshot = lock.run { sent }
            if done(snapshot) { return snapshot }
            usleep(1000)
        }
        return lock.run { sent }
    }

    func messages(atLeast count: Int) -> [(MsgValue, Int32?)] { wait { $0.count >= count } }

    func replies(atLeast count: Int) -> [(MsgValue, Int32?)] {
        wait { $0.filter { $0.0["id"] != nil }.count >= count }
    }
}

final class TestLock {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    func run<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }
}

final class ScriptedMachine: VirtualMachine {
    let machineID: [UInt8] = [9, 9]
    weak var events: VirtualMachineEvents?
    var failures: [String: HelperError] = [:]
    var calls: [String] = []

    private func complete(_ name: String, _ done: Completion<Void>) {
        calls.append(name)
        done(failures[name].map { .failure($0) } ?? .success(()))
    }

    func start(_ done: @escaping Completion<Void>) { complete("start", done) }
    func stop(graceSeconds: Double, _ done: @escaping Completion<Void>) { complete("stop", done) }
    func pause(_ done: @escaping Completion<Void>) { complete("pause", done) }
    func resume(_ done: @escaping Completion<Void>) { complete("resume", done) }
    func saveState(to path: String, _ done: @escaping Completion<Void>) { complete("save", done) }
    func restoreState(from path: String, _ done: @escaping Completion<Void>) { complete("restore", done) }
    func connect(port: UInt32, _ done: @escaping Completion<Int32>) {
        calls.append("connect \(port)")
        var fds: [Int32] = [-1, -1]
        pipe(&fds)
        close(fds[1])
        done(.success(fds[0]))
    }
}

struct ScriptedDriver: MachineDriver {
    let name = "scripted"
    var capabilities = DriverCapabilities(saveState: true, pause: true)
    let machine = ScriptedMachine()

    func makeMachine(_ config: MachineConfig, events: VirtualMachineEvents) throws -> VirtualMachine {
        machine.events = events
        return machine
    }
}

final class ControllerTests: XCTestCase {
    let config: MsgValue = ["kernel": "/k", "initrd": .null, "disk": "/d", "cpus": 1, "memory_mb": 256,
                            "cmdline": "", "network": "none", "agent_port": 1024, "console": true]

    func request(_ id: Int64, _ op: String, _ fields: [(String, MsgValue)] = []) -> MsgValue {
        .object([("id", .int(id)), ("op", .string(op))] + fields)
    }

    /// Send requests one by one, each after the previous one's reply; return everything sent.
    func run(_ requests: [MsgValue], driver: ScriptedDriver = ScriptedDriver()) -> [MsgValue] {
        let outbox = RecordingOutbox()
        let controller = Controller(driver: driver, outbox: outbox)
        for (i, req) in requests.enumerated() {
            XCTAssertTrue(controller.handle(req))
            _ = outbox.replies(atLeast: i + 1)
        }
        return outbox.replies(atLeast: requests.count).map(\.0)
    }

    func testHelloCreateStartConnectPauseStop() {
        let sent = run([request(1, "hello", [("version", 1)]), request(2, "create", [("config", config)]),
                        request(3, "start"), request(4, "pause"), request(5, "stop")])
        let expected: [MsgValue] = [
            ["id": 1, "ok": true, "version": 1, "helper": .string(HelperProtocol.helperVersion),
             "driver": "scripted", "capabilities": ["save_state": true, "pause": true]],
            ["event": "state", "state": "created"],
            ["id": 2, "ok": true, "machine_id": .binary([9, 9])],
            ["event": "state", "state": "starting"], ["event": "state", "state": "running"],
            ["id": 3, "ok": true],
            ["event": "state", "state": "pausing"], ["event": "state", "state": "paused"],
            ["id": 4, "ok": true],
            ["event": "state", "state": "stopping"], ["event": "state", "state": "stopped"],
            ["id": 5, "ok": true],
        ]
        XCTAssertEqual(sent, expected)
    }

    func testConnectReplyCarriesTheDescriptor() throws {
        let outbox = RecordingOutbox()
        let controller = Controller(driver: ScriptedDriver(), outbox: outbox)
        let requests = [request(1, "hello", [("version", 1)]), request(2, "create", [("config", config)]),
                        request(3, "start"), request(4, "connect", [("port", 1024)])]
        for (i, req) in requests.enumerated() {
            XCTAssertTrue(controller.handle(req))
            _ = outbox.replies(atLeast: i + 1)
        }
        let sent = outbox.replies(atLeast: 4)
        let connect = try XCTUnwrap(sent.first { $0.0["id"] == 4 })
        XCTAssertEqual(connect.0, ["id": 4, "ok": true])
        let fd = try XCTUnwrap(connect.1)
        XCTAssertGreaterThanOrEqual(fcntl(fd, F_GETFD), 0, "the passed fd is a live descriptor")
        close(fd)
        XCTAssertEqual(sent.filter { $0.1 != nil }.count, 1, "only the connect reply carries an fd")
    }

    func testEverythingButHelloNeedsHelloFirst() {
        let sent = run([request(1, "start")])
        XCTAssertEqual(sent.first?["error"]?["code"], "ESTATE")
        XCTAssertTrue(sent.first?["error"]?["message"]?.stringValue?.contains("hello") ?? false)
    }

    func testVersionMismatchNamesBothVersions() {
        let sent = run([request(1, "hello", [("version", 99)])])
        let error = sent.first?["error"]
        XCTAssertEqual(error?["code"], "EVERSION")
        XCTAssertEqual(error?["version"], .int(HelperProtocol.version))
        let message = error?["message"]?.stringValue ?? ""
        XCTAssertTrue(message.contains("version 99") && message.contains("version \(HelperProtocol.version)"), message)
    }

    func testGuardedOperationNamesStates() {
        let sent = run([request(1, "hello", [("version", 1)]), request(2, "create", [("config", config)]),
                        request(3, "pause")])
        let error = sent.last?["error"]
        XCTAssertEqual(error?["code"], "ESTATE")
        XCTAssertEqual(error?["state"], "created")
        XCTAssertEqual(error?["required"], ["running"])
        XCTAssertEqual(error?["message"], "cannot pause: the VM is created, it must be running")
    }

    func testBadRequestsAreAnsweredOrEndTheConnection() {
        let controller = Controller(driver: ScriptedDriver(), outbox: RecordingOutbox())
        XCTAssertFalse(controller.handle(["op": "hello", "version": 1]), "no id: nothing to answer")
        XCTAssertFalse(controller.handle(["id": -1, "op": "hello"]))
        XCTAssertFalse(controller.handle([1, 2]))
        let sent = run([request(7, "reboot"), request(8, "hello", [("version", "1")])])
        XCTAssertEqual(sent.map { $0["error"]?["code"] }, ["EINVAL", "EINVAL"])
        XCTAssertEqual(sent.map { $0["id"] }, [7, 8])
    }

    func testDriverFailureLandsInTheFailureStateAndIsReported() {
        let driver = ScriptedDriver()
        driver.machine.failures["start"] = HelperError(.driver, "no kernel")
        let sent = run([request(1, "hello", [("version", 1)]), request(2, "create", [("config", config)]),
                        request(3, "start")], driver: driver)
        let expected: [MsgValue] = [
            ["event": "state", "state": "starting"], ["event": "state", "state": "error"],
            ["id": 3, "ok": false, "error": ["code": "EDRIVER", "message": "no kernel"]],
        ]
        XCTAssertEqual(Array(sent.suffix(3)), expected)
    }

    func testUnsupportedOperationsSaySo() {
        var driver = ScriptedDriver()
        driver.capabilities = DriverCapabilities(saveState: false, pause: true)
        let sent = run([request(1, "hello", [("version", 1)]), request(2, "save_state", [("path", "/x")])], driver: driver)
        XCTAssertEqual(sent.last?["error"]?["code"], "EUNSUPPORTED")
    }

    func testStopIsIdempotent() {
        let sent = run([request(1, "hello", [("version", 1)]), request(2, "stop"),
                        request(3, "create", [("config", config)]), request(4, "start"),
                        request(5, "stop"), request(6, "stop")])
        XCTAssertEqual(sent.filter { $0["id"] != nil }.map { $0["ok"] }, [true, true, true, true, true, true])
    }

    func testMachineStoppingByItselfIsAnEventWithItsReason() {
        let driver = ScriptedDriver()
        let outbox = RecordingOutbox()
        let controller = Controller(driver: driver, outbox: outbox)
        for req in [request(1, "hello", [("version", 1)]), request(2, "create", [("config", config)]),
                    request(3, "start")] {
            _ = controller.handle(req)
        }
        _ = outbox.messages(atLeast: 6)
        driver.machine.events?.machineConsole(line: "login:")
        driver.machine.events?.machineStopped(error: "kernel panic")
        let sent = outbox.messages(atLeast: 8).map(\.0)
        let expected: [MsgValue] = [
            ["event": "console", "line": "login:"],
            ["event": "state", "state": "error", "message": "kernel panic"],
        ]
        XCTAssertEqual(Array(sent.suffix(2)), expected)
        XCTAssertEqual(controller.state, .error)
    }

    func testShutdownStopsARunningMachine() {
        let driver = ScriptedDriver()
        let outbox = RecordingOutbox()
        let controller = Controller(driver: driver, outbox: outbox)
        for req in [request(1, "hello", [("version", 1)]), request(2, "create", [("config", config)]),
                    request(3, "start")] {
            _ = controller.handle(req)
        }
        _ = outbox.messages(atLeast: 6)
        let done = expectation(description: "shutdown")
        controller.shutdown { done.fulfill() }
        wait(for: [done], timeout: 5)
        XCTAssertEqual(driver.machine.calls, ["start", "stop"])
    }
}
