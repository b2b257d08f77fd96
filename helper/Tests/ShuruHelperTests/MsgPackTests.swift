/// The msgpack codec: exact encodings at every width boundary, round trips, and the limits
/// that protect the helper from hostile input.
import ShuruWire
import XCTest

final class MsgPackTests: XCTestCase {
    private func encoded(_ value: MsgValue) -> String { hexString(MsgPack.encode(value)) }

    func testIntegersUseTheSmallestForm() {
        let cases: [(MsgValue, String)] = [
            (0, "00"), (127, "7f"), (128, "cc80"), (255, "ccff"), (256, "cd0100"),
            (65535, "cdffff"), (65536, "ce00010000"), (.int(Int64(UInt32.max)), "ceffffffff"),
            (.int(Int64(UInt32.max) + 1), "cf0000000100000000"),
            (.uint(UInt64.max), "cfffffffffffffffff"),
            (-1, "ff"), (-32, "e0"), (-33, "d0df"), (-128, "d080"), (-129, "d1ff7f"),
            (-32768, "d18000"), (-32769, "d2ffff7fff"), (.int(Int64(Int32.min)), "d280000000"),
            (.int(Int64(Int32.min) - 1), "d3ffffffff7fffffff"), (.int(Int64.min), "d38000000000000000"),
        ]
        for (value, hex) in cases {
            XCTAssertEqual(encoded(value), hex, "\(value)")
            XCTAssertEqual(try MsgPack.decode(bytes(hex: hex)), value, hex)
        }
    }

    func testStringBinaryAndContainerHeaders() {
        XCTAssertEqual(encoded(""), "a0")
        XCTAssertEqual(encoded(.string(String(repeating: "a", count: 31))).prefix(2), "bf")
        XCTAssertEqual(encoded(.string(String(repeating: "a", count: 32))).prefix(4), "d920")
        XCTAssertEqual(encoded(.string(String(repeating: "a", count: 256))).prefix(6), "da0100")
        XCTAssertEqual(encoded(.string(String(repeating: "a", count: 65536))).prefix(10), "db00010000")
        XCTAssertEqual(encoded(.binary([])), "c400")
        XCTAssertEqual(encoded(.binary([UInt8](repeating: 1, count: 256))).prefix(6), "c50100")
        XCTAssertEqual(encoded(.binary([UInt8](repeating: 1, count: 65536))).prefix(10), "c600010000")
        XCTAssertEqual(encoded(.array(Array(repeating: 0, count: 15))).prefix(2), "9f")
        XCTAssertEqual(encoded(.array(Array(repeating: 0, count: 16))).prefix(6), "dc0010")
        XCTAssertEqual(encoded(.array(Array(repeating: 0, count: 65536))).prefix(10), "dd00010000")
        let pairs = (0..<16).map { (key: MsgValue.string("k\($0)"), value: MsgValue.null) }
        XCTAssertEqual(encoded(.map(pairs)).prefix(6), "de0010")
        XCTAssertEqual(encoded(.map(Array(pairs.prefix(15)))).prefix(2), "8f")
    }

    func testScalarsRoundTrip() throws {
        let values: [MsgValue] = [.null, true, false, 1.5, -0.25, .float(.infinity), "caf\u{e9} \u{1F600}",
                                  .binary([0, 1, 255]), [1, "two", [3]], ["a": 1, "b": ["c": .null]]]
        for value in values {
            XCTAssertEqual(try MsgPack.decode(MsgPack.encode(value)), value, "\(value)")
        }
        XCTAssertEqual(encoded(1.5), "cb3ff8000000000000")
    }

    func testFloat32Decodes() throws {
        XCTAssertEqual(try MsgPack.decode(bytes(hex: "ca3fc00000")), 1.5)
    }

    func testMapEqualityIgnoresKeyOrder() {
        let a: MsgValue = ["x": 1, "y": 2]
        let b: MsgValue = ["y": 2, "x": 1]
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, ["x": 1])
        XCTAssertNotEqual(a, ["x": 1, "y": 3])
        XCTAssertEqual(MsgValue.int(5), MsgValue.uint(5))
        XCTAssertNotEqual(MsgValue.int(1), MsgValue.bool(true))
    }

    func testDecodedMapsKeepWireOrderSoTheyReencodeExactly() throws {
        let original: MsgValue = ["z": 1, "a": [true, .null], "m": ["q": "r"]]
        let wire = MsgPack.encode(original)
        XCTAssertEqual(MsgPack.encode(try MsgPack.decode(wire)), wire)
    }

    func testRepeatedKeyLastValueWins() throws {
        // {"a": 1, "a": 2}, as msgpack-python reads it
        let value = try MsgPack.decode(bytes(hex: "82a16101a16102"))
        XCTAssertEqual(value["a"], 2)
    }

    private func assertRefused(_ hex: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try MsgPack.decode(bytes(hex: hex)), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(fragment), "\(error) does not mention \(fragment)",
                          file: file, line: line)
        }
    }

    func testHostileInputIsRefusedWithAReason() {
        assertRefused("", "truncated")
        assertRefused("92", "truncated")
        assertRefused("a5616263", "truncated")
        assertRefused("c6ffffffff00", "truncated")  // a 4 GiB bin in a 6-byte input
        assertRefused("ddffffffff", "exceeds the limit")  // a 4-billion-entry array, never allocated
        assertRefused("dd0000ffff", "truncated")  // within the limit, but the input cannot hold it
        assertRefused("dd00010001" + String(repeating: "c0", count: 65537), "exceeds the limit")
        assertRefused("c0c0", "trailing")
        assertRefused("c1", "invalid msgpack type")
        assertRefused("d40100", "extension")
        assertRefused("c70100", "extension")
        assertRefused("a2c328", "UTF-8")
        assertRefused("810102", "map key")
        assertRefused(String(repeating: "91", count: 33) + "c0", "nesting")
    }

    func testNestingLimitIsInclusive() throws {
        XCTAssertNoThrow(try MsgPack.decode(bytes(hex: String(repeating: "91", count: 32) + "c0")))
        let tight = MsgPack.Limits(maxDepth: 2, maxContainerLength: 2)
        XCTAssertNoThrow(try MsgPack.decode(bytes(hex: "9191c0"), limits: tight))
        XCTAssertThrowsError(try MsgPack.decode(bytes(hex: "919191c0"), limits: tight))
        XCTAssertThrowsError(try MsgPack.decode(bytes(hex: "93c0c0c0"), limits: tight))
    }

    func testRandomGarbageNeverTraps() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let length = Int.random(in: 0..<64, using: &generator)
            let garbage = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? MsgPack.decode(garbage)
        }
    }
}
