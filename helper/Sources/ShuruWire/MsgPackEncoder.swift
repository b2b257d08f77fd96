/// msgpack encoding of `MsgValue`, always in the smallest form for each value, as
/// msgpack-python writes it (so a frame decoded and re-encoded keeps its exact bytes).
/// Floats are always written as float64: Python has no float32 to round-trip.
public enum MsgPack {
    public static func encode(_ value: MsgValue) -> [UInt8] {
        var out: [UInt8] = []
        encode(value, into: &out)
        return out
    }

    public static func encode(_ value: MsgValue, into out: inout [UInt8]) {
        switch value {
        case .null:
            out.append(0xc0)
        case .bool(let b):
            out.append(b ? 0xc3 : 0xc2)
        case .int(let i):
            if i >= 0 { encodeUnsigned(UInt64(i), into: &out) } else { encodeNegative(i, into: &out) }
        case .uint(let u):
            encodeUnsigned(u, into: &out)
        case .float(let d):
            out.append(0xcb)
            appendBigEndian(d.bitPattern, into: &out)
        case .string(let s):
            let bytes = Array(s.utf8)
            encodeHeader(count: bytes.count, fix: (0xa0, 31), small: 0xd9, medium: 0xda, large: 0xdb,
                         into: &out)
            out.append(contentsOf: bytes)
        case .binary(let b):
            encodeHeader(count: b.count, fix: nil, small: 0xc4, medium: 0xc5, large: 0xc6, into: &out)
            out.append(contentsOf: b)
        case .array(let items):
            encodeHeader(count: items.count, fix: (0x90, 15), small: nil, medium: 0xdc, large: 0xdd,
                         into: &out)
            for item in items { encode(item, into: &out) }
        case .map(let pairs):
            encodeHeader(count: pairs.count, fix: (0x80, 15), small: nil, medium: 0xde, large: 0xdf,
                         into: &out)
            for pair in pairs {
                encode(pair.key, into: &out)
                encode(pair.value, into: &out)
            }
        }
    }

    private static func encodeUnsigned(_ u: UInt64, into out: inout [UInt8]) {
        switch u {
        case 0...0x7f: out.append(UInt8(u))
        case 0...0xff: out.append(0xcc); out.append(UInt8(u))
        case 0...0xffff: out.append(0xcd); appendBigEndian(UInt16(u), into: &out)
        case 0...0xffff_ffff: out.append(0xce); appendBigEndian(UInt32(u), into: &out)
        default: out.append(0xcf); appendBigEndian(u, into: &out)
        }
    }

    private static func encodeNegative(_ i: Int64, into out: inout [UInt8]) {
        switch i {
        case -32 ... -1: out.append(UInt8(bitPattern: Int8(i)))
        case Int64(Int8.min)...: out.append(0xd0); out.append(UInt8(bitPattern: Int8(i)))
        case Int64(Int16.min)...: out.append(0xd1); appendBigEndian(UInt16(bitPattern: Int16(i)), into: &out)
        case Int64(Int32.min)...: out.append(0xd2); appendBigEndian(UInt32(bitPattern: Int32(i)), into: &out)
        default: out.append(0xd3); appendBigEndian(UInt64(bitPattern: i), into: &out)
        }
    }

    /// The type byte(s) and length of a str/bin/array/map. `fix` is the fixed-size form's base
    /// and largest count; `small` the 8-bit-length form (str and bin only).
    private static func encodeHeader(count: Int, fix: (UInt8, Int)?, small: UInt8?, medium: UInt8,
                                     large: UInt8, into out: inout [UInt8]) {
        if let (base, limit) = fix, count <= limit {
            out.append(base | UInt8(count))
        } else if let small = small, count <= 0xff {
            out.append(small)
            out.append(UInt8(count))
        } else if count <= 0xffff {
            out.append(medium)
            appendBigEndian(UInt16(count), into: &out)
        } else {
            out.append(large)
            appendBigEndian(UInt32(truncatingIfNeeded: count), into: &out)
        }
    }
}

@inline(__always)
func appendBigEndian<T: FixedWidthInteger>(_ value: T, into out: inout [UInt8]) {
    var v = value.bigEndian
    withUnsafeBytes(of: &v) { out.append(contentsOf: $0) }
}
