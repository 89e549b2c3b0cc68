// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "edge-agent",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "agentctl", targets: ["agentctl"]),
        .executable(name: "agentd", targets: ["agentd"]),
        // The numeric engine as a library, for tools/benchmarks.
        .library(name: "EdgeEngine", targets: ["Tensor", "ModelFile", "Inference", "Training", "Quantization", "Drift", "Learning", "ONNXImport"]),
        // The API bodies and the config reader on their own, for the fuzzers in tools/fuzz.
        .library(name: "AgentAPI", targets: ["AgentAPI"]),
        .library(name: "AgentConfig", targets: ["AgentConfig"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .systemLibrary(
            name: "CMosquitto",
            pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"])]
        ),
        // C micro-kernels for instructions Swift cannot select per function (AVX-512, AVX2, VNNI, NEON dot).
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "Tensor", dependencies: ["CBLAS", "CKernels"]),
        .target(name: "ModelFile", dependencies: ["Tensor"]),
        .target(name: "Inference", dependencies: ["CKernels", "Tensor", "ModelFile"]),
        .target(name: "Training", dependencies: ["Inference"]),
        .target(name: "Quantization", dependencies: ["CKernels", "Tensor", "ModelFile", "Inference", "Training"]),
        .target(name: "Serving", dependencies: ["Inference", "Quantization"]),
        .target(name: "Drift", dependencies: ["Tensor", "ModelFile", "Inference"]),
        .target(name: "Learning", dependencies: ["Tensor", "Inference", "Training", "Quantization"]),
        // ONNX models into the agent's model file; the protobuf code is generated from proto/ and committed.
        .target(name: "ONNXImport", dependencies: ["ModelFile", "Tensor", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                exclude: ["proto"]),
        // MQTT client (libmosquitto), topics, payloads, signed deployments: no agent types.
        .target(name: "Fleet", dependencies: ["CMosquitto", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "Store", dependencies: ["ModelFile", .product(name: "GRDB", package: "GRDB.swift")]),
        // Codable API types and the Unix-socket client: Foundation only, so any tool can link it.
        .target(name: "AgentAPI"),
        .target(name: "AgentConfig", dependencies: [.product(name: "TOMLKit", package: "TOMLKit")]),
        .target(
            name: "AgentCore",
            dependencies: [
                "Tensor", "ModelFile", "Inference", "Quantization", "Training", "Serving", "Store", "Drift", "Learning", "AgentAPI", "AgentConfig", "Fleet",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "agentd",
            dependencies: [
                "AgentCore", "AgentConfig",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "agentctl",
            dependencies: [
                "CBLAS", "Tensor", "ModelFile", "Inference", "Training", "Quantization", "Drift", "Learning", "AgentAPI", "AgentConfig",
                "Fleet", "ONNXImport", "Serving", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"]),
        .testTarget(name: "ModelFileTests", dependencies: ["ModelFile"]),
        .testTarget(name: "InferenceTests", dependencies: ["Inference"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training"]),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization"]),
        .testTarget(name: "ServingTests", dependencies: ["Serving", "Training"]),
        .testTarget(name: "StoreTests", dependencies: ["Store"]),
        .testTarget(name: "LearningTests", dependencies: ["Learning", "Training", "Inference", "ModelFile", "Tensor"]),
        .testTarget(name: "DriftTests", dependencies: ["Drift", "Inference", "ModelFile", "Tensor"]),
        .testTarget(name: "ONNXImportTests", dependencies: ["ONNXImport", "ModelFile", "Inference", "Tensor"]),
        .testTarget(name: "FleetTests", dependencies: ["Fleet", .product(name: "Crypto", package: "swift-crypto")]),
        .testTarget(name: "AgentConfigTests", dependencies: ["AgentConfig"]),
        .testTarget(name: "AgentAPITests", dependencies: ["AgentAPI"]),
        .testTarget(name: "AgentCoreTests", dependencies: [
            "AgentCore", "AgentAPI",
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
        ]),
        // Runs the built agentctl and agentd binaries; raw HTTP through AgentAPI's socket client only.
        .testTarget(name: "AgentctlTests", dependencies: ["AgentAPI", "Fleet", .product(name: "Crypto", package: "swift-crypto")]),
    ]
)
