/// Length-prefixed frames, identical to `guest/wire.py`: a 4-byte big-endian payload length,
/// 1 ≤ length ≤ `Frame.maxPayload`, then that many bytes holding one msgpack value.
///
/// Both shuru protocols (guest agent and helper) use this framing. A length outside the range
/// is an error as soon as the header arrives, so a peer can never make us wait for, or buffer,
/// more than one maximal frame.
public enum Frame {
    public static let headerSize = 4
    /// 64 KiB of data per chunk plus 4 KiB for the map around it (`MAX_FRAME` in wire.py).
    public static let maxPayload = 64 * 1024 + 4096

    /// One value as a whole frame (header + payload).
    public static func encode(_ value: MsgValue) throws -> [UInt8] {
        let payload = MsgPack.encode(value)
        guard payload.count <= maxPayload else {
            throw WireError("frame of \(payload.count) bytes exceeds the \(maxPayload)-byte limit")
        }
        var frame: [UInt8] = []
        frame.reserveCapacity(headerSize + payload.count)
        appendBigEndian(UInt32(payload.count), into: &frame)
        frame.append(contentsOf: payload)
        return frame
    }
}

/// Incremental frame splitter: feed bytes as they arrive, take whole decoded values out.
public struct FrameReader {
    private var buffer: [UInt8] = []
    private var start = 0
    public let maxPayload: Int
    public let limits: MsgPack.Limits

    public init(maxPayload: Int = Frame.maxPayload, limits: MsgPack.Limits = .default) {
        self.maxPayload = maxPayload
        self.limits = limits
    }

    public mutating func feed<S: Sequence>(_ bytes: S) where S.Element == UInt8 {
        // Drop consumed bytes before growing, so the buffer stays about one frame long.
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole frame's value, nil if more bytes are needed. Throws on a bad length or
    /// undecodable payload; the stream cannot be resynchronised after that.
    public mutating func next() throws -> MsgValue? {
        guard buffer.count - start >= Frame.headerSize else { return nil }
        var length = 0
        for i in 0..<Frame.headerSize { length = length << 8 | Int(buffer[start + i]) }
        guard length >= 1 && length <= maxPayload else {
            throw WireError("frame length \(length) outside 1..\(maxPayload)")
        }
        let end = start + Frame.headerSize + length
        guard buffer.count >= end else { return nil }
        let payload = Array(buffer[(start + Frame.headerSize)..<end])
        start = end
        return try MsgPack.decode(payload, limits: limits)
    }

    /// Bytes buffered that do not yet form a whole frame.
    public var pending: Int { buffer.count - start }
}
