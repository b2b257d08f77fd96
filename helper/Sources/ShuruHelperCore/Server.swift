/// The helper's life: listen on the socket path, serve exactly one client, and end when that
/// client goes away.
///
/// One client only, because the helper belongs to one Python owner: once it connects, the
/// path is unlinked so nobody else can. When the connection ends — the owner closed it, or
/// died and the kernel closed it — the VM is stopped and the helper exits; that is how the
/// helper dies with its owner on macOS, where there is no parent-death signal. An owner that
/// never connects is given `acceptTimeout` seconds.
import Dispatch
import ShuruWire
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class Server {
    public let socketPath: String
    private let driver: MachineDriver
    private let acceptTimeout: Double
    private var listener: Int32 = -1
    private var connection: Connection?
    private var controller: Controller?
    private let exitLock = Lock()
    private var exiting = false
    private var onExit: (Int32) -> Void = { _ in }

    public init(socketPath: String, driver: MachineDriver, acceptTimeout: Double = 30) {
        self.socketPath = socketPath
        self.driver = driver
        self.acceptTimeout = acceptTimeout
    }

    /// Bind and listen. Once this returns, a client may connect.
    public func listen() throws {
        listener = try UnixSocket.listen(path: socketPath)
    }

    /// Accept the client and serve it on background threads. `onExit` is called once, with
    /// the exit status, when the helper should end (its machine already stopped).
    public func serve(onExit: @escaping (Int32) -> Void) {
        self.onExit = onExit
        DispatchQueue(label: "shuru.helper.accept").async { self.acceptAndServe() }
    }

    /// End the helper from outside (SIGTERM): stop the machine, then exit.
    public func terminate(status: Int32 = 0) {
        if let controller = exitLock.withLock({ self.controller }) {
            controller.shutdown { self.exit(status) }
        } else {
            exit(status)
        }
    }

    private func acceptAndServe() {
        let fd: Int32
        do {
            guard try UnixSocket.waitReadable(listener, timeout: acceptTimeout) else {
                logLine("no client connected to \(socketPath) within \(acceptTimeout) s; exiting")
                return exit(1)
            }
            fd = try UnixSocket.accept(listener)
        } catch {
            logLine("cannot accept a client on \(socketPath): \(error)")
            return exit(1)
        }
        close(listener)
        listener = -1
        unlink(socketPath)
        let connection = Connection(fd: fd)
        let controller = Controller(driver: driver, outbox: connection)
        exitLock.withLock {
            self.connection = connection
            self.controller = controller
        }
        connection.readLoop(onMessage: controller.handle) { problem in
            if let problem = problem { logLine(problem) }
            controller.shutdown { self.exit(problem == nil ? 0 : 2) }
        }
    }

    private func exit(_ status: Int32) {
        let first: Bool = exitLock.withLock {
            defer { exiting = true }
            return !exiting
        }
        guard first else { return }
        if listener >= 0 {
            close(listener)
            unlink(socketPath)
        }
        onExit(status)
    }
}
