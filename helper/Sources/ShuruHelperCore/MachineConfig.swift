/// The VM a `create` request describes, checked before any driver sees it.
///
/// The network rule lives here because it is a security rule, not a driver detail: `nat`
/// gives the guest the host's network directly, bypassing the policy proxy, so it is refused
/// together with an allowlist or secrets (either would promise a policy nobody enforces).
import ShuruWire

public struct MachineConfig: Equatable {
    public enum Network: String {
        /// No network device: guest traffic leaves only through the agent channel.
        case none
        /// A NAT device with unrestricted access, for an explicit opt-in only.
        case nat
    }

    public var kernel: String
    public var initrd: String?
    public var disk: String
    public var cpus: Int
    public var memoryMB: Int
    public var cmdline: String
    public var network: Network
    public var agentPort: UInt32
    public var console: Bool
    /// The process driver's agent command; `{fd}` in an argument becomes the channel's fd.
    public var agentCommand: [String]?
    public var allow: [String]
    public var secrets: [String]
    /// A saved machine identity to reuse (restoring state needs the identity it was saved with).
    public var machineID: [UInt8]?

    public init(kernel: String, initrd: String? = nil, disk: String, cpus: Int = 1,
                memoryMB: Int = 512, cmdline: String = "", network: Network = .none,
                agentPort: UInt32 = 1024, console: Bool = true, agentCommand: [String]? = nil,
                allow: [String] = [], secrets: [String] = [], machineID: [UInt8]? = nil) {
        self.kernel = kernel
        self.initrd = initrd
        self.disk = disk
        self.cpus = cpus
        self.memoryMB = memoryMB
        self.cmdline = cmdline
        self.network = network
        self.agentPort = agentPort
        self.console = console
        self.agentCommand = agentCommand
        self.allow = allow
        self.secrets = secrets
        self.machineID = machineID
    }

    /// Parse and check a `create.config` map. Every problem is an `EINVAL` naming the field.
    public init(_ value: MsgValue) throws {
        do {
            try Schema.check(value, Schema.config, context: "create.config")
        } catch let error as WireError {
            throw HelperError(.invalid, error.message)
        }
        func strings(_ key: String) -> [String]? {
            value[key]?.arrayValue?.compactMap(\.stringValue)
        }
        guard let network = Network(rawValue: value["network"]!.stringValue!) else {
            throw HelperError(.invalid, "create.config: network must be \"none\" or \"nat\", "
                + "got \(value["network"]!)")
        }
        self.init(kernel: value["kernel"]!.stringValue!, initrd: value["initrd"]!.stringValue,
                  disk: value["disk"]!.stringValue!,
                  cpus: try Self.bounded(value, "cpus", 1...256),
                  memoryMB: try Self.bounded(value, "memory_mb", 64...(1 << 24)),
                  cmdline: value["cmdline"]!.stringValue!, network: network,
                  agentPort: UInt32(try Self.bounded(value, "agent_port", 0...Int(UInt32.max))),
                  console: value["console"]!.boolValue!, agentCommand: strings("agent_command"),
                  allow: strings("allow") ?? [], secrets: strings("secrets") ?? [],
                  machineID: value["machine_id"]?.binaryValue)
        try checkNetworkPolicy()
    }

    private static func bounded(_ value: MsgValue, _ key: String, _ range: ClosedRange<Int>) throws -> Int {
        guard let n = value[key]?.intValue, n >= range.lowerBound, n <= range.upperBound else {
            throw HelperError(.invalid, "create.config: \(key) must be in \(range.lowerBound)...\(range.upperBound), "
                + "got \(value[key]!)")
        }
        return Int(n)
    }

    public func checkNetworkPolicy() throws {
        guard network == .nat, !(allow.isEmpty && secrets.isEmpty) else { return }
        var given: [String] = []
        if !allow.isEmpty { given.append("an allowlist") }
        if !secrets.isEmpty { given.append("secrets") }
        throw HelperError(.invalid,
            "network \"nat\" gives the guest unrestricted access and bypasses the policy proxy, "
            + "so it cannot be combined with \(given.joined(separator: " and ")); "
            + "use network \"none\" (traffic goes through the proxy) instead")
    }
}
