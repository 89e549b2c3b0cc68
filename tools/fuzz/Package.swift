// swift-tools-version:6.0
// libFuzzer targets (built with -sanitize=fuzzer,address by `make fuzz-build`; README, "Fuzzing").
// Each executable exports LLVMFuzzerTestOneInput and has no main: libFuzzer supplies it.
import PackageDescription

// No main of our own: libFuzzer's runtime provides the entry point.
let fuzzer: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "edge-agent-fuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        // A symlink to the repository root, so the package identity is "edge-agent" whatever the clone is called.
        .package(path: "edge-agent"),
    ],
    targets: [
        .executableTarget(name: "FuzzModel", dependencies: [.product(name: "EdgeEngine", package: "edge-agent")],
                          swiftSettings: fuzzer),
        .executableTarget(name: "FuzzONNX", dependencies: [.product(name: "EdgeEngine", package: "edge-agent")],
                          swiftSettings: fuzzer),
        .executableTarget(name: "FuzzInferCodec", dependencies: [.product(name: "AgentAPI", package: "edge-agent")],
                          swiftSettings: fuzzer),
        .executableTarget(name: "FuzzAPIBodies", dependencies: [.product(name: "AgentAPI", package: "edge-agent")],
                          swiftSettings: fuzzer),
        .executableTarget(name: "FuzzConfig", dependencies: [.product(name: "AgentConfig", package: "edge-agent")],
                          swiftSettings: fuzzer),
    ]
)
