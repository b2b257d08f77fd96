/// The VM state machine: every operation from every state, and the guard's message.
import ShuruHelperCore
import XCTest

final class StateMachineTests: XCTestCase {
    /// A machine driven into `state` through legal operations.
    func machine(in state: VMState) throws -> VMStateMachine {
        var m = VMStateMachine()
        let paths: [VMState: [(HelperOperation, Bool)]] = [
            .unconfigured: [],
            .created: [(.create, true)],
            .running: [(.create, true), (.start, true)],
            .paused: [(.create, true), (.start, true), (.pause, true)],
            .stopped: [(.create, true), (.start, true), (.stop, true)],
            .error: [(.create, true), (.start, false)],
        ]
        for (op, ok) in paths[state]! {
            try m.begin(op)
            m.finish(op, succeeded: ok)
        }
        XCTAssertEqual(m.state, state)
        return m
    }

    func testLegalPathsThroughEveryOperation() throws {
        var m = VMStateMachine()
        let steps: [(HelperOperation, Bool, VMState?, VMState)] = [
            (.create, true, nil, .created),
            (.start, true, .starting, .running),
            (.pause, true, .pausing, .paused),
            (.saveState, true, .saving, .paused),
            (.saveState, false, .saving, .paused),
            (.resume, true, .resuming, .running),
            (.pause, false, .pausing, .running),
            (.stop, true, .stopping, .stopped),
        ]
        for (op, ok, during, after) in steps {
            XCTAssertEqual(try m.begin(op), during, "\(op)")
            XCTAssertEqual(m.state, during ?? m.state)
            m.finish(op, succeeded: ok)
            XCTAssertEqual(m.state, after, "\(op) \(ok)")
        }
    }

    func testRestoreLandsPausedOrBackInCreated() throws {
        var m = try machine(in: .created)
        try m.begin(.restoreState)
        XCTAssertEqual(m.state, .restoring)
        m.finish(.restoreState, succeeded: false)
        XCTAssertEqual(m.state, .created)
        try m.begin(.restoreState)
        m.finish(.restoreState, succeeded: true)
        XCTAssertEqual(m.state, .paused)
    }

    func testEveryOperationIsGuardedInEveryStableState() throws {
        for state in [VMState.unconfigured, .created, .running, .paused, .stopped, .error] {
            for op in HelperOperation.allCases {
                guard let rule = VMStateMachine.transition(op) else { continue }
                var m = try machine(in: state)
                if rule.required.contains(state) {
                    XCTAssertNoThrow(try m.begin(op), "\(op) in \(state)")
                } else {
                    XCTAssertThrowsError(try m.begin(op), "\(op) in \(state)") { error in
                        let e = error as! HelperError
                        XCTAssertEqual(e.code, .state)
                        XCTAssertTrue(e.message.contains("the VM is \(state.rawValue)"), e.message)
                        XCTAssertEqual(e.evidence.first?.1, .string(state.rawValue))
                    }
                    XCTAssertEqual(m.state, state, "a refused operation changes nothing")
                }
            }
        }
    }

    func testGuardMessageNamesActualAndRequiredStates() throws {
        var m = try machine(in: .running)
        XCTAssertThrowsError(try m.begin(.resume)) { error in
            XCTAssertEqual((error as! HelperError).message, "cannot resume: the VM is running, it must be paused")
        }
        var s = try machine(in: .stopped)
        XCTAssertThrowsError(try s.begin(.stop)) { error in
            XCTAssertEqual((error as! HelperError).message,
                           "cannot stop: the VM is stopped, it must be created, running, paused or error")
        }
    }

    func testMachineStoppingByItself() throws {
        var m = try machine(in: .running)
        XCTAssertEqual(m.machineStopped(failed: false), .stopped)
        var p = try machine(in: .paused)
        XCTAssertEqual(p.machineStopped(failed: true), .error)
        var c = try machine(in: .created)
        XCTAssertNil(c.machineStopped(failed: false))
    }

    func testAStopUnderWayDecidesItself() throws {
        var m = try machine(in: .running)
        try m.begin(.stop)
        XCTAssertNil(m.machineStopped(failed: true))
        XCTAssertEqual(m.state, .stopping)
        m.finish(.stop, succeeded: true)
        XCTAssertEqual(m.state, .stopped)
    }

    func testAnOperationFinishingAfterTheMachineStoppedChangesNothing() throws {
        var m = try machine(in: .running)
        try m.begin(.pause)
        m.machineStopped(failed: false)
        XCTAssertNil(m.finish(.pause, succeeded: true))
        XCTAssertEqual(m.state, .stopped)
    }
}
