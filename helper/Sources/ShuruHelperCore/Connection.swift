/// One client connection: frames in on a reader thread, frames (and descriptors) out from
/// any thread under a lock. Owns the socket fd.
import Dispatch
import ShuruWire
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class Connection: Outbox {
    public let fd: Int32
    private let writeLock = Lock()
    private var broken = false

    public init(fd: Int32) {
        self.fd = fd
    }

    deinit { close(fd) }

    /// Send one message. A peer that went away is not an error here: the reader sees the end
    /// of the stream and shuts the helper down; a message that cannot be encoded is a bug,
    /// reported on stderr.
    public func send(_ message: MsgValue, passing passed: Int32? = nil) {
        let frame: [UInt8]
        do {
            frame = try Frame.encode(message)
        } catch {
            logLine("cannot encode a message: \(error)")
            return
        }
        writeLock.withLock {
            guard !broken else { return }
            do {
                try FdPassing.send(fd, frame, passing: passed)
            } catch {
                broken = true
            }
        }
    }

    /// Read frames until the stream ends or breaks the protocol, calling `onMessage` for each
    /// (on a dedicated thread). `onMessage` returns false to end the connection. `onEnd` gets
    /// nil for a clean end of stream, else why the connection ended.
    public func readLoop(onMessage: @escaping (MsgValue) -> Bool, onEnd: @escaping (String?) -> Void) {
        DispatchQueue(label: "shuru.helper.reader").async {
            var reader = FrameReader()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(self.fd, $0.baseAddress, $0.count) }
                if n < 0 {
                    if currentErrno() == EINTR { continue }
                    return onEnd("reading the control socket failed: \(SystemError("read"))")
                }
                if n == 0 {
                    return onEnd(reader.pending == 0 ? nil : "the client closed the connection mid-frame")
                }
                reader.feed(buffer[0..<n])
                do {
                    while let message = try reader.next() {
                        if !onMessage(message) {
                            return onEnd("request without a usable id: \(message)")
                        }
                    }
                } catch {
                    return onEnd("bad frame from the client: \(error)")
                }
            }
        }
    }
}

/// The helper's diagnostics go to stderr, which Python keeps as `helper.log`.
public func logLine(_ text: String) {
    let line = Array("shuru-helper: \(text)\n".utf8)
    line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}
