/// A `MachineConfig` as a validated `VZVirtualMachineConfiguration`.
///
/// The device set is fixed and small: Linux direct boot, one virtio-blk root disk (the
/// sandbox's own raw disk file), one virtio console whose output becomes console events, an
/// entropy device, and a vsock device for the agent channel. There is no network device
/// unless the configuration explicitly asks for `nat` (which `MachineConfig` already refused
/// in combination with an allowlist or secrets): by default the guest reaches the network
/// only through the policy proxy, over the agent channel.
#if canImport(Virtualization)
import Foundation
import ShuruHelperCore
import Virtualization

enum VZConfigurationBuilder {
    static func make(_ config: MachineConfig, identifier: VZGenericMachineIdentifier,
                     consoleOutput: FileHandle) throws -> VZVirtualMachineConfiguration {
        var files = [("kernel", config.kernel), ("disk", config.disk)]
        if let initrd = config.initrd { files.append(("initrd", initrd)) }
        for (label, path) in files where !FileManager.default.fileExists(atPath: path) {
            throw HelperError(.notFound, "\(label) \(path): no such file", evidence: [("path", .string(path))])
        }

        let vm = VZVirtualMachineConfiguration()

        let boot = VZLinuxBootLoader(kernelURL: URL(fileURLWithPath: config.kernel))
        if let initrd = config.initrd { boot.initialRamdiskURL = URL(fileURLWithPath: initrd) }
        boot.commandLine = config.cmdline
        vm.bootLoader = boot

        // Restoring saved state requires the identity the state was saved with.
        let platform = VZGenericPlatformConfiguration()
        platform.machineIdentifier = identifier
        vm.platform = platform

        let cpus = VZVirtualMachineConfiguration.minimumAllowedCPUCount...VZVirtualMachineConfiguration.maximumAllowedCPUCount
        guard cpus.contains(config.cpus) else {
            throw HelperError(.invalid, "cpus \(config.cpus) is outside what this Mac allows (\(cpus.lowerBound)...\(cpus.upperBound))")
        }
        vm.cpuCount = config.cpus
        let memory = UInt64(config.memoryMB) * 1024 * 1024
        let memoryRange = VZVirtualMachineConfiguration.minimumAllowedMemorySize...VZVirtualMachineConfiguration.maximumAllowedMemorySize
        guard memoryRange.contains(memory) else {
            throw HelperError(.invalid, "memory_mb \(config.memoryMB) is outside what this Mac allows "
                + "(\(memoryRange.lowerBound >> 20)...\(memoryRange.upperBound >> 20) MiB)")
        }
        vm.memorySize = memory

        // The disk is this sandbox's private copy (an APFS clone), thrown away or kept as a
        // checkpoint by the host; host-side flushes buy nothing a guest `sync` does not.
        let disk: VZDiskImageStorageDeviceAttachment
        do {
            disk = try VZDiskImageStorageDeviceAttachment(url: URL(fileURLWithPath: config.disk), readOnly: false,
                                                          cachingMode: .automatic, synchronizationMode: .none)
        } catch {
            throw HelperError(.invalid, "disk \(config.disk) cannot be attached: \(error.localizedDescription)")
        }
        vm.storageDevices = [VZVirtioBlockDeviceConfiguration(attachment: disk)]

        // The guest console is hvc0; nothing is ever typed into it.
        let console = VZVirtioConsoleDeviceSerialPortConfiguration()
        console.attachment = VZFileHandleSerialPortAttachment(fileHandleForReading: nil,
                                                              fileHandleForWriting: consoleOutput)
        vm.serialPorts = [console]

        vm.entropyDevices = [VZVirtioEntropyDeviceConfiguration()]
        vm.socketDevices = [VZVirtioSocketDeviceConfiguration()]

        switch config.network {
        case .none:
            vm.networkDevices = []
        case .nat:
            let nic = VZVirtioNetworkDeviceConfiguration()
            nic.attachment = VZNATNetworkDeviceAttachment()
            nic.macAddress = VZMACAddress.randomLocallyAdministered()
            vm.networkDevices = [nic]
        }

        do {
            try vm.validate()
        } catch {
            throw HelperError(.invalid, "Virtualization.framework refused the configuration: \(error.localizedDescription)")
        }
        return vm
    }
}
#endif
