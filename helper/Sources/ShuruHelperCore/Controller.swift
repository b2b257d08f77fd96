/// Request dispatch: turns each request into a guarded state transition and a driver call,
/// and answers it. Owns the one machine of this helper and its state machine.
///
/// Everything runs on one serial queue; driver completions and events hop onto it. Replies
/// may therefore come in a different order than requests (a `connect` can be answered while a
/// slow `save_state` is under way): clients match replies by `id`. Each state change is sent
/// as a `state` event before the reply of the request that caused it.
import Dispatch
import ShuruWire
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where messages for the client go. `fd`, if given, travels with the message (SCM_RIGHTS);
/// the sender keeps ownership of it.
public protocol Outbox: AnyObject {
    func send(_ message: MsgValue, passing fd: Int32?)
}

public final class Controller: VirtualMachineEvents {
    private let queue = DispatchQueue(label: "shuru.helper.controller")
    private let driver: MachineDriver
    private weak var outbox: Outbox?
    private var machine: VirtualMachine?
    private var fsm = VMStateMachine()
    private var greeted = false
    private var forwardConsole = false
    private var shuttingDown = false

    public init(driver: MachineDriver, outbox: Outbox) {
        self.driver = driver
        self.outbox = outbox
    }

    /// The current state (for tests and diagnostics).
    public var state: VMState { queue.sync { fsm.state } }

    /// Handle one decoded message from the client. Returns false when it is a fatal protocol
    /// error (no request id to answer): the connection should be closed.
    public func handle(_ message: MsgValue) -> Bool {
        let request: Request
        do {
            request = try Request.parse(message)
        } catch Request.ParseError.refused(let id, let error) {
            queue.async { self.fail(id, error) }
            return true
        } catch {
            return false
        }
        queue.async { self.dispatch(request) }
        return true
    }

    /// The client is gone: stop the machine (quickly) and call `done` once it has stopped,
    /// or after `timeout` seconds if the driver does not answer.
    public func shutdown(timeout: Double = 5, _ done: @escaping () -> Void) {
        queue.async {
            self.shuttingDown = true
            var called = false
            let finish = {
                // Called on `queue` from either path below; only the first counts.
                if called { return }
                called = true
                done()
            }
            guard let machine = self.machine,
                  ![.unconfigured, .stopped].contains(self.fsm.state) else {
                return finish()
            }
            self.queue.asyncAfter(deadline: .now() + timeout) { finish() }
            machine.stop(graceSeconds: 0) { _ in self.queue.async { finish() } }
        }
    }

    // MARK: - Dispatch (on `queue`)

    private func dispatch(_ request: Request) {
        let id = request.id
        if shuttingDown { return }
        if case .hello(let version) = request.body {
            return hello(id, version)
        }
        guard greeted else {
            return fail(id, HelperError(.state, "the client has not said hello; hello must come first"))
        }
        switch request.body {
        case .hello:
            break
        case .create(let config):
            create(id, config)
        case .start:
            run(.start, id) { m, done in m.start(done) }
        case .stop(let grace):
            if machine == nil || fsm.state == .stopped {
                return reply(id)  // nothing to stop: stopping twice is not an error
            }
            run(.stop, id) { m, done in m.stop(graceSeconds: grace, done) }
        case .pause:
            guard driver.capabilities.pause else { return unsupported(id, "pause") }
            run(.pause, id) { m, done in m.pause(done) }
        case .resume:
            guard driver.capabilities.pause else { return unsupported(id, "resume") }
            run(.resume, id) { m, done in m.resume(done) }
        case .saveState(let path):
            guard driver.capabilities.saveState else { return unsupported(id, "save_state") }
            run(.saveState, id) { m, done in m.saveState(to: path, done) }
        case .restoreState(let path):
            guard driver.capabilities.saveState else { return unsupported(id, "restore_state") }
            run(.restoreState, id) { m, done in m.restoreState(from: path, done) }
        case .connect(let port):
            connect(id, port)
        }
    }

