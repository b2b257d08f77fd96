// swift-tools-version:5.9
// The macOS helper that owns Virtualization.framework for shuru, and everything around it that
// builds and tests on Linux too. No outside packages: none can be fetched where this builds.
//
//   ShuruWire        msgpack codec and length-prefixed frames (pure, no Foundation)
//   ShuruHelperCore  Unix-socket server, helper protocol, VM state machine, the
//                    `VirtualMachine` protocol, SCM_RIGHTS fd passing, the process test driver
//   ShuruVZ          the Virtualization.framework driver (empty unless Virtualization exists)
//   shuru-helper     the executable: argument parsing and wiring, nothing else
import PackageDescription

let package = Package(
    name: "shuru-helper",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "shuru-helper", targets: ["shuru-helper"]),
        .library(name: "ShuruWire", targets: ["ShuruWire"]),
        .library(name: "ShuruHelperCore", targets: ["ShuruHelperCore"]),
    ],
    targets: [
        .target(name: "ShuruWire"),
        .target(name: "ShuruHelperCore", dependencies: ["ShuruWire"]),
        .target(name: "ShuruVZ", dependencies: ["ShuruHelperCore", "ShuruWire"]),
        .executableTarget(name: "shuru-helper", dependencies: ["ShuruHelperCore", "ShuruVZ"]),
        .testTarget(name: "ShuruHelperTests", dependencies: ["ShuruWire", "ShuruHelperCore"]),
    ]
)
