/// `create.config` parsing: ranges, network modes, and the NAT policy rule.
import ShuruHelperCore
import ShuruWire
import XCTest

final class MachineConfigTests: XCTestCase {
    func config(_ changes: [(String, MsgValue)] = []) -> MsgValue {
        var fields: [(String, MsgValue)] = [
            ("kernel", "/k"), ("initrd", .null), ("disk", "/d"), ("cpus", 2), ("memory_mb", 512),
            ("cmdline", "console=hvc0"), ("network", "none"), ("agent_port", 1024), ("console", true),
        ]
        for (key, value) in changes {
            fields.removeAll { $0.0 == key }
            fields.append((key, value))
        }
        return .object(fields)
    }

    func refusal(_ changes: [(String, MsgValue)]) -> String {
        do {
            _ = try MachineConfig(config(changes))
            return "accepted"
        } catch let error as HelperError {
            XCTAssertEqual(error.code, .invalid)
            return error.message
        } catch {
            return "\(error)"
        }
    }

    func testParsesAllFields() throws {
        let c = try MachineConfig(config([("agent_command", ["py", "{fd}"]), ("machine_id", .binary([1, 2]))]))
        XCTAssertEqual(c, MachineConfig(kernel: "/k", disk: "/d", cpus: 2, memoryMB: 512, cmdline: "console=hvc0",
                                        agentCommand: ["py", "{fd}"], machineID: [1, 2]))
    }

    func testRangesAndNamesAreChecked() {
        XCTAssertTrue(refusal([("cpus", 0)]).contains("cpus must be in 1...256"))
        XCTAssertTrue(refusal([("memory_mb", 1)]).contains("memory_mb"))
        XCTAssertTrue(refusal([("agent_port", -1)]).contains("agent_port"))
        XCTAssertTrue(refusal([("network", "bridged")]).contains("network must be \"none\" or \"nat\""))
        XCTAssertTrue(refusal([("cpus", "2")]).contains("'cpus' has type str"))
    }

    func testNatIsRefusedWithAnAllowlistOrSecrets() {
        XCTAssertEqual(refusal([("network", "nat")]), "accepted")
        XCTAssertEqual(refusal([("network", "nat"), ("allow", []), ("secrets", [])]), "accepted")
        XCTAssertTrue(refusal([("network", "nat"), ("allow", ["pypi.org"])]).contains("an allowlist"))
        XCTAssertTrue(refusal([("network", "nat"), ("secrets", ["GH_TOKEN"])]).contains("secrets"))
        XCTAssertEqual(refusal([("network", "none"), ("allow", ["pypi.org"]), ("secrets", ["T"])]), "accepted")
    }
}
