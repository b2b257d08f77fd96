/// One decoded msgpack value, and the accessors the protocol code uses to read it.
///
/// Maps keep their pairs in wire order, so a decoded frame re-encodes to the same bytes, but
/// equality ignores key order: msgpack maps carry no order, and the golden vectors are compared
/// by value. Integers are normalised: every value that fits in `Int64` is `.int`; `.uint` only
/// holds values above `Int64.max`. Floats of either width decode to `.float(Double)`.
public enum MsgValue {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case float(Double)
    case string(String)
    case binary([UInt8])
    case array([MsgValue])
    case map([(key: MsgValue, value: MsgValue)])

    /// An unsigned integer in its normal form (`.int` whenever it fits).
    public static func unsigned(_ value: UInt64) -> MsgValue {
        value <= UInt64(Int64.max) ? .int(Int64(value)) : .uint(value)
    }

    /// A map with string keys, in the given order.
    public static func object(_ pairs: [(String, MsgValue)]) -> MsgValue {
        .map(pairs.map { (key: .string($0.0), value: $0.1) })
    }
}

// MARK: - Reading values

extension MsgValue {
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// The value as a signed integer, if it is an integer that fits (never for a bool).
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .uint(let u): return u <= UInt64(Int64.max) ? Int64(u) : nil
        default: return nil
        }
    }

    public var isInteger: Bool {
        switch self {
        case .int, .uint: return true
        default: return false
        }
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var binaryValue: [UInt8]? {
        if case .binary(let b) = self { return b }
        return nil
    }

    public var arrayValue: [MsgValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var mapPairs: [(key: MsgValue, value: MsgValue)]? {
        if case .map(let m) = self { return m }
        return nil
    }

    /// The value under a string key of a map. As in msgpack-python, when a key repeats, the
    /// last occurrence wins, so both implementations read the same message.
    public subscript(key: String) -> MsgValue? {
        guard case .map(let pairs) = self else { return nil }
        for pair in pairs.reversed() where pair.key.stringValue == key {
            return pair.value
        }
        return nil
    }

    /// A short name of the value's type, for error messages ("str", "int", ...), matching the
    /// names Python's error messages use.
    public var typeName: String {
        switch self {
        case .null: return "nil"
        case .bool: return "bool"
        case .int, .uint: return "int"
        case .float: return "float"
        case .string: return "str"
        case .binary: return "bytes"
        case .array: return "list"
        case .map: return "dict"
        }
    }
}

// MARK: - Equality

extension MsgValue: Equatable {
    public static func == (lhs: MsgValue, rhs: MsgValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case (.int, .int), (.int, .uint), (.uint, .int), (.uint, .uint):
            return integerEqual(lhs, rhs)
        case let (.float(a), .float(b)): return a == b || (a.isNaN && b.isNaN)
        case let (.string(a), .string(b)): return a == b
        case let (.binary(a), .binary(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.map(a), .map(b)): return mapsEqual(a, b)
        default: return false
        }
    }

    private static func integerEqual(_ a: MsgValue, _ b: MsgValue) -> Bool {
        switch (a, b) {
        case let (.int(x), .int(y)): return x == y
        case let (.uint(x), .uint(y)): return x == y
        case let (.int(x), .uint(y)), let (.uint(y), .int(x)): return x >= 0 && UInt64(x) == y
        default: return false
        }
    }

    /// Key order is not part of a map's value; repeated keys collapse to their last value.
    private static func mapsEqual(_ a: [(key: MsgValue, value: MsgValue)],
                                  _ b: [(key: MsgValue, value: MsgValue)]) -> Bool {
        let left = collapse(a), right = collapse(b)
        guard left.count == right.count else { return false }
        return left.allSatisfy { l in right.contains { $0.key == l.key && $0.value == l.value } }
    }

    private static func collapse(_ pairs: [(key: MsgValue, value: MsgValue)])
        -> [(key: MsgValue, value: MsgValue)] {
        var out: [(key: MsgValue, value: MsgValue)] = []
        for pair in pairs {
            if let i = out.firstIndex(where: { $0.key == pair.key }) {
                out[i].value = pair.value
            } else {
                out.append(pair)
            }
        }
        return out
    }
}

// MARK: - Literals (for tests and for building messages)

extension MsgValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByFloatLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(floatLiteral value: Double) { self = .float(value) }
    public init(arrayLiteral elements: MsgValue...) { self = .array(elements) }
    /// Keys are strings: every map in shuru's protocols has string keys.
    public init(dictionaryLiteral elements: (String, MsgValue)...) { self = .object(elements) }
}

extension MsgValue: CustomStringConvertible {
    public var description: String {
        switch self {
        case .null: return "nil"
        case .bool(let b): return String(b)
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .float(let d): return String(d)
        case .string(let s): return "\"\(s)\""
        case .binary(let b): return "bin(\(b.count))"
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .map(let m):
            return "{" + m.map { "\($0.key.description): \($0.value.description)" }
                .joined(separator: ", ") + "}"
        }
    }
}
