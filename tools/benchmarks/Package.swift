// swift-tools-version:6.1
// Micro-benchmarks of the kernels and plans (ordo-one/benchmark). Run from the repository root:
//   make microbench      (= cd tools/benchmarks && swift package --disable-sandbox benchmark)
import PackageDescription

let package = Package(
    name: "edge-agent-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        // A symlink to the repository root, so the package identity is "edge-agent" whatever the clone is called.
        .package(path: "edge-agent"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "KernelBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "EdgeEngine", package: "edge-agent"),
            ],
            path: "Benchmarks/KernelBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
