/// One Virtualization.framework VM behind the `VirtualMachine` protocol.
///
/// A `VZVirtualMachine` may only be touched on the queue it was created with; every method
/// here hops onto `queue` first, and the framework calls back (completions and delegate) on
/// that same queue, which is what makes the plain stored state below safe.
#if canImport(Virtualization)
import Foundation
import ShuruHelperCore
import Virtualization

final class VZMachine: NSObject, VirtualMachine, VZVirtualMachineDelegate {
    /// How long one vsock connect may go unanswered before it counts as refused: the
    /// framework documents that a connect to a port nobody listens on may simply never
    /// complete, and the client retries until the guest's agent is up.
    static let connectTimeout = 2.0

    let machineID: [UInt8]
    private weak var events: VirtualMachineEvents?
    private let queue = DispatchQueue(label: "shuru.vz")
    private var vm: VZVirtualMachine!
    // Only on `queue`.
    private var stopping = false
    private var stopWaiters: [Completion<Void>] = []

    init(config: MachineConfig, events: VirtualMachineEvents) throws {
        self.events = events
        let identifier: VZGenericMachineIdentifier
        if let saved = config.machineID {
            guard let restored = VZGenericMachineIdentifier(dataRepresentation: Data(saved)) else {
                throw HelperError(.invalid, "create.config.machine_id is not a machine identifier this helper produced")
            }
            identifier = restored
        } else {
            identifier = VZGenericMachineIdentifier()
        }
        machineID = [UInt8](identifier.dataRepresentation)

        let console = try Posix.pipe()
        let configuration: VZVirtualMachineConfiguration
        do {
            configuration = try VZConfigurationBuilder.make(
                config, identifier: identifier,
                consoleOutput: FileHandle(fileDescriptor: console.write, closeOnDealloc: true))
        } catch {
            Posix.closeQuietly(console.read)
            throw error
        }
        super.init()
        queue.sync {
            vm = VZVirtualMachine(configuration: configuration, queue: queue)
            vm.delegate = self
        }
        ConsoleReader.start(fd: console.read, label: "shuru.vz-console") { [weak self] line in
            self?.events?.machineConsole(line: line)
        }
    }

    // MARK: - Operations

    func start(_ done: @escaping Completion<Void>) {
        queue.async {
            self.vm.start { result in
                done(result.mapError { Self.failure("start the VM", $0) })
            }
        }
    }

    func pause(_ done: @escaping Completion<Void>) {
        queue.async {
            self.vm.pause { result in done(result.mapError { Self.failure("pause the VM", $0) }) }
        }
    }

    func resume(_ done: @escaping Completion<Void>) {
        queue.async {
            self.vm.resume { result in done(result.mapError { Self.failure("resume the VM", $0) }) }
        }
    }

    func stop(graceSeconds: Double, _ done: @escaping Completion<Void>) {
        queue.async {
            if self.vm.state == .stopped || self.vm.state == .error {
                return done(.success(()))
            }
            self.stopWaiters.append(done)
            if self.stopping { return }  // the stop under way completes this one too
            self.stopping = true
            if graceSeconds > 0, self.vm.canRequestStop, (try? self.vm.requestStop()) != nil {
                self.queue.asyncAfter(deadline: .now() + graceSeconds) {
                    if self.stopping { self.forceStop() }
                }
            } else {
                self.forceStop()
            }
        }
    }

    /// On `queue`. A machine still starting (or pausing...) cannot be stopped yet; try again
    /// shortly rather than fail, since a stop must always end the VM.
    private func forceStop() {
        guard vm.canStop else {
            if vm.state == .stopped || vm.state == .error { return finishStop(nil) }
            queue.asyncAfter(deadline: .now() + 0.1) { self.forceStop() }
            return
        }
        vm.stop { error in
            let failure: HelperError? = error.map { Self.failure("stop the VM", $0) }
            self.queue.async { self.finishStop(failure) }
        }
    }

