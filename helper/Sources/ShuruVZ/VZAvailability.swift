/// Whether this build has the Virtualization.framework driver, and a way to make it that
/// compiles everywhere: on Linux (and any build without Virtualization) this module holds
/// only this file, and the executable reports that `--driver vz` is unavailable.
import ShuruHelperCore

public enum VZAvailability {
    public static var isBuiltIn: Bool {
        #if canImport(Virtualization)
        return true
        #else
        return false
        #endif
    }

    /// The VZ driver, or nil when this build or this OS has none.
    public static func makeDriver() -> MachineDriver? {
        #if canImport(Virtualization)
        return VZDriver()
        #else
        return nil
        #endif
    }
}
