/// The VM's run state and the rules for moving between states: pure data and functions, so
/// every transition is tested without a VM or a socket.
///
/// Each operation names the states it may start from, the transitional state it passes
/// through, and where it lands on success and on failure. An operation asked for in any other
/// state is refused with an `ESTATE` error that names the actual and the required states.
/// A machine that stops by itself (guest power-off, crash, the process driver's agent exiting)
/// moves to `stopped` or `error` from wherever it was, except while a `stop` is under way:
/// then the stop's own completion decides.

public enum VMState: String, CaseIterable {
    case unconfigured, created, starting, running, pausing, paused, resuming
    case saving, restoring, stopping, stopped, error
}

public struct Transition: Equatable {
    public let required: [VMState]
    public let during: VMState?
    public let success: VMState
    public let failure: VMState
}

public struct VMStateMachine {
    public private(set) var state: VMState = .unconfigured

    public init() {}

    /// The rule for each operation that changes state (`hello` and `connect` do not; `connect`
    /// only needs `running`).
    public static func transition(_ op: HelperOperation) -> Transition? {
        switch op {
        case .hello:
            return nil
        case .create:
            return Transition(required: [.unconfigured], during: nil, success: .created, failure: .unconfigured)
        case .start:
            return Transition(required: [.created], during: .starting, success: .running, failure: .error)
        case .restoreState:
            // A failed restore leaves a machine that never ran: the caller may still boot it.
            return Transition(required: [.created], during: .restoring, success: .paused, failure: .created)
        case .pause:
            return Transition(required: [.running], during: .pausing, success: .paused, failure: .running)
        case .resume:
            return Transition(required: [.paused], during: .resuming, success: .running, failure: .paused)
        case .saveState:
            // Saving needs a paused machine and leaves it paused either way.
            return Transition(required: [.paused], during: .saving, success: .paused, failure: .paused)
        case .stop:
            return Transition(required: [.created, .running, .paused, .error], during: .stopping,
                              success: .stopped, failure: .error)
        case .connect:
            return Transition(required: [.running], during: nil, success: .running, failure: .running)
        }
    }

    /// Check that `op` may run now; enter its transitional state. Returns the new state if it
    /// changed.
    @discardableResult
    public mutating func begin(_ op: HelperOperation) throws -> VMState? {
        guard let rule = Self.transition(op) else { return nil }
        guard rule.required.contains(state) else {
            let names = rule.required.map(\.rawValue)
            let needed = names.count == 1 ? names[0]
                : names.dropLast().joined(separator: ", ") + " or " + names.last!
            throw HelperError(.state, "cannot \(op.rawValue): the VM is \(state.rawValue), it must be \(needed)",
                              evidence: [("state", .string(state.rawValue)),
                                         ("required", .array(names.map { .string($0) }))])
        }
        return move(to: rule.during)
    }

    /// `op` finished. Its outcome applies only if the machine is still in the operation's
    /// transitional state: a machine that stopped meanwhile stays stopped.
    @discardableResult
    public mutating func finish(_ op: HelperOperation, succeeded: Bool) -> VMState? {
        guard let rule = Self.transition(op) else { return nil }
        if let during = rule.during, state != during { return nil }
        return move(to: succeeded ? rule.success : rule.failure)
    }

    /// The machine stopped on its own; `failed` when it stopped with an error.
    @discardableResult
    public mutating func machineStopped(failed: Bool) -> VMState? {
        switch state {
        case .unconfigured, .created, .stopping, .stopped, .error:
            return nil
        default:
            return move(to: failed ? .error : .stopped)
        }
    }

    private mutating func move(to next: VMState?) -> VMState? {
        guard let next = next, next != state else { return nil }
        state = next
        return next
    }
}
