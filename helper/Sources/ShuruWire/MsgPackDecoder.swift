/// msgpack decoding with limits, for input from an untrusted peer.
///
/// A payload must hold exactly one value (trailing bytes are an error, as in msgpack-python's
/// `unpackb`). Nesting depth and container lengths are capped, a declared length is checked
/// against the bytes actually present before anything is allocated, strings must be valid
/// UTF-8, map keys must be str or bin (msgpack-python's `strict_map_key`), and extension
/// types are refused (shuru's protocols use none). Every failure is a
/// `WireError` that says what was wrong and where; nothing traps.

/// A frame or value that breaks the wire format.
public struct WireError: Error, Equatable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

extension MsgPack {
    /// Bounds on what a decoder accepts beyond the frame size itself.
    public struct Limits: Equatable {
        /// Containers nested deeper than this are refused (the top-level value is depth 1).
        public var maxDepth: Int
        /// Arrays and maps with more entries than this are refused.
        public var maxContainerLength: Int

        public init(maxDepth: Int = 32, maxContainerLength: Int = 65536) {
            self.maxDepth = maxDepth
            self.maxContainerLength = maxContainerLength
        }

        public static let `default` = Limits()
    }

    /// Decode exactly one value from `bytes`.
    public static func decode(_ bytes: [UInt8], limits: Limits = .default) throws -> MsgValue {
        var reader = ByteReader(bytes: bytes, limits: limits)
        let value = try reader.value(depth: 1)
        if reader.offset != bytes.count {
            throw WireError("\(bytes.count - reader.offset) trailing bytes after the msgpack value")
        }
        return value
    }
}

private struct ByteReader {
    let bytes: [UInt8]
    let limits: MsgPack.Limits
    var offset = 0

    init(bytes: [UInt8], limits: MsgPack.Limits) {
        self.bytes = bytes
        self.limits = limits
    }

    var remaining: Int { bytes.count - offset }

    mutating func byte() throws -> UInt8 {
        guard offset < bytes.count else { throw truncated(1) }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw truncated(size) }
        var value: T = 0
        for i in 0..<size { value = value << 8 | T(truncatingIfNeeded: bytes[offset + i]) }
        offset += size
        return value
    }

    mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count <= remaining else { throw truncated(count) }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    func truncated(_ wanted: Int) -> WireError {
        WireError("truncated msgpack: need \(wanted) bytes at offset \(offset), have \(remaining)")
    }

    mutating func value(depth: Int) throws -> MsgValue {
        let start = offset
        let type = try byte()
        switch type {
        case 0x00...0x7f: return .int(Int64(type))
        case 0x80...0x8f: return try map(count: Int(type & 0x0f), depth: depth)
        case 0x90...0x9f: return try array(count: Int(type & 0x0f), depth: depth)
        case 0xa0...0xbf: return try string(count: Int(type & 0x1f))
        case 0xc0: return .null
        case 0xc2: return .bool(false)
        case 0xc3: return .bool(true)
        case 0xc4: return try binary(count: Int(try integer(UInt8.self)))
        case 0xc5: return try binary(count: Int(try integer(UInt16.self)))
        case 0xc6: return try binary(count: Int(try integer(UInt32.self)))
        case 0xca: return .float(Double(Float(bitPattern: try integer(UInt32.self))))
        case 0xcb: return .float(Double(bitPattern: try integer(UInt64.self)))
        case 0xcc: return .int(Int64(try integer(UInt8.self)))
        case 0xcd: return .int(Int64(try integer(UInt16.self)))
        case 0xce: return .int(Int64(try integer(UInt32.self)))
        case 0xcf: return .unsigned(try integer(UInt64.self))
        case 0xd0: return .int(Int64(try integer(Int8.self)))
        case 0xd1: return .int(Int64(try integer(Int16.self)))
        case 0xd2: return .int(Int64(try integer(Int32.self)))
        case 0xd3: return .int(try integer(Int64.self))
        case 0xd9: return try string(count: Int(try integer(UInt8.self)))
        case 0xda: return try string(count: Int(try integer(UInt16.self)))
        case 0xdb: return try string(count: Int(try integer(UInt32.self)))
        case 0xdc: return try array(count: Int(try integer(UInt16.self)), depth: depth)
        case 0xdd: return try array(count: Int(try integer(UInt32.self)), depth: depth)
        case 0xde: return try map(count: Int(try integer(UInt16.self)), depth: depth)
        case 0xdf: return try map(count: Int(try integer(UInt32.self)), depth: depth)
        case 0xe0...0xff: return .int(Int64(Int8(bitPattern: type)))
        case 0xc7, 0xc8, 0xc9, 0xd4...0xd8:
            throw WireError("msgpack extension type 0x\(hex(type)) at offset \(start) is not allowed")
        default:  // 0xc1 is never used
            throw WireError("invalid msgpack type byte 0x\(hex(type)) at offset \(start)")
        }
    }

    mutating func string(count: Int) throws -> MsgValue {
        let raw = try take(count)
        // Decoding repairs bad sequences to U+FFFD; if the bytes changed, they were not UTF-8.
        let text = String(decoding: raw, as: UTF8.self)
        guard text.utf8.elementsEqual(raw) else {
            throw WireError("msgpack str at offset \(offset - count) is not valid UTF-8")
        }
        return .string(text)
    }

    mutating func binary(count: Int) throws -> MsgValue {
        .binary(Array(try take(count)))
    }

    mutating func checkContainer(count: Int, depth: Int, perEntry: Int) throws {
        guard depth <= limits.maxDepth else {
            throw WireError("msgpack nesting deeper than \(limits.maxDepth) levels")
        }
        guard count <= limits.maxContainerLength else {
            throw WireError("msgpack container of \(count) entries exceeds the limit of \(limits.maxContainerLength)")
        }
        // Each entry takes at least one byte per element: a count the input cannot hold is a
        // lie, and is refused before any storage is reserved for it.
        guard count * perEntry <= remaining else { throw truncated(count * perEntry) }
    }

    mutating func array(count: Int, depth: Int) throws -> MsgValue {
        try checkContainer(count: count, depth: depth, perEntry: 1)
        var items: [MsgValue] = []
        items.reserveCapacity(count)
        for _ in 0..<count { items.append(try value(depth: depth + 1)) }
        return .array(items)
    }

    mutating func map(count: Int, depth: Int) throws -> MsgValue {
        try checkContainer(count: count, depth: depth, perEntry: 2)
        var pairs: [(key: MsgValue, value: MsgValue)] = []
        pairs.reserveCapacity(count)
        for _ in 0..<count {
            let keyOffset = offset
            let key = try value(depth: depth + 1)
            switch key {
            case .string, .binary: break
            default: throw WireError("msgpack map key of type \(key.typeName) at offset \(keyOffset); keys must be str or bin")
            }
            pairs.append((key: key, value: try value(depth: depth + 1)))
        }
        return .map(pairs)
    }
}

func hex(_ byte: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0f)]])
}

/// Lowercase hex of a byte sequence (for messages and tests).
public func hexString<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    bytes.map(hex).joined()
}