    private func finishStop(_ error: HelperError?) {
        guard stopping else { return }
        stopping = false
        let waiters = stopWaiters
        stopWaiters = []
        let outcome: Result<Void, HelperError> = error.map { .failure($0) } ?? .success(())
        waiters.forEach { $0(outcome) }
    }

    func saveState(to path: String, _ done: @escaping Completion<Void>) {
        #if arch(arm64)
        if #available(macOS 14, *) {
            queue.async {
                self.vm.saveMachineStateTo(url: URL(fileURLWithPath: path)) { error in
                    done(Self.outcome(error, "save the machine state to \(path)"))
                }
            }
            return
        }
        #endif
        done(.failure(HelperError(.unsupported, "saving machine state needs macOS 14 or later on Apple silicon")))
    }

    func restoreState(from path: String, _ done: @escaping Completion<Void>) {
        guard FileManager.default.fileExists(atPath: path) else {
            return done(.failure(HelperError(.notFound, "saved state \(path): no such file",
                                             evidence: [("path", .string(path))])))
        }
        #if arch(arm64)
        if #available(macOS 14, *) {
            queue.async {
                self.vm.restoreMachineStateFrom(url: URL(fileURLWithPath: path)) { error in
                    done(Self.outcome(error, "restore the machine state from \(path)"))
                }
            }
            return
        }
        #endif
        done(.failure(HelperError(.unsupported, "restoring machine state needs macOS 14 or later on Apple silicon")))
    }

    func connect(port: UInt32, _ done: @escaping Completion<Int32>) {
        queue.async {
            guard let device = self.vm.socketDevices.first as? VZVirtioSocketDevice else {
                return done(.failure(HelperError(.driver, "the VM has no vsock device")))
            }
            // Whichever comes first on `queue` answers: the connection or the timeout.
            let answered = Flag()
            self.queue.asyncAfter(deadline: .now() + Self.connectTimeout) {
                if answered.isSet { return }
                answered.isSet = true
                done(.failure(HelperError(.connectRefused,
                    "guest port \(port) did not answer within \(Self.connectTimeout) s")))
            }
            device.connect(toPort: port) { result in
                self.queue.async {
                    if answered.isSet {
                        // Too late: the client was told it failed and will ask again.
                        if case .success(let late) = result { late.close() }
                        return
                    }
                    answered.isSet = true
                    done(Self.handOver(result, port: port))
                }
            }
        }
    }

    /// The connection's own fd is closed with the connection object, so the client gets a
    /// duplicate; the data then flows between the guest and Python without the helper.
    private static func handOver(_ result: Result<VZVirtioSocketConnection, Error>,
                                 port: UInt32) -> Result<Int32, HelperError> {
        switch result {
        case .success(let connection):
            defer { connection.close() }
            do {
                return .success(try Posix.duplicate(connection.fileDescriptor))
            } catch {
                return .failure(HelperError(.driver, "cannot keep the vsock connection: \(error)"))
            }
        case .failure(let error):
            return .failure(HelperError(.connectRefused, "guest port \(port): \(error.localizedDescription)"))
        }
    }

    // MARK: - VZVirtualMachineDelegate (called on `queue`)

    func guestDidStop(_ virtualMachine: VZVirtualMachine) {
        if stopping { return finishStop(nil) }
        events?.machineStopped(error: nil)
    }

    func virtualMachine(_ virtualMachine: VZVirtualMachine, didStopWithError error: Error) {
        if stopping { return finishStop(nil) }
        events?.machineStopped(error: "the VM stopped with an error: \(error.localizedDescription)")
    }

    private static func failure(_ what: String, _ error: Error) -> HelperError {
        HelperError(.driver, "cannot \(what): \(error.localizedDescription)")
    }

    private static func outcome(_ error: Error?, _ what: String) -> Result<Void, HelperError> {
        if let error = error { return .failure(failure(what, error)) }
        return .success(())
    }
}

/// A mutable flag shared by closures that all run on one serial queue.
private final class Flag {
    var isSet = false
}
#endif
