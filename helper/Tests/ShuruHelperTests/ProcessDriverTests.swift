/// The process driver with a shell script standing in for the agent: console lines, the
/// one-time channel hand-over, pause/resume, the agent exiting by itself, and stop.
import ShuruHelperCore
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class EventLog: VirtualMachineEvents {
    private let lock = TestLock()
    private var lines: [String] = []
    private var stops: [String?] = []

    func machineStopped(error: String?) { lock.run { stops.append(error) } }
    func machineConsole(line: String) { lock.run { lines.append(line) } }

    func wait<T>(_ timeout: Double = 10, _ probe: () -> T?) -> T? {
        let deadline = DispatchTime.now() + timeout
        while DispatchTime.now() < deadline {
            if let value = lock.run(probe) { return value }
            usleep(5000)
        }
        return nil
    }

    func waitForLine(_ line: String) -> Bool { wait { lines.contains(line) ? true : nil } ?? false }
    func waitForStop() -> String?? { wait { stops.first } }
}

final class ProcessDriverTests: XCTestCase {
    func machine(_ script: String, events: EventLog) throws -> VirtualMachine {
        let config = MachineConfig(kernel: "/k", disk: "/d", agentCommand: ["/bin/sh", "-c", script, "agent", "{fd}"])
        return try ProcessDriver().makeMachine(config, events: events)
    }

    func outcome<T>(_ call: (@escaping Completion<T>) -> Void) -> Result<T, HelperError> {
        let done = DispatchSemaphore(value: 0)
        var outcome: Result<T, HelperError>!
        call { outcome = $0; done.signal() }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        return outcome
    }

    func testAgentGetsItsChannelOnTheNamedFd() throws {
        let events = EventLog()
        // $1 is "3": the script writes to the fd it was told about, then logs to stderr.
        let vm = try machine(#"printf 'hello from fd %s' "$1" >&3; echo "console says hi" >&2; sleep 30"#,
                             events: events)
        XCTAssertNoThrow(try outcome(vm.start).get())
        XCTAssertTrue(events.waitForLine("console says hi"))

        let fd = try outcome { vm.connect(port: 1024, $0) }.get()
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buffer, 64)
        XCTAssertEqual(String(decoding: buffer[0..<max(n, 0)], as: UTF8.self), "hello from fd 3")

        guard case .failure(let second) = outcome({ vm.connect(port: 1024, $0) }) else {
            return XCTFail("a second connect must be refused")
        }
        XCTAssertEqual(second.code, .busy)

        XCTAssertNoThrow(try outcome { vm.stop(graceSeconds: 0, $0) }.get())
        XCTAssertNil(events.wait(0.3) { () -> Bool? in nil }, "stopping is not a stop-by-itself event")
    }

    func testPauseResumeAndGracefulStop() throws {
        let events = EventLog()
        let vm = try machine(#"trap 'echo got TERM >&2; exit 0' TERM; echo up >&2; while :; do sleep 0.05; done"#,
                             events: events)
        XCTAssertNoThrow(try outcome(vm.start).get())
        XCTAssertTrue(events.waitForLine("up"))
        XCTAssertNoThrow(try outcome(vm.pause).get())
        XCTAssertNoThrow(try outcome(vm.resume).get())
        XCTAssertNoThrow(try outcome { vm.stop(graceSeconds: 5, $0) }.get())
        XCTAssertTrue(events.waitForLine("got TERM"))
    }

    func testAgentExitingIsTheMachineStopping() throws {
        let events = EventLog()
        let vm = try machine("exit 3", events: events)
        XCTAssertNoThrow(try outcome(vm.start).get())
        XCTAssertEqual(events.waitForStop(), .some("the agent exited with status 3"))
        XCTAssertNoThrow(try outcome { vm.stop(graceSeconds: 0, $0) }.get(), "stopping a stopped machine is fine")
    }

    func testSaveStateIsUnsupported() throws {
        let vm = try machine("true", events: EventLog())
        guard case .failure(let error) = outcome({ vm.saveState(to: "/tmp/x", $0) }) else { return XCTFail() }
        XCTAssertEqual(error.code, .unsupported)
    }

    func testMissingAgentCommandIsRefused() {
        XCTAssertThrowsError(try ProcessDriver().makeMachine(MachineConfig(kernel: "/k", disk: "/d"),
                                                             events: EventLog())) { error in
            XCTAssertEqual((error as? HelperError)?.code, .invalid)
        }
    }

    func testUnknownProgramFailsToStart() throws {
        let config = MachineConfig(kernel: "/k", disk: "/d", agentCommand: ["/no/such/agent"])
        let vm = try ProcessDriver().makeMachine(config, events: EventLog())
        if case .failure(let error) = outcome(vm.start) {
            XCTAssertEqual(error.code, .driver)
            XCTAssertTrue(error.message.contains("/no/such/agent"), error.message)
        } else {
            // glibc may report a failed exec as an immediate exit 127 instead.
        }
    }
}
