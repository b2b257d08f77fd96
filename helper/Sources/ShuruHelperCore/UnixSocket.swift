/// Unix stream sockets: listen on a path, accept, connect, socketpair. Every fd is
/// close-on-exec and never raises SIGPIPE.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum UnixSocket {
    /// A listening socket bound to `path`. A stale socket file left at `path` is replaced; any
    /// other file there is an error (the path is ours to choose, never a user's file).
    public static func listen(path: String, backlog: Int32 = 1) throws -> Int32 {
        var (addr, length) = try address(path)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & mode_t(S_IFMT)) == mode_t(S_IFSOCK) else {
                throw SystemError("bind(\(path)): exists and is not a socket", errno: EEXIST)
            }
            unlink(path)
        }
        let fd = try newSocket()
        do {
            _ = try withUnsafePointer(to: &addr) { ptr in
                try ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try retrying("bind(\(path))") { bind(fd, sa, length) }
                }
            }
            try retrying("listen") { sysListen(fd, backlog) }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// Accept one connection; the new fd is close-on-exec. (accept4 is not exposed to Swift;
    /// the helper accepts before it ever spawns, so no child can inherit the fd meanwhile.)
    public static func accept(_ listener: Int32) throws -> Int32 {
        let fd = try retrying("accept") { sysAccept(listener, nil, nil) }
        try Posix.setCloexec(fd)
        Posix.noSigpipe(fd)
        return fd
    }

    /// Connect to a listening socket at `path`.
    public static func connect(path: String) throws -> Int32 {
        var (addr, length) = try address(path)
        let fd = try newSocket()
        do {
            _ = try withUnsafePointer(to: &addr) { ptr in
                try ptr.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    try retrying("connect(\(path))") { sysConnect(fd, sa, length) }
                }
            }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    /// A connected pair of stream sockets.
    public static func pair() throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        #if os(Linux)
        let type = Posix.streamSocket | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw SystemError("socketpair") }
        #else
        guard socketpair(AF_UNIX, Posix.streamSocket, 0, &fds) == 0 else { throw SystemError("socketpair") }
        try fds.forEach(Posix.setCloexec)
        #endif
        fds.forEach(Posix.noSigpipe)
        return (fds[0], fds[1])
    }

    /// Wait until `fd` is readable or `timeout` seconds pass; true if readable.
    public static func waitReadable(_ fd: Int32, timeout: Double) throws -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ms = Int32(max(0, min(timeout * 1000, Double(Int32.max))))
        let ready = try retrying("poll") { poll(&entry, 1, ms) }
        return ready > 0
    }

    private static func newSocket() throws -> Int32 {
        #if os(Linux)
        let fd = socket(AF_UNIX, Posix.streamSocket | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError("socket") }
        #else
        let fd = socket(AF_UNIX, Posix.streamSocket, 0)
        if fd < 0 { throw SystemError("socket") }
        try Posix.setCloexec(fd)
        #endif
        Posix.noSigpipe(fd)
        return fd
    }

    private static func address(_ path: String) throws -> (sockaddr_un, socklen_t) {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw SystemError("socket path \(path) (\(bytes.count) bytes, limit \(capacity - 1))",
                              errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        #if canImport(Darwin)
        addr.sun_len = UInt8(MemoryLayout<sockaddr_un>.size)
        #endif
        return (addr, socklen_t(MemoryLayout<sockaddr_un>.size))
    }
}

// `listen`, `connect` and `accept` are shadowed by the methods above inside `UnixSocket`.
#if canImport(Glibc)
private let sysListen = Glibc.listen
private let sysConnect = Glibc.connect
private let sysAccept = Glibc.accept
#else
private let sysListen = Darwin.listen
private let sysConnect = Darwin.connect
private let sysAccept = Darwin.accept
#endif
