/// The Virtualization.framework driver (`--driver vz`): checks that this Mac and this binary
/// may run VMs at all, then makes `VZMachine`s.
#if canImport(Virtualization)
import Foundation
import ShuruHelperCore
import Virtualization

public struct VZDriver: MachineDriver {
    public let name = "vz"

    public init() {}

    public var capabilities: DriverCapabilities {
        DriverCapabilities(saveState: Self.canSaveState, pause: true)
    }

    /// Saving and restoring machine state exists from macOS 14, on Apple silicon only (the
    /// framework declares those methods for arm64 alone).
    static var canSaveState: Bool {
        #if arch(arm64)
        if #available(macOS 14, *) { return true }
        #endif
        return false
    }

    public func makeMachine(_ config: MachineConfig, events: VirtualMachineEvents) throws -> VirtualMachine {
        guard VZVirtualMachine.isSupported else {
            throw HelperError(.unsupported, "this Mac cannot run virtual machines (Virtualization.framework "
                + "reports no support; inside a VM this needs nested virtualization)")
        }
        let binary = Entitlement.executablePath
        guard Entitlement.granted(Entitlement.virtualization) else {
            throw HelperError(.entitlement,
                "\(binary) is not signed with the \(Entitlement.virtualization) entitlement; sign it with: "
                    + "codesign --sign - --entitlements helper/shuru-helper.entitlements --force \(binary)",
                evidence: [("binary", .string(binary))])
        }
        return try VZMachine(config: config, events: events)
    }
}
#endif
