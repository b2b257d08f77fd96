/// The helper protocol's message schema as data, and the checker that applies it. This is the
/// Swift twin of `python/shuru/backends/helper_protocol.py`; `protocol/HELPER.md` is the text
/// both follow, and `protocol/vectors/helper.json` holds the frames both must accept or refuse.
import ShuruWire

/// The msgpack types a field may have.
public struct FieldTypes: OptionSet {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    public static let int = FieldTypes(rawValue: 1 << 0)
    public static let bool = FieldTypes(rawValue: 1 << 1)
    public static let string = FieldTypes(rawValue: 1 << 2)
    public static let binary = FieldTypes(rawValue: 1 << 3)
    public static let map = FieldTypes(rawValue: 1 << 4)
    public static let null = FieldTypes(rawValue: 1 << 5)
    /// An array whose elements are all strings.
    public static let strings = FieldTypes(rawValue: 1 << 6)

    func admits(_ value: MsgValue) -> Bool {
        switch value {
        case .int, .uint: return contains(.int)
        case .bool: return contains(.bool)
        case .string: return contains(.string)
        case .binary: return contains(.binary)
        case .map: return contains(.map)
        case .null: return contains(.null)
        case .array(let items): return contains(.strings) && items.allSatisfy { $0.stringValue != nil }
        case .float: return false
        }
    }
}

public struct Field {
    public let name: String
    public let types: FieldTypes
    public let optional: Bool

    public init(_ name: String, _ types: FieldTypes, optional: Bool = false) {
        self.name = name
        self.types = types
        self.optional = optional
    }
}

public enum Schema {
    /// Fields of each request, by `op` (besides `id` and `op`).
    public static let requests: [String: [Field]] = [
        "hello": [Field("version", .int)],
        "create": [Field("config", .map)],
        "start": [],
        "stop": [Field("grace_ms", .int, optional: true)],
        "pause": [],
        "resume": [],
        "save_state": [Field("path", .string)],
        "restore_state": [Field("path", .string)],
        "connect": [Field("port", .int)],
    ]

    /// Fields of `create`'s `config` map.
    public static let config: [Field] = [
        Field("kernel", .string),
        Field("initrd", [.string, .null]),
        Field("disk", .string),
        Field("cpus", .int),
        Field("memory_mb", .int),
        Field("cmdline", .string),
        Field("network", .string),
        Field("agent_port", .int),
        Field("console", .bool),
        Field("agent_command", .strings, optional: true),
        Field("allow", .strings, optional: true),
        Field("secrets", .strings, optional: true),
        Field("machine_id", [.binary, .null], optional: true),
    ]

    /// Fields every reply may carry; which of the optional ones appear depends on the request.
    public static let reply: [Field] = [
        Field("id", .int),
        Field("ok", .bool),
        Field("error", .map, optional: true),
        Field("version", .int, optional: true),
        Field("helper", .string, optional: true),
        Field("driver", .string, optional: true),
        Field("capabilities", .map, optional: true),
        Field("machine_id", .binary, optional: true),
    ]

    public static let error: [Field] = [Field("code", .string), Field("message", .string)]

    /// Fields of each event, by `event`.
    public static let events: [String: [Field]] = [
        "state": [Field("state", .string), Field("message", .string, optional: true)],
        "console": [Field("line", .string)],
    ]

    /// Check `map`'s string keys and the listed fields; extra keys are allowed (a newer peer
    /// may add optional fields). `context` prefixes the message ("create.config").
    public static func check(_ value: MsgValue, _ fields: [Field], context: String) throws {
        guard let pairs = value.mapPairs else {
            throw WireError("\(context) is a \(value.typeName), not a map")
        }
        if let bad = pairs.first(where: { $0.key.stringValue == nil }) {
            throw WireError("\(context) has a non-string key of type \(bad.key.typeName)")
        }
        for field in fields {
            guard let fieldValue = value[field.name] else {
                if field.optional { continue }
                throw WireError("\(context): missing field '\(field.name)'")
            }
            guard field.types.admits(fieldValue) else {
                throw WireError("\(context): field '\(field.name)' has type \(fieldValue.typeName)")
            }
        }
    }

    /// Which way a message travels; each direction has its own shape.
    public enum Kind: String {
        case request, reply, event
    }

    /// Validate a whole decoded message of the given kind.
    public static func validate(_ message: MsgValue, as kind: Kind) throws {
        switch kind {
        case .request:
            try check(message, [Field("id", .int), Field("op", .string)], context: "request")
            try checkID(message)
            let op = message["op"]!.stringValue!
            guard let fields = requests[op] else { throw WireError("unknown op '\(op)'") }
            try check(message, fields, context: op)
            if op == "create" {
                try check(message["config"]!, config, context: "create.config")
            }
        case .reply:
            try check(message, reply, context: "reply")
            try checkID(message)
            if message["ok"]!.boolValue == false {
                guard let error = message["error"] else {
                    throw WireError("reply: 'ok' is false but there is no 'error'")
                }
                try check(error, Schema.error, context: "reply.error")
            }
        case .event:
            try check(message, [Field("event", .string)], context: "event")
            let name = message["event"]!.stringValue!
            guard let fields = events[name] else { throw WireError("unknown event '\(name)'") }
            try check(message, fields, context: "\(name) event")
            if name == "state" {
                let state = message["state"]!.stringValue!
                guard VMState(rawValue: state) != nil else {
                    throw WireError("state event: unknown state '\(state)'")
                }
            }
        }
    }

    /// Request ids are integers in [0, 2^32), like the agent protocol's stream ids.
    static func checkID(_ message: MsgValue) throws {
        guard let id = message["id"]?.intValue, id >= 0, id < 1 << 32 else {
            throw WireError("'id' must be an integer in [0, 2^32)")
        }
    }
}
