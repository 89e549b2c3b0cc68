import Benchmark
import Drift
import Inference
import Quantization
import Tensor
import Training

/// 256×256×256 GEMMs per kernel path, and whole plans, with allocation counts (which must be 0
/// per iteration for the plans' `run`).
let benchmarks: @Sendable () -> Void = {
    let n = 256
    var rng = SeededGenerator(seed: 1)
    let x8 = (0..<(n * n)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    let w8 = (0..<(n * n)).map { _ in Int8(Int(rng.next() % 255) - 127) }
    let epilogue = QuantizedEpilogue(outputs: n)
    for o in 0..<n { epilogue.scale[o] = 0.001 }
    let y8 = UnsafeMutablePointer<UInt8>.allocate(capacity: n * n)

    let config = Benchmark.Configuration(metrics: [.wallClock, .throughput, .mallocCountTotal, .cpuTotal],
                                         maxDuration: .seconds(2), maxIterations: 100_000)

    for isa in KernelISA.allCases where isa != .auto && isa.isSupported {
        // 16.8 M multiply-accumulates per iteration: MACs per cycle = 16_777_216 / (seconds × clock).
        // Packed for the path it runs on (AVX2 widens the weights to INT16 k-pairs at pack time).
        let packed8 = w8.withUnsafeBufferPointer { PackedInt8Weights(weight: $0.baseAddress!, outputs: n, inputs: n, isa: isa) }
        Benchmark("int8 gemm 256x256x256 \(isa.rawValue) (\(isa.int8Kernel))", configuration: config) { benchmark in
            x8.withUnsafeBufferPointer { x in
                for _ in benchmark.scaledIterations {
                    packed8.multiply(rows: n, x.baseAddress!, ldx: n, epilogue: epilogue, output: .uint8(y8), ldy: n)
                }
            }
        }
        Benchmark("int8 gemv 1x256x256 \(isa.rawValue) (\(isa.int8Kernel))", configuration: config) { benchmark in
            x8.withUnsafeBufferPointer { x in
                for _ in benchmark.scaledIterations {
                    packed8.multiply(rows: 1, x.baseAddress!, ldx: n, epilogue: epilogue, output: .uint8(y8), ldy: n)
                }
            }
        }
    }

    let xf = (0..<(n * n)).map { _ in rng.nextFloat(limit: 1) }
    let wf = (0..<(n * n)).map { _ in rng.nextFloat(limit: 1) }
    let packedF = wf.withUnsafeBufferPointer { PackedWeights(weight: $0.baseAddress!, bias: nil, outputs: n, inputs: n) }
    let yf = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
    for isa in [KernelISA.portable, .avx2, .avx512] where isa.isSupported {
        Benchmark("fp32 gemm 256x256x256 \(isa.rawValue)", configuration: config) { benchmark in
            xf.withUnsafeBufferPointer { x in
                for _ in benchmark.scaledIterations {
                    packedF.multiply(rows: n, x.baseAddress!, ldx: n, yf, ldy: n, isa: isa)
                }
            }
        }
    }

    // INT4, group 32, widened a panel at a time: integer W4A8 on AVX-512 VNNI and W4A16 on AVX2, weight-only FP32 on the portable path.
    let q4 = (0..<(n * n)).map { _ in Int8(Int(rng.next() % 16) - 8) }
    let s4 = (0..<(n * n / 32)).map { _ in rng.nextUnitFloat() / 8 }
    for isa in [KernelISA.portable, .avx2, .avx512vnni] where isa.isSupported {
        let packed4 = PackedInt4Weights(q: q4, scales: s4, bias: nil, outputs: n, inputs: n, group: 32, isa: isa)
        let scratch4 = UnsafeMutablePointer<Float>.allocate(capacity: packed4.scratchFloats)
        Benchmark("int4 gemm 256x256x256 \(isa.rawValue) (\(isa.int4Kernel))", configuration: config) { benchmark in
            xf.withUnsafeBufferPointer { x in
                for _ in benchmark.scaledIterations {
                    packed4.multiply(rows: n, x.baseAddress!, ldx: n, yf, ldy: n, activation: .none, scratch: scratch4)
                }
            }
        }
    }

    // Whole plans on the digits MLP shape (random weights): run() must not allocate.
    let net = try! Architecture.build("mlp:64-256-256-10", seed: 1, preprocessing: Preprocessing(scale: 1.0 / 16, shift: 0))
    let rows = DataSet(features: (0..<(256 * 64)).map { _ in Float(rng.next() % 17) }, featureCount: 64, labels: nil, classNames: [])
    let params = Quantizer.activationParams(Quantizer.histograms(net, rows), network: net, method: .kl)
    let int8 = Quantizer.build(net, activations: params, precisions: [0: .int8, 2: .int8, 4: .int8], method: .kl, calibrationRows: 256)
    for batch in [1, 64] {
        let fp32Plan = ExecutionPlan(network: net, batchCapacity: batch)
        let int8Plan = QuantizedPlan(model: int8, batchCapacity: batch)
        for (name, plan) in [("fp32", fp32Plan as InferencePlan), ("int8", int8Plan as InferencePlan)] {
            Benchmark("mlp 64-256-256-10 \(name) batch \(batch)", configuration: config) { benchmark in
                rows.features.withUnsafeBufferPointer { x in
                    for _ in benchmark.scaledIterations { blackHole(plan.run(x.baseAddress!, batch: batch)) }
                }
            }
        }
    }

    // Drift: one sample through the monitor's per-sample work — bin 64 input features, the
    // predicted class, the confidence and 8 embedding values, then update five sliding windows
    // and the state (the target: at most 1 µs on one core, no allocation).
    let driftRows = 2_000
    var values: [SignalSource: [Float]] = [:]
    values[.input] = (0..<(driftRows * 64)).map { _ in Float(rng.next() % 17) }
    values[.output] = (0..<driftRows).map { _ in Float(rng.next() % 10) }
    values[.confidence] = (0..<driftRows).map { _ in 0.5 + rng.nextFloat(limit: 0.5) }
    values[.embedding] = (0..<(driftRows * 8)).map { _ in rng.nextGaussian() }
    var options = DriftCalibration.Options()
    options.falseAlarmRun = 500
    let reference = try! DriftCalibration.build(values: values, rows: driftRows, classes: 10, scoresAreProbabilities: true,
                                                embeddingLayer: 2, directions: Tensor(zeros: [8, 256]), options: options).reference
    let detector = DriftDetector(reference: reference, classes: 10, scoresAreProbabilities: true)
    // 256 different rows in turn: a repeated row would leave every window unchanged.
    let samples = (0..<(256 * 64)).map { _ in Float(rng.next() % 17) }
    let sampleScores = (0..<(256 * 10)).map { i in i % 10 == (i / 10) % 10 ? Float(0.91) : Float(0.01) }
    let embeddings = (0..<(256 * 8)).map { _ in rng.nextGaussian() }
    let binned = UnsafeMutablePointer<UInt8>.allocate(capacity: detector.binner.width)
    func driftBenchmark(_ name: String, observe: Bool) {
        Benchmark(name, configuration: config) { benchmark in
            samples.withUnsafeBufferPointer { x in
                sampleScores.withUnsafeBufferPointer { s in
                    embeddings.withUnsafeBufferPointer { e in
                        var r = 0
                        for _ in benchmark.scaledIterations {
                            detector.binner.bin(input: x.baseAddress! + r * 64, scores: s.baseAddress! + r * 10,
                                                embedding: e.baseAddress! + r * 8, into: binned)
                            if observe { blackHole(detector.observe(binned)) }
                            r = (r + 1) & 255
                        }
                    }
                }
            }
        }
    }
    driftBenchmark("drift bin only, 64 features", observe: false)
    driftBenchmark("drift sample 64 features, 5 signals", observe: true)

    // What an inference worker pays per batch of 64 rows: the copy into its staging ring and the
    // drain into the detectors (the monitor's lock is free here).
    var monitorSettings = DriftMonitor.Settings()
    monitorSettings.workers = 1
    let monitor = DriftMonitor(version: 1, network: net, fileReference: nil, settings: monitorSettings) { _ in }
    let monitorReference = try! DriftCalibration.build(
        values: values, rows: driftRows, classes: 10, scoresAreProbabilities: true, embeddingLayer: monitor.projection!.layer,
        directions: monitor.projection!.directions, options: options).reference
    let watched = DriftMonitor(version: 1, network: net, fileReference: monitorReference, settings: monitorSettings) { _ in }
    Benchmark("drift monitor observe, 64 rows of 64 features", configuration: config) { benchmark in
        samples.withUnsafeBufferPointer { x in
            sampleScores.withUnsafeBufferPointer { s in
                embeddings.withUnsafeBufferPointer { e in
                    var r = 0
                    for _ in benchmark.scaledIterations {
                        watched.observe(worker: 0, input: x.baseAddress! + r * 64, scores: s.baseAddress! + r * 10,
                                        embeddings: e.baseAddress! + r * 8, rows: 64)
                        r = (r + 64) & 255
                    }
                }
            }
        }
    }
}
