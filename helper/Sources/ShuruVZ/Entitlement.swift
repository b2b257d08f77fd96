/// Whether the running helper carries an entitlement. Virtualization.framework refuses to run
/// a VM for a process without `com.apple.security.virtualization`, and says so only vaguely
/// at start; checking up front turns an unsigned helper into a clear `EENTITLEMENT` error
/// that tells the user the codesign command.
#if canImport(Virtualization)
import Foundation
import Security

enum Entitlement {
    static let virtualization = "com.apple.security.virtualization"

    static func granted(_ name: String) -> Bool {
        guard let task = SecTaskCreateFromSelf(nil) else { return false }
        let value = SecTaskCopyValueForEntitlement(task, name as CFString, nil)
        return (value as? Bool) ?? false
    }

    /// The path of the running executable, for messages.
    static var executablePath: String {
        Bundle.main.executablePath ?? CommandLine.arguments.first ?? "shuru-helper"
    }
}
#endif
