import ArgumentParser
import Foundation
import Inference
import ModelFile
import Quantization
import Serving
import Tensor

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Layers, shapes, parameters, bytes and FLOPs of a model file (validates it fully).",
        discussion: """
            Batch normalisation layers are shown folded into the layer before them, as the agent
            runs them. FLOPs count 2 per multiply-accumulate plus one per element of the other layers.

            "model memory" is what agentd holds for the model with --workers plans of --batch
            samples (its serving.workers and max_batch_size): the file as read (the FP32 weights
            point into it), the INT8/INT4 weights decoded from the quantization section, the
            packed weights every plan shares, and each plan's buffers. agentd's status reports the
            same figure as model_memory. --measure loads the model that way in this process, runs
            every plan once, and prints the growth of the resident set beside the figure.

            Examples:
              agentctl model inspect mlp.safetensors
              agentctl model inspect mlp-int8.safetensors --measure --workers 2 --batch 64
            """
    )

    @Flag(help: "Load the model as agentd does, run each plan once, and print the measured growth of this process's resident memory beside the estimate.")
    var measure = false

    @Option(help: "Plans (agentd's workers) for the model memory figure.")
    var workers = 2

    @Option(help: "Batch capacity of each plan for the model memory figure.")
    var batch = 64

    @Argument(help: ArgumentHelp("The model file.", valueName: "FILE"))
    var file: String

    @Flag(help: "Print the result as JSON.")
    var json = false

    struct LayerInfo: Codable {
        var index: Int
        var op: String
        var input: [Int]
        var output: [Int]
        var parameters: Int
        var bytes: Int
        var flops: Int
        var tensors: [String]
        var precision: String
    }

    struct Output: Codable {
        var file: String
        var fileBytes: Int
        var name: String
        var version: Int
        var input: [Int]
        var preprocessing: String
        var labels: [String]
        var layers: [LayerInfo]
        var parameters: Int
        var weightBytes: Int
        var flopsPerSample: Int
        var trainable: [String]?
        var quantization: String?
        var adaptiveThreshold: Float?
        var memoryBatch1: MemoryEstimate
        var memoryBatch64: MemoryEstimate
        /// What the plan at batch 64 runs, step by step, and its INT8 and INT4 kernels on this CPU.
        var steps: [String]
        var kernels: [String]
        var modelMemory: ModelMemory
        var modelMemoryBytes: Int
        /// With --measure: the resident set's growth while the model was loaded and its plans ran.
        var measuredBytes: Int?
    }

    func validate() throws {
        guard (1...256).contains(workers) else { throw ValidationError("--workers must be 1 to 256 (got \(workers))") }
        guard (1...4096).contains(batch) else { throw ValidationError("--batch must be 1 to 4096 (got \(batch))") }
    }

    /// Loads the file as agentd does and builds `workers` plans of `batch` samples.
    static func serve(_ path: String, workers: Int, batch: Int) throws -> (ServingModel, [InferencePlan]) {
        let file = try ModelFile.load(path: path)
        let network = Network(model: file)
        let model = ServingModel(version: 1, network: network, quantized: try QuantizedModel.load(file, network: network),
                                 fileBytes: network.heldBytes(readFrom: file))
        return (model, (0..<workers).map { _ in model.makePlan(batch: batch) })
    }

    /// Resident bytes after handing freed heap back.
    static func residentBytes() -> Int {
        ProcessMemory.mallocTrim()
        return ProcessMemory.residentBytes()
    }

    /// The growth of the resident set while the model is loaded and each plan runs `batch` rows
    /// once. A first load, run and release comes before: what any model's first use brings in
    /// once per process (code pages, the BLAS library's buffers) is not the model's.
    static func measureGrowth(_ path: String, workers: Int, batch: Int) throws -> (Int, ModelMemory) {
        func loadAndRun() throws -> (ServingModel, [InferencePlan]) {
            let (model, plans) = try serve(path, workers: workers, batch: batch)
            let rows = [Float](repeating: 0.5, count: batch * model.inputCount)
            for plan in plans { rows.withUnsafeBufferPointer { _ = plan.run($0.baseAddress!, batch: batch) } }
            return (model, plans)
        }
        do { _ = try loadAndRun() }
        let before = residentBytes()
        let (model, plans) = try loadAndRun()
        let grown = residentBytes() - before
        let memory = model.memory(plans: workers, batch: batch)
        withExtendedLifetime((model, plans)) {}
        return (grown, memory)
    }

    func run() throws {
        try reportingErrors {
            // Measured first, before this process holds anything else of the model.
            let measured = measure ? try Self.measureGrowth(file, workers: workers, batch: batch) : nil
            let modelMemory = try measured?.1 ?? Self.serve(file, workers: 0, batch: batch).0.memory(plans: workers, batch: batch)
            let loaded = try LoadedModel(path: file)
            let model = loaded.file
            let network = loaded.network
            let layers = network.layers.enumerated().map { i, l in
                let p = loaded.quantized?.spec.precision(ofLayer: i)
                let entry = loaded.quantized?.spec.layers.first { $0.layer == i }
                let bytes: Int = switch p {
                case .int8: l.parameterCount - (l.bias?.count ?? 0) + 4 * (l.bias?.count ?? 0) + 4 * (l.weight?.shape[0] ?? 0)
                case .int4: (l.weight?.count ?? 0) / 2 + 4 * (loaded.quantized?.int4[i]?.scales.count ?? 0) + 4 * (l.bias?.count ?? 0)
                default: l.parameterCount * 4
                }
                return LayerInfo(index: i, op: l.name, input: l.inputShape, output: l.outputShape, parameters: l.parameterCount,
                                 bytes: bytes, flops: l.flops,
                                 tensors: [l.weightName, l.biasName, entry?.weight, entry?.weightScale].compactMap { $0 },
                                 precision: l.weight == nil ? (loaded.quantized == nil ? "fp32" : "-") : (p ?? .fp32).rawValue)
            }
            let pre = network.preprocessing
            let preText = pre.scales != nil ? "(x - mean) / std" : "x * \(pre.scale) + \(pre.shift)"
            let plan64 = try loaded.plan(batch: 64, precision: nil)
            var kernels = [String]()
            if let q = plan64 as? QuantizedPlan {
                kernels = q.int8Kernels
                if q.stepNames.contains(where: { $0.hasPrefix("int4") }) { kernels.append(KernelISA.best.int4Kernel) }
            }
            let out = Output(file: file, fileBytes: model.fileSize, name: network.name, version: network.version,
                             input: network.inputShape, preprocessing: preText, labels: network.labels, layers: layers,
                             parameters: network.parameterCount, weightBytes: network.weightBytes,
                             flopsPerSample: layers.reduce(0) { $0 + $1.flops }, trainable: network.trainable,
                             quantization: loaded.quantized.map { "\($0.precisionName), \($0.spec.method.rawValue) calibration on \($0.spec.calibrationRows) rows" },
                             adaptiveThreshold: loaded.quantized?.spec.adaptive?.threshold,
                             memoryBatch1: try loaded.plan(batch: 1, precision: nil).memory,
                             memoryBatch64: plan64.memory, steps: plan64.stepNames, kernels: kernels,
                             modelMemory: modelMemory, modelMemoryBytes: modelMemory.total, measuredBytes: measured?.0)
            if json { printJSON(out); return }
            print("\(file): \(out.name) v\(out.version), \(out.fileBytes) bytes")
            print("input \(formatShape(out.input)), preprocessing \(preText), \(out.labels.count) classes: \(out.labels.prefix(16).joined(separator: " "))")
            if let t = out.trainable { print("trainable: \(t.joined(separator: ", "))") }
            if let q = out.quantization { print("quantized: \(q)" + (out.adaptiveThreshold.map { ", adaptive threshold \($0)" } ?? "")) }
            print("")
            let rows = layers.map { l in
                ["\(l.index)", l.op, formatShape(l.input), formatShape(l.output), "\(l.parameters)", "\(l.bytes)", "\(l.flops)", l.precision]
            }
            print(table(["#", "op", "input", "output", "params", "bytes", "flops", "precision"], rows, rightAligned: [0, 4, 5, 6]))
            print("\ntotal: \(out.parameters) parameters, \(out.weightBytes) FP32 weight bytes, \(out.flopsPerSample) FLOPs per sample")
            print("plan memory: batch 1 \(out.memoryBatch1.total) bytes, batch 64 \(out.memoryBatch64.total) bytes (weights + workspace + activations)")
            print("plan steps: \(out.steps.joined(separator: ", "))" + (kernels.isEmpty ? "" : "; kernels: \(kernels.joined(separator: ", "))"))
            let m = out.modelMemory
            print("model memory with \(workers) plans of \(batch): \(m.total) bytes (file \(m.file), decoded integer weights \(m.decoded), "
                  + "packed weights \(m.packed), buffers \(m.planBuffers) a plan)")
            if let grown = out.measuredBytes {
                let ratio = grown > 0 ? Double(m.total) / Double(grown) : 0
                print("measured: resident memory grew \(grown) bytes loading it and running each plan (estimate / measured \(String(format: "%.3f", ratio)))")
            }
        }
    }
}
