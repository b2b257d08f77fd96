/// The guest agent protocol's golden frames (protocol/vectors/agent.json), which the Python
/// host and the guest agent also test against. The helper never parses agent messages — their
/// bytes pass between Python and the guest over a handed-over fd — so this pins the shared
/// framing and msgpack layer only, plus the envelope every agent message has (a map with a
/// str `t` and an `s` in [0, 2^32)). Per-message field schemas are checked by Python's
/// `wire.validate`; the invalid vectors that only it can catch are listed below, so a new
/// invalid vector must be classified here before this test passes.
import ShuruWire
import XCTest

final class AgentVectorTests: XCTestCase {
    static let schemaOnly: Set<String> = ["unknown type", "data as str", "bool as int", "missing field"]

    func checkEnvelope(_ value: MsgValue) throws {
        guard value.mapPairs != nil else { throw WireError("frame is not a map") }
        guard value["t"]?.stringValue != nil else { throw WireError("no string 't'") }
        guard let s = value["s"]?.intValue, s >= 0, s < 1 << 32 else { throw WireError("bad 's'") }
    }

    func testValidFramesDecodeToTheirValues() throws {
        let file = try VectorFile.load("agent.json")
        XCTAssertFalse(file.valid.isEmpty)
        for vector in file.valid {
            let decoded = try decodeOneFrame(vector.frameBytes)
            XCTAssertEqual(decoded, vector.value!.msgValue, vector.name)
            XCTAssertNoThrow(try checkEnvelope(decoded), vector.name)
            // The decoded map keeps wire order, so re-encoding must reproduce Python's bytes.
            XCTAssertEqual(hexString(try Frame.encode(decoded)), vector.frame, vector.name)
        }
    }

    func testValidValuesRoundTrip() throws {
        for vector in try VectorFile.load("agent.json").valid {
            let value = vector.value!.msgValue
            XCTAssertEqual(try decodeOneFrame(try Frame.encode(value)), value, vector.name)
        }
    }

    func testInvalidFramesAreRefusedOrKnownToBeSchemaLevel() throws {
        for vector in try VectorFile.load("agent.json").invalid {
            if Self.schemaOnly.contains(vector.name) {
                XCTAssertNoThrow(try checkEnvelope(try decodeOneFrame(vector.frameBytes)), vector.name)
            } else {
                XCTAssertThrowsError(try checkEnvelope(try decodeOneFrame(vector.frameBytes)), vector.name)
            }
        }
    }
}
