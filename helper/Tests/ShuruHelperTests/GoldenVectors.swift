/// Loads the golden vectors in `protocol/vectors/` (shared with pytest) as `MsgValue`s.
///
/// Values are read with `JSONDecoder` into `JSONValue` first, because it keeps JSON's
/// booleans and numbers apart (JSONSerialization would hand back an NSNumber for both); a
/// `{"$bin": hex}` object stands for msgpack `bin`.
import Foundation
import ShuruWire
import XCTest

enum JSONValue: Decodable {
    case null, bool(Bool), int(Int64), uint(UInt64), double(Double), string(String)
    case array([JSONValue]), object([String: JSONValue])

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int64.self) { self = .int(i) }
        else if let u = try? c.decode(UInt64.self) { self = .uint(u) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    var msgValue: MsgValue {
        switch self {
        case .null: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .uint(let u): return .unsigned(u)
        case .double(let d): return .float(d)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map(\.msgValue))
        case .object(let o):
            if o.count == 1, case .string(let hex)? = o["$bin"] { return .binary(bytes(hex: hex)) }
            return .map(o.map { (key: .string($0.key), value: $0.value.msgValue) })
        }
    }
}

struct Vector: Decodable {
    let name: String
    let kind: String?
    let value: JSONValue?
    let frame: String

    var frameBytes: [UInt8] { bytes(hex: frame) }
}

struct VectorFile: Decodable {
    let version: Int
    let valid: [Vector]
    let invalid: [Vector]

    /// `protocol/vectors/<name>` in this checkout, found from this source file's path.
    static func load(_ name: String, file: StaticString = #filePath) throws -> VectorFile {
        var root = URL(fileURLWithPath: "\(file)")
        for _ in 0..<4 { root.deleteLastPathComponent() }  // Tests/ShuruHelperTests/x.swift, helper/
        let url = root.appendingPathComponent("protocol/vectors/\(name)")
        return try JSONDecoder().decode(VectorFile.self, from: Data(contentsOf: url))
    }
}

func bytes(hex: String) -> [UInt8] {
    var out: [UInt8] = []
    var index = hex.startIndex
    while index < hex.endIndex {
        let next = hex.index(index, offsetBy: 2)
        out.append(UInt8(hex[index..<next], radix: 16)!)
        index = next
    }
    return out
}

/// Decode a buffer that must hold exactly one whole frame.
func decodeOneFrame(_ frame: [UInt8]) throws -> MsgValue {
    var reader = FrameReader()
    reader.feed(frame)
    guard let value = try reader.next() else { throw WireError("incomplete frame") }
    guard reader.pending == 0 else { throw WireError("\(reader.pending) bytes after the frame") }
    return value
}
