// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "edge-agent",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "agentctl", targets: ["agentctl"]),
        // The numeric engine as a library, for tools/benchmarks.
        .library(name: "EdgeEngine", targets: ["Tensor", "ModelFile", "Inference", "Training", "Quantization"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // C micro-kernels for instructions Swift cannot select per function (AVX-512, AVX2, VNNI, NEON dot).
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "Tensor", dependencies: ["CBLAS", "CKernels"]),
        .target(name: "ModelFile", dependencies: ["Tensor"]),
        .target(name: "Inference", dependencies: ["CKernels", "Tensor", "ModelFile"]),
        .target(name: "Training", dependencies: ["Inference"]),
        .target(name: "Quantization", dependencies: ["CKernels", "Tensor", "ModelFile", "Inference", "Training"]),
        .executableTarget(
            name: "agentctl",
            dependencies: [
                "CBLAS", "Tensor", "ModelFile", "Inference", "Training", "Quantization",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"]),
        .testTarget(name: "ModelFileTests", dependencies: ["ModelFile"]),
        .testTarget(name: "InferenceTests", dependencies: ["Inference"]),
        .testTarget(name: "TrainingTests", dependencies: ["Training"]),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization"]),
        // Runs the built agentctl binary; depends on nothing so it tests only what users see.
        .testTarget(name: "AgentctlTests"),
    ]
)
