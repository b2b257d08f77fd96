// shuru-helper: parse the arguments, pick the driver, serve one client, exit with it.
//
//   shuru-helper --socket PATH [--driver vz|process] [--accept-timeout SECONDS]
//
// Prints "ready" on stdout once it listens on PATH, so the owner connects without polling.
import Dispatch
import ShuruHelperCore
import ShuruVZ
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

let usage = "usage: shuru-helper --socket PATH [--driver vz|process] [--accept-timeout SECONDS]"

func fail(_ message: String, status: Int32 = 2) -> Never {
    logLine(message)
    exit(status)
}

struct Options {
    var socket: String?
    var driver = VZAvailability.isBuiltIn ? "vz" : "process"
    var acceptTimeout = 30.0

    init(_ args: ArraySlice<String>) {
        var rest = args
        while let arg = rest.popFirst() {
            switch arg {
            case "--version":
                print("shuru-helper \(HelperProtocol.helperVersion) (protocol \(HelperProtocol.version))")
                exit(0)
            case "-h", "--help":
                print(usage)
                exit(0)
            case "--socket", "--driver", "--accept-timeout":
                guard let value = rest.popFirst() else { fail("\(arg) needs a value\n\(usage)") }
                if arg == "--socket" { socket = value }
                if arg == "--driver" { driver = value }
                if arg == "--accept-timeout" {
                    guard let seconds = Double(value), seconds > 0 else { fail("bad --accept-timeout \(value)") }
                    acceptTimeout = seconds
                }
            default:
                fail("unknown argument \(arg)\n\(usage)")
            }
        }
    }
}

func makeDriver(_ name: String) -> MachineDriver {
    switch name {
    case "process":
        return ProcessDriver()
    case "vz":
        guard let driver = VZAvailability.makeDriver() else {
            fail("the vz driver needs macOS 13 or later with Virtualization.framework; "
                + "this build has none (use --driver process for tests)")
        }
        return driver
    default:
        fail("unknown driver \(name); known: vz, process")
    }
}

let options = Options(CommandLine.arguments.dropFirst())
guard let socketPath = options.socket else { fail("--socket is required\n\(usage)") }
// Writes to a vanished peer are error returns; the helper must never die of SIGPIPE.
signal(SIGPIPE, SIG_IGN)

let server = Server(socketPath: socketPath, driver: makeDriver(options.driver),
                    acceptTimeout: options.acceptTimeout)
do {
    try server.listen()
} catch {
    fail("cannot listen on \(socketPath): \(error)", status: 1)
}
print("ready")
fflush(stdout)

// SIGTERM / SIGINT stop the VM cleanly before exiting.
var signalSources: [DispatchSourceSignal] = []
for sig in [SIGTERM, SIGINT] {
    signal(sig, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: sig, queue: .main)
    source.setEventHandler { server.terminate(status: 128 + sig) }
    source.resume()
    signalSources.append(source)
}

server.serve { status in exit(status) }
dispatchMain()
