/// Thin, checked wrappers over the few libc calls the helper makes, shared by the socket, fd
/// passing and spawn code. They hide the Glibc/Darwin differences and turn `-1` + `errno` into
/// a `SystemError` that names the call.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A failed system call: which call, and errno.
public struct SystemError: Error, CustomStringConvertible {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32 = currentErrno()) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(String(cString: strerror(errno)))" }
}

public func currentErrno() -> Int32 {
    #if canImport(Glibc)
    return Glibc.errno
    #else
    return Darwin.errno
    #endif
}

/// Run a call until it does not fail with EINTR; throw on any other failure.
@discardableResult
func retrying<T: SignedInteger>(_ name: String, _ call: () -> T) throws -> T {
    while true {
        let result = call()
        if result >= 0 { return result }
        let err = currentErrno()
        if err != EINTR { throw SystemError(name, errno: err) }
    }
}

/// The few libc helpers the drivers share (public for `ShuruVZ`).
public enum Posix {
    #if os(Linux)
    static let streamSocket = Int32(SOCK_STREAM.rawValue)
    #else
    static let streamSocket = SOCK_STREAM
    #endif

    /// Mark `fd` close-on-exec: nothing the helper holds may leak into a spawned agent.
    static func setCloexec(_ fd: Int32) throws {
        let flags = fcntl(fd, F_GETFD)
        guard flags >= 0, fcntl(fd, F_SETFD, flags | FD_CLOEXEC) >= 0 else {
            throw SystemError("fcntl(FD_CLOEXEC)")
        }
    }

    /// Sockets must never raise SIGPIPE in the helper (or in the test process that hosts it):
    /// a peer that went away is an error return, handled where it happens.
    static func noSigpipe(_ fd: Int32) {
        #if canImport(Darwin)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
    }

    #if os(Linux)
    static let sendFlags = Int32(MSG_NOSIGNAL)
    #else
    static let sendFlags: Int32 = 0
    #endif

    /// A duplicate of `fd` numbered at least `minimum`, close-on-exec.
    public static func duplicate(_ fd: Int32, atLeast minimum: Int32 = 0) throws -> Int32 {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, minimum)
        if copy < 0 { throw SystemError("fcntl(F_DUPFD_CLOEXEC)") }
        return copy
    }

    /// A pipe whose both ends are close-on-exec. (pipe2 is not exposed to Swift; the gap
    /// before FD_CLOEXEC is harmless because a machine creates its pipes on the same queue
    /// that later spawns its child, and nothing else in the helper spawns.)
    public static func pipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard sysPipe(&fds) == 0 else { throw SystemError("pipe") }
        try fds.forEach(setCloexec)
        return (fds[0], fds[1])
    }

    public static func closeQuietly(_ fd: Int32) {
        if fd >= 0 { _ = close(fd) }
    }
}

/// A mutex for the few pieces of state touched from several threads (a socket's write side).
final class Lock {
    private var mutex = pthread_mutex_t()

    init() { pthread_mutex_init(&mutex, nil) }

    deinit { pthread_mutex_destroy(&mutex) }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

#if canImport(Glibc)
private let sysPipe = Glibc.pipe
#else
private let sysPipe = Darwin.pipe
#endif
