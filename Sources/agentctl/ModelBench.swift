import ArgumentParser
import CBLAS
import Foundation
import Inference
import ModelFile
import Quantization
import Tensor

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Latency and throughput of a model file per batch size, after warm-up.",
        discussion: """
            For each batch size the plan is built once, warmed up, then called repeatedly for about
            --seconds; the median latency per call and samples per second are reported. Inputs are
            seeded random values. Single-threaded unless --threads says otherwise.

            Example:
              agentctl model bench mlp.safetensors --batch 1,8,64 --json
            """
    )

    @Argument(help: ArgumentHelp("The model file.", valueName: "FILE"))
    var file: String

    @Option(help: ArgumentHelp("Comma-separated batch sizes.", valueName: "SIZES"))
    var batch: String = "1,8,64"

    @Option(help: "Threads for the BLAS kernels.")
    var threads: Int = 1

    @Option(help: "Time to measure per batch size, in seconds.")
    var seconds: Double = 1

    @Option(help: "Run as fp32 or int8 (default: the file's own precision, without adaptive re-runs).")
    var precision: PrecisionChoice?

    @Flag(help: "One JSON object per batch size: batch, latency_us, samples_per_s, precision.")
    var json = false

    struct Result: Codable {
        var batch: Int
        var latency_us: Double
        var samples_per_s: Double
        var calls: Int
        var precision: String
        /// The kernel path (best here, or forced by EDGE_ISA) and the INT8 and INT4 kernels it runs, named as they are:
        /// for INT8, the kernels this plan's INT8 layers run (their weights choose on AVX2), or for a
        /// plan without INT8 layers the one this path runs for 8-bit weights.
        var isa: String = KernelISA.best.rawValue
        var int8_kernel: String = KernelISA.best.int8Kernel
        var int4_kernel: String = KernelISA.best.int4Kernel
    }

    func run() throws {
        try reportingErrors {
            let sizes = try batch.split(separator: ",").map { part -> Int in
                guard let n = Int(part.trimmingCharacters(in: .whitespaces)), n >= 1, n <= 65536 else {
                    throw ValidationError("--batch: '\(part)' is not a batch size between 1 and 65536")
                }
                return n
            }
            guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
            let loaded = try LoadedModel(path: file)
            let network = loaded.network
            openblas_set_num_threads(Int32(threads))
            // As training does: the timing loop runs with denormals flushed, in its own scope.
            let results: [Result] = try BLAS.withDenormalsFlushedToZero {
                var rng = SeededGenerator(seed: 7)
                var results: [Result] = []
                for b in sizes {
                    let plan = try loaded.plan(batch: b, precision: precision, adaptive: false)
                    let input = (0..<(b * network.inputCount)).map { _ in rng.nextUnitFloat() * 16 }
                    let (median, calls) = medianLatency(plan, input: input, batch: b, seconds: seconds, warmUp: 20, minimumCalls: 20)
                    var r = Result(batch: b, latency_us: median, samples_per_s: Double(b) / median * 1e6, calls: calls,
                                   precision: plan.precision)
                    // What this plan's INT8 layers run: the weights choose between the AVX2 kernels.
                    if let q = plan as? QuantizedPlan, !q.int8Kernels.isEmpty { r.int8_kernel = q.int8Kernels.joined(separator: " + ") }
                    results.append(r)
                    if json { printJSON(r, pretty: false) }
                }
                return results
            }
            if !json {
                print("\(network.name) v\(network.version), \(results.first?.precision ?? "fp32"), kernels \(KernelISA.best.rawValue) " +
                      "(INT8: \(results.first?.int8_kernel ?? KernelISA.best.int8Kernel); INT4: \(KernelISA.best.int4Kernel)), \(threads) thread\(threads == 1 ? "" : "s")")
                print(table(["batch", "latency (us)", "samples/s"],
                            results.map { ["\($0.batch)", String(format: "%.2f", $0.latency_us), String(format: "%.0f", $0.samples_per_s)] },
                            rightAligned: [0, 1, 2]))
            }
        }
    }
}
