/// The helper protocol's golden frames (protocol/vectors/helper.json), shared with pytest:
/// every valid frame decodes to its value and passes the schema for its kind, and every
/// invalid one is refused by the framing, the msgpack limits or the schema.
import ShuruHelperCore
import ShuruWire
import XCTest

final class HelperVectorTests: XCTestCase {
    func kind(_ vector: Vector) -> Schema.Kind { Schema.Kind(rawValue: vector.kind!)! }

    func testValidFramesDecodeValidateAndReencode() throws {
        let file = try VectorFile.load("helper.json")
        XCTAssertEqual(file.version, Int(HelperProtocol.version))
        for vector in file.valid {
            let decoded = try decodeOneFrame(vector.frameBytes)
            XCTAssertEqual(decoded, vector.value!.msgValue, vector.name)
            XCTAssertNoThrow(try Schema.validate(decoded, as: kind(vector)), vector.name)
            XCTAssertEqual(hexString(try Frame.encode(decoded)), vector.frame, vector.name)
        }
    }

    func testInvalidFramesAreRefused() throws {
        let file = try VectorFile.load("helper.json")
        XCTAssertFalse(file.invalid.isEmpty)
        for vector in file.invalid {
            XCTAssertThrowsError(try Schema.validate(try decodeOneFrame(vector.frameBytes), as: kind(vector)),
                                 vector.name)
        }
    }

    func testEveryOpAndEventHasAValidVector() throws {
        let valid = try VectorFile.load("helper.json").valid.map { ($0.kind!, $0.value!.msgValue) }
        let ops = Set(valid.filter { $0.0 == "request" }.compactMap { $0.1["op"]?.stringValue })
        let events = Set(valid.filter { $0.0 == "event" }.compactMap { $0.1["event"]?.stringValue })
        XCTAssertEqual(ops, Set(Schema.requests.keys))
        XCTAssertEqual(ops, Set(HelperOperation.allCases.map(\.rawValue)))
        XCTAssertEqual(events, Set(Schema.events.keys))
    }

    func testWhatTheHelperSendsMatchesTheSchema() throws {
        let sent: [(MsgValue, Schema.Kind)] = [
            (Message.reply(1, [("version", 1), ("helper", "x"), ("driver", "process")]), .reply),
            (Message.error(2, HelperError(.state, "no", evidence: [("state", "created")])), .reply),
            (Message.state(.running), .event),
            (Message.state(.error, message: "boom"), .event),
            (Message.console("hello"), .event),
        ]
        for (message, kind) in sent {
            XCTAssertNoThrow(try Schema.validate(message, as: kind), "\(message)")
        }
    }
}
