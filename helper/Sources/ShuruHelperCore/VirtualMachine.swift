/// The seam between the helper's core and whatever runs the guest: Virtualization.framework
/// on macOS (`ShuruVZ`), or the agent as a host process on Linux (`ProcessDriver`, for tests).
///
/// Operations complete through callbacks, on any thread, because that is how
/// Virtualization.framework reports them; the `Controller` hops back onto its own queue. The
/// controller's state machine guarantees each operation is only asked for in a state that
/// allows it, so drivers need not re-check.

public typealias Completion<T> = (Result<T, HelperError>) -> Void

public protocol VirtualMachine: AnyObject {
    /// The machine's identity (VZ: the generic machine identifier's data). Restoring saved
    /// state needs the identity the state was saved with, so clients keep it.
    var machineID: [UInt8] { get }

    func start(_ done: @escaping Completion<Void>)
    /// Stop the machine. With `graceSeconds` > 0 the guest is first asked to stop and given
    /// that long; then, or at once, it is stopped by force. Completes once it has stopped.
    func stop(graceSeconds: Double, _ done: @escaping Completion<Void>)
    func pause(_ done: @escaping Completion<Void>)
    func resume(_ done: @escaping Completion<Void>)
    func saveState(to path: String, _ done: @escaping Completion<Void>)
    func restoreState(from path: String, _ done: @escaping Completion<Void>)
    /// Open a connection to a guest port. The fd belongs to the caller, which sends it on and
    /// closes it.
    func connect(port: UInt32, _ done: @escaping Completion<Int32>)
}

/// What a machine reports without being asked. Drivers hold this weakly.
public protocol VirtualMachineEvents: AnyObject {
    /// The machine stopped without a `stop` request. `error` is nil for a clean guest
    /// power-off, otherwise what went wrong.
    func machineStopped(error: String?)
    /// One line of guest console output.
    func machineConsole(line: String)
}

public struct DriverCapabilities: Equatable {
    public var saveState: Bool
    public var pause: Bool

    public init(saveState: Bool, pause: Bool) {
        self.saveState = saveState
        self.pause = pause
    }
}

/// Makes machines of one kind. One driver per helper process, chosen by `--driver`.
public protocol MachineDriver {
    var name: String { get }
    var capabilities: DriverCapabilities { get }
    /// Build (but do not start) a machine. Throws `HelperError` for a configuration this
    /// driver cannot run, naming the problem.
    func makeMachine(_ config: MachineConfig, events: VirtualMachineEvents) throws -> VirtualMachine
}
