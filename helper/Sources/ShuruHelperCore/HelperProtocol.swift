/// The helper protocol's requests, replies, events and error codes as Swift values (see
/// `protocol/HELPER.md`). Parsing a request validates it against `Schema` first, so the
/// dispatcher only ever sees well-typed operations.
import ShuruWire

public enum HelperProtocol {
    /// Bumped on any incompatible change; Python and the helper must agree exactly.
    public static let version: Int64 = 1
    /// The helper's own release, reported in `hello` (for error messages and bug reports).
    public static let helperVersion = "0.1.0"
}

/// An error reply: a stable code for programs, a message for people, and evidence fields.
public struct HelperError: Error, CustomStringConvertible {
    public enum Code: String {
        case version = "EVERSION"  // protocol versions differ
        case state = "ESTATE"  // operation not allowed in the VM's current state
        case invalid = "EINVAL"  // malformed request or configuration
        case unsupported = "EUNSUPPORTED"  // this driver or host cannot do it
        case notFound = "ENOENT"  // a file named in the configuration is missing
        case busy = "EBUSY"  // the resource is taken (the process driver's one connection)
        case connectRefused = "ECONNREFUSED"  // nothing listens on the guest port (yet)
        case entitlement = "EENTITLEMENT"  // the helper lacks com.apple.security.virtualization
        case driver = "EDRIVER"  // the hypervisor or the process driver failed
    }

    public let code: Code
    public let message: String
    /// Extra fields of the error map (`state`, `required`, `version`...).
    public var evidence: [(String, MsgValue)]

    public init(_ code: Code, _ message: String, evidence: [(String, MsgValue)] = []) {
        self.code = code
        self.message = message
        self.evidence = evidence
    }

    public var description: String { "\(code.rawValue): \(message)" }
}

/// One operation a client can ask for, with its arguments.
public enum HelperOperation: String, CaseIterable {
    case hello, create, start, stop, pause, resume, connect
    case saveState = "save_state"
    case restoreState = "restore_state"
}

public struct Request {
    public enum Body {
        case hello(version: Int64)
        case create(MachineConfig)
        case start
        case stop(graceSeconds: Double)
        case pause
        case resume
        case saveState(path: String)
        case restoreState(path: String)
        case connect(port: UInt32)
    }

    public let id: Int64
    public let body: Body

    /// What went wrong parsing a request: `fatal` when it cannot even be answered (no valid
    /// id: the connection is closed), otherwise an error reply to that id.
    public enum ParseError: Error {
        case fatal(String)
        case refused(id: Int64, HelperError)
    }

    public static func parse(_ message: MsgValue) throws -> Request {
        guard message.mapPairs != nil, let id = message["id"]?.intValue, id >= 0, id < 1 << 32 else {
            throw ParseError.fatal("request without an integer 'id' in [0, 2^32): \(message)")
        }
        do {
            try Schema.validate(message, as: .request)
        } catch let error as WireError {
            throw ParseError.refused(id: id, HelperError(.invalid, error.message))
        }
        let body: Body
        switch HelperOperation(rawValue: message["op"]!.stringValue!)! {
        case .hello:
            body = .hello(version: message["version"]!.intValue ?? -1)
        case .create:
            do {
                body = .create(try MachineConfig(message["config"]!))
            } catch let error as HelperError {
                throw ParseError.refused(id: id, error)
            }
        case .start: body = .start
        case .stop:
            let ms = message["grace_ms"]?.intValue ?? 0
            guard ms >= 0 && ms <= 600_000 else {
                throw ParseError.refused(id: id, HelperError(.invalid, "stop: grace_ms must be in 0..600000"))
            }
            body = .stop(graceSeconds: Double(ms) / 1000)
        case .pause: body = .pause
        case .resume: body = .resume
        case .saveState: body = .saveState(path: message["path"]!.stringValue!)
        case .restoreState: body = .restoreState(path: message["path"]!.stringValue!)
        case .connect:
            guard let port = message["port"]!.intValue, port >= 0, port <= Int64(UInt32.max) else {
                throw ParseError.refused(id: id, HelperError(.invalid, "connect: port must be in 0..2^32-1"))
            }
            body = .connect(port: UInt32(port))
        }
        return Request(id: id, body: body)
    }
}

/// Builders for what the helper sends.
public enum Message {
    public static func reply(_ id: Int64, _ fields: [(String, MsgValue)] = []) -> MsgValue {
        .object([("id", .int(id)), ("ok", .bool(true))] + fields)
    }

    public static func error(_ id: Int64, _ error: HelperError) -> MsgValue {
        let detail = MsgValue.object([("code", .string(error.code.rawValue)),
                                      ("message", .string(error.message))] + error.evidence)
        return .object([("id", .int(id)), ("ok", .bool(false)), ("error", detail)])
    }

    public static func state(_ state: VMState, message: String? = nil) -> MsgValue {
        var fields: [(String, MsgValue)] = [("event", "state"), ("state", .string(state.rawValue))]
        if let message = message { fields.append(("message", .string(message))) }
        return .object(fields)
    }

    public static func console(_ line: String) -> MsgValue {
        .object([("event", "console"), ("line", .string(line))])
    }
}
