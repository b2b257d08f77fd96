/// Guest console output as lines: the bytes a VM's serial console (or the process driver's
/// agent stderr) writes, split into lines for `console` events.
///
/// The guest is untrusted, so a line is cut at `maxLine` bytes rather than buffered forever,
/// and invalid UTF-8 is replaced (U+FFFD) since events carry text.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch

public struct LineSplitter {
    public let maxLine: Int
    private var partial: [UInt8] = []

    public init(maxLine: Int = 4096) {
        self.maxLine = maxLine
    }

    /// The complete lines in `bytes` (plus what was buffered), without their line endings.
    public mutating func feed<S: Sequence>(_ bytes: S) -> [String] where S.Element == UInt8 {
        var lines: [String] = []
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append(take())
            } else {
                partial.append(byte)
                if partial.count >= maxLine { lines.append(take()) }
            }
        }
        return lines
    }

    /// What is left when the stream ends, if anything.
    public mutating func finish() -> String? {
        partial.isEmpty ? nil : take()
    }

    private mutating func take() -> String {
        if partial.last == UInt8(ascii: "\r") { partial.removeLast() }
        defer { partial.removeAll(keepingCapacity: true) }
        return String(decoding: partial, as: UTF8.self)
    }
}

/// Reads a console fd on its own thread until end of file and hands each line to `onLine`;
/// the fd is closed at the end. Used by both drivers.
public enum ConsoleReader {
    public static func start(fd: Int32, label: String, onLine: @escaping (String) -> Void,
                             onEnd: @escaping () -> Void = {}) {
        DispatchQueue(label: label).async {
            var splitter = LineSplitter()
            var buffer = [UInt8](repeating: 0, count: 16384)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && currentErrno() == EINTR { continue }
                if n <= 0 { break }
                splitter.feed(buffer[0..<n]).forEach(onLine)
            }
            if let last = splitter.finish() { onLine(last) }
            close(fd)
            onEnd()
        }
    }
}
