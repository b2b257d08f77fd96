/// Framing: the header, the length limits, and reassembly of frames split anywhere.
import ShuruWire
import XCTest

final class FrameTests: XCTestCase {
    func testFrameIsBigEndianLengthThenPayload() throws {
        let frame = try Frame.encode(["t": "ping", "s": 0, "id": 7])
        XCTAssertEqual(hexString(frame), "0000000f83a174a470696e67a17300a2696407")
    }

    func testLengthsOutsideTheRangeAreRefusedFromTheHeaderAlone() {
        for header in ["00000000", "00011001", "ffffffff"] {
            var reader = FrameReader()
            reader.feed(bytes(hex: header))
            XCTAssertThrowsError(try reader.next(), header)
        }
        var reader = FrameReader()
        reader.feed(bytes(hex: "00011000"))  // exactly the maximum: wait for the payload
        XCTAssertNil(try reader.next())
    }

    func testOversizedValueCannotBeEncoded() {
        XCTAssertThrowsError(try Frame.encode(.binary([UInt8](repeating: 0, count: Frame.maxPayload))))
        XCTAssertNoThrow(try Frame.encode(.binary([UInt8](repeating: 0, count: Frame.maxPayload - 5))))
    }

    func testFramesSplitAtEveryByteReassemble() throws {
        let values: [MsgValue] = [["a": 1], ["b": .binary([UInt8](repeating: 7, count: 300))], ["c": [1, 2]]]
        let stream = try values.flatMap { try Frame.encode($0) }
        for chunk in [1, 2, 3, 7, 64, stream.count] {
            var reader = FrameReader()
            var got: [MsgValue] = []
            var offset = 0
            while offset < stream.count {
                reader.feed(stream[offset..<min(offset + chunk, stream.count)])
                offset += chunk
                while let value = try reader.next() { got.append(value) }
            }
            XCTAssertEqual(got, values, "chunk \(chunk)")
            XCTAssertEqual(reader.pending, 0)
        }
    }
}