    private func hello(_ id: Int64, _ version: Int64) {
        guard version == HelperProtocol.version else {
            return fail(id, HelperError(
                .version,
                "the client speaks helper protocol version \(version), this helper (shuru-helper "
                    + "\(HelperProtocol.helperVersion)) speaks version \(HelperProtocol.version)",
                evidence: [("version", .int(HelperProtocol.version))]))
        }
        greeted = true
        let capabilities = MsgValue.object([("save_state", .bool(driver.capabilities.saveState)),
                                            ("pause", .bool(driver.capabilities.pause))])
        reply(id, [("version", .int(HelperProtocol.version)),
                   ("helper", .string(HelperProtocol.helperVersion)),
                   ("driver", .string(driver.name)), ("capabilities", capabilities)])
    }

    private func create(_ id: Int64, _ config: MachineConfig) {
        do {
            try fsm.begin(.create)
            let made = try driver.makeMachine(config, events: self)
            machine = made
            forwardConsole = config.console
            transitioned(fsm.finish(.create, succeeded: true))
            reply(id, [("machine_id", .binary(made.machineID))])
        } catch let error as HelperError {
            fsm.finish(.create, succeeded: false)
            fail(id, error)
        } catch {
            fsm.finish(.create, succeeded: false)
            fail(id, HelperError(.driver, "\(error)"))
        }
    }

    /// The common shape of a state-changing operation: guard, enter the transitional state,
    /// call the driver, land in the success or failure state, answer.
    private func run(_ op: HelperOperation, _ id: Int64,
                     _ call: (VirtualMachine, @escaping Completion<Void>) -> Void) {
        guard let machine = machine else {
            return fail(id, HelperError(.state, "cannot \(op.rawValue): no VM has been created",
                                        evidence: [("state", .string(fsm.state.rawValue))]))
        }
        do {
            transitioned(try fsm.begin(op))
        } catch let error as HelperError {
            return fail(id, error)
        } catch {
            return fail(id, HelperError(.driver, "\(error)"))
        }
        call(machine) { result in
            self.queue.async {
                switch result {
                case .success:
                    self.transitioned(self.fsm.finish(op, succeeded: true))
                    self.reply(id)
                case .failure(let error):
                    self.transitioned(self.fsm.finish(op, succeeded: false))
                    self.fail(id, error)
                }
            }
        }
    }

    private func connect(_ id: Int64, _ port: UInt32) {
        guard let machine = machine else {
            return fail(id, HelperError(.state, "cannot connect: no VM has been created",
                                        evidence: [("state", .string(fsm.state.rawValue))]))
        }
        do {
            try fsm.begin(.connect)
        } catch let error as HelperError {
            return fail(id, error)
        } catch {
            return fail(id, HelperError(.driver, "\(error)"))
        }
        machine.connect(port: port) { result in
            self.queue.async {
                switch result {
                case .success(let fd):
                    self.outbox?.send(Message.reply(id), passing: fd)
                    close(fd)  // the client has its own copy now
                case .failure(let error):
                    self.fail(id, error)
                }
            }
        }
    }

    private func unsupported(_ id: Int64, _ op: String) {
        fail(id, HelperError(.unsupported, "the \(driver.name) driver cannot \(op)"))
    }

    // MARK: - Events from the machine (any thread)

    public func machineStopped(error: String?) {
        queue.async {
            self.transitioned(self.fsm.machineStopped(failed: error != nil), message: error)
        }
    }

    public func machineConsole(line: String) {
        queue.async {
            if self.forwardConsole { self.outbox?.send(Message.console(line), passing: nil) }
        }
    }

    // MARK: - Sending (on `queue`)

    private func transitioned(_ state: VMState?, message: String? = nil) {
        if let state = state { outbox?.send(Message.state(state, message: message), passing: nil) }
    }

    private func reply(_ id: Int64, _ fields: [(String, MsgValue)] = []) {
        outbox?.send(Message.reply(id, fields), passing: nil)
    }

    private func fail(_ id: Int64, _ error: HelperError) {
        outbox?.send(Message.error(id, error), passing: nil)
    }
}
