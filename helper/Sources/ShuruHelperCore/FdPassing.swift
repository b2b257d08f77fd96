/// Passing file descriptors over a Unix socket (SCM_RIGHTS), so a guest connection reaches
/// Python as its own fd and its data never detours through the helper.
///
/// Swift cannot use the CMSG_* macros, so the control-message layout is computed here: a
/// `cmsghdr` padded to the platform's alignment (size_t on Linux, 4 bytes on Darwin), then the
/// fds. A descriptor rides on the first byte of the data it is sent with; the receiver gets it
/// with whichever `recvmsg` returns that byte.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum FdPassing {
    #if os(Linux)
    private static let alignment = MemoryLayout<Int>.size
    private static let rightsType = Int32(SCM_RIGHTS)
    private static let receiveFlags = Int32(MSG_CMSG_CLOEXEC)
    #else
    private static let alignment = MemoryLayout<UInt32>.size
    private static let rightsType = SCM_RIGHTS
    private static let receiveFlags: Int32 = 0
    #endif

    private static func align(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }
    private static var headerSize: Int { align(MemoryLayout<cmsghdr>.size) }
    private static func space(fds: Int) -> Int { headerSize + align(fds * MemoryLayout<Int32>.size) }

    /// Send `bytes` with `fd` attached (if given) in one sendmsg; the rest of the bytes, if
    /// the kernel took only part, go out with plain sends. The caller keeps ownership of `fd`.
    public static func send(_ socket: Int32, _ bytes: [UInt8], passing fd: Int32?) throws {
        var offset = 0
        if let fd = fd {
            offset = try sendFirst(socket, bytes, fd: fd)
        }
        while offset < bytes.count {
            let n = try bytes[offset...].withUnsafeBytes { buf in
                try retrying("send") { sysSend(socket, buf.baseAddress, buf.count, Posix.sendFlags) }
            }
            offset += n
        }
    }

    private static func sendFirst(_ socket: Int32, _ bytes: [UInt8], fd: Int32) throws -> Int {
        precondition(!bytes.isEmpty, "a descriptor must travel with at least one byte")
        var control = [UInt8](repeating: 0, count: space(fds: 1))
        var payload = bytes
        return try payload.withUnsafeMutableBytes { data in
            try control.withUnsafeMutableBytes { ctl in
                let header = ctl.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
                header.pointee.cmsg_len = .init(headerSize + MemoryLayout<Int32>.size)
                header.pointee.cmsg_level = SOL_SOCKET
                header.pointee.cmsg_type = rightsType
                ctl.storeBytes(of: fd, toByteOffset: headerSize, as: Int32.self)
                var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return try withUnsafeMutablePointer(to: &iov) { iovPtr in
                    var msg = msghdr()
                    msg.msg_iov = iovPtr
                    msg.msg_iovlen = 1
                    msg.msg_control = ctl.baseAddress
                    msg.msg_controllen = .init(ctl.count)
                    return try retrying("sendmsg") { sendmsg(socket, &msg, Posix.sendFlags) }
                }
            }
        }
    }

    /// Receive up to `maxBytes` and any descriptors that came with them (close-on-exec).
    /// Returns no bytes at end of stream. Descriptors beyond `maxFds` would be lost by the
    /// kernel, so a truncated control message is an error (after closing what did arrive).
    public static func receive(_ socket: Int32, maxBytes: Int = 65536,
                               maxFds: Int = 4) throws -> (bytes: [UInt8], fds: [Int32]) {
        var data = [UInt8](repeating: 0, count: maxBytes)
        var control = [UInt8](repeating: 0, count: space(fds: maxFds))
        var fds: [Int32] = []
        var truncated = false
        let count = try data.withUnsafeMutableBytes { buf in
            try control.withUnsafeMutableBytes { ctl -> Int in
                var iov = iovec(iov_base: buf.baseAddress, iov_len: buf.count)
                let n = try withUnsafeMutablePointer(to: &iov) { iovPtr -> Int in
                    var msg = msghdr()
                    msg.msg_iov = iovPtr
                    msg.msg_iovlen = 1
                    msg.msg_control = ctl.baseAddress
                    msg.msg_controllen = .init(ctl.count)
                    let n = try retrying("recvmsg") { recvmsg(socket, &msg, receiveFlags) }
                    truncated = (msg.msg_flags & Int32(MSG_CTRUNC)) != 0
                    fds = parseRights(UnsafeRawBufferPointer(rebasing: ctl[0..<Int(msg.msg_controllen)]))
                    return n
                }
                return n
            }
        }
        #if !os(Linux)
        for fd in fds { try? Posix.setCloexec(fd) }
        #endif
        if truncated {
            fds.forEach(Posix.closeQuietly)
            throw SystemError("recvmsg: descriptors were truncated", errno: EMSGSIZE)
        }
        return (Array(data[0..<count]), fds)
    }

    private static func parseRights(_ control: UnsafeRawBufferPointer) -> [Int32] {
        var fds: [Int32] = []
        var offset = 0
        while offset + headerSize <= control.count {
            let header = control.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
            let length = Int(header.cmsg_len)
            guard length >= headerSize, offset + length <= control.count else { break }
            if header.cmsg_level == SOL_SOCKET && header.cmsg_type == rightsType {
                let count = (length - headerSize) / MemoryLayout<Int32>.size
                for i in 0..<count {
                    fds.append(control.loadUnaligned(
                        fromByteOffset: offset + headerSize + i * MemoryLayout<Int32>.size, as: Int32.self))
                }
            }
            offset += align(length)
        }
        return fds
    }
}

#if canImport(Glibc)
private let sysSend = Glibc.send
#else
private let sysSend = Darwin.send
#endif
