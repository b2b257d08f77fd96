/// The test driver (`--driver process`): instead of a VM, the guest agent runs as a host
/// process, so the whole path from Python through the helper's socket and fd passing to the
/// agent can be tested on Linux.
///
/// `start` spawns `agent_command` (`{fd}` in it becomes 3) with one end of a socketpair as fd 3,
/// in its own process group, stdin from /dev/null and stdout/stderr as its "console". The other
/// end is what `connect` hands out — once: the agent serves one connection per process, as a
/// VM's agent serves one vsock port. Pause and resume are SIGSTOP/SIGCONT of the group; saving
/// machine state is not possible. `stop` kills the group (SIGTERM first when given a grace
/// period). The agent exiting by itself is the machine stopping by itself.
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct ProcessDriver: MachineDriver {
    /// The fd number the agent finds its channel on.
    public static let agentFd: Int32 = 3

    public let name = "process"
    public let capabilities = DriverCapabilities(saveState: false, pause: true)

    public init() {}

    public func makeMachine(_ config: MachineConfig, events: VirtualMachineEvents) throws -> VirtualMachine {
        guard let command = config.agentCommand, !command.isEmpty else {
            throw HelperError(.invalid, "the process driver needs create.config.agent_command: the guest "
                + "agent's argv, with {fd} standing for its channel's fd number")
        }
        let argv = command.map { $0.replacing("{fd}", with: String(Self.agentFd)) }
        let id = config.machineID ?? (0..<16).map { _ in UInt8.random(in: .min ... .max) }
        return ProcessMachine(argv: argv, machineID: id, events: events)
    }
}

final class ProcessMachine: VirtualMachine {
    let argv: [String]
    let machineID: [UInt8]
    private weak var events: VirtualMachineEvents?
    private let queue = DispatchQueue(label: "shuru.process-machine")
    // All below only on `queue`.
    private var pid: pid_t = 0
    private var hostEnd: Int32 = -1
    private var exited = false
    private var stopping = false
    private var stopWaiters: [Completion<Void>] = []

    init(argv: [String], machineID: [UInt8], events: VirtualMachineEvents) {
        self.argv = argv
        self.machineID = machineID
        self.events = events
    }

    deinit { Posix.closeQuietly(hostEnd) }

    func start(_ done: @escaping Completion<Void>) {
        queue.async {
            do {
                try self.spawn()
                done(.success(()))
            } catch {
                done(.failure(HelperError(.driver, "cannot start the agent \(self.argv): \(error)")))
            }
        }
    }

    private func spawn() throws {
        let (host, agent) = try UnixSocket.pair()
        defer { Posix.closeQuietly(agent) }
        let console = try Posix.pipe()
        defer { Posix.closeQuietly(console.write) }
        let devnull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { Posix.closeQuietly(devnull) }
        do {
            pid = try Spawn.start(argv, fds: [0: devnull, 1: console.write, 2: console.write,
                                              ProcessDriver.agentFd: agent])
        } catch {
            Posix.closeQuietly(host)
            Posix.closeQuietly(console.read)
            throw error
        }
        hostEnd = host
        ConsoleReader.start(fd: console.read, label: "shuru.process-console") { [weak self] line in
            self?.events?.machineConsole(line: line)
        }
        let child = pid
        DispatchQueue(label: "shuru.process-wait").async { self.waitForExit(child) }
    }

    /// Runs on its own thread. The exit is noted (`exited`) before the child is reaped, so a
    /// signal sent while `exited` is false can never reach a recycled pid.
    private func waitForExit(_ child: pid_t) {
        var info = siginfo_t()
        while waitid(P_PID, id_t(child), &info, WEXITED | WNOWAIT) != 0 && currentErrno() == EINTR {}
        queue.sync { self.exited = true }
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 && currentErrno() == EINTR {}
        let final = status
        queue.async { self.didExit(status: final) }
    }

    private func didExit(status: Int32) {
        Posix.closeQuietly(hostEnd)
        hostEnd = -1
        if stopping {
            let waiters = stopWaiters
            stopWaiters = []
            waiters.forEach { $0(.success(())) }
            return
        }
        events?.machineStopped(error: Self.describe(status))
    }

    /// nil for a clean exit (status 0), else what ended the agent.
    static func describe(_ status: Int32) -> String? {
        let signal = status & 0x7f
        if signal == 0 {
            let code = (status >> 8) & 0xff
            return code == 0 ? nil : "the agent exited with status \(code)"
        }
        return "the agent was killed by signal \(signal)"
    }

    func stop(graceSeconds: Double, _ done: @escaping Completion<Void>) {
        queue.async {
            guard self.pid > 0, !self.exited else { return done(.success(())) }
            self.stopping = true
            self.stopWaiters.append(done)
            if graceSeconds > 0 {
                self.signalGroup(SIGTERM)
                self.signalGroup(SIGCONT)  // a paused agent must run to handle SIGTERM
                self.queue.asyncAfter(deadline: .now() + graceSeconds) { self.signalGroup(SIGKILL) }
            } else {
                self.signalGroup(SIGKILL)
            }
        }
    }

    func pause(_ done: @escaping Completion<Void>) {
        queue.async { done(self.signalGroup(SIGSTOP)) }
    }

    func resume(_ done: @escaping Completion<Void>) {
        queue.async { done(self.signalGroup(SIGCONT)) }
    }

    func saveState(to path: String, _ done: @escaping Completion<Void>) {
        done(.failure(HelperError(.unsupported, "the process driver cannot save machine state")))
    }

    func restoreState(from path: String, _ done: @escaping Completion<Void>) {
        done(.failure(HelperError(.unsupported, "the process driver cannot restore machine state")))
    }

    func connect(port: UInt32, _ done: @escaping Completion<Int32>) {
        queue.async {
            guard self.hostEnd >= 0 else {
                let why = self.exited ? "the agent has exited" : "its one connection was already handed out"
                return done(.failure(HelperError(.busy, "cannot connect to the agent: \(why)")))
            }
            let fd = self.hostEnd
            self.hostEnd = -1
            done(.success(fd))
        }
    }

    @discardableResult
    private func signalGroup(_ sig: Int32) -> Result<Void, HelperError> {
        guard pid > 0, !exited else {
            return .failure(HelperError(.driver, "the agent is not running"))
        }
        if killpg(pid, sig) != 0 {
            return .failure(HelperError(.driver, "\(SystemError("killpg(\(pid))"))"))
        }
        return .success(())
    }
}
