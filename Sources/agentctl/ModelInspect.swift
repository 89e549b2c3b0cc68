import ArgumentParser
import Foundation
import Inference
import ModelFile
import Tensor

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Layers, shapes, parameters, bytes and FLOPs of a model file (validates it fully).",
        discussion: """
            Batch normalisation layers are shown folded into the layer before them, as the agent
            runs them. FLOPs count 2 per multiply-accumulate plus one per element of the other layers.

            Example:
              agentctl model inspect mlp.safetensors
            """
    )

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
    }

    func run() throws {
        try reportingErrors {
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
            let out = Output(file: file, fileBytes: model.fileSize, name: network.name, version: network.version,
                             input: network.inputShape, preprocessing: preText, labels: network.labels, layers: layers,
                             parameters: network.parameterCount, weightBytes: network.weightBytes,
                             flopsPerSample: layers.reduce(0) { $0 + $1.flops }, trainable: network.trainable,
                             quantization: loaded.quantized.map { "\($0.precisionName), \($0.spec.method.rawValue) calibration on \($0.spec.calibrationRows) rows" },
                             adaptiveThreshold: loaded.quantized?.spec.adaptive?.threshold,
                             memoryBatch1: try loaded.plan(batch: 1, precision: nil).memory,
                             memoryBatch64: try loaded.plan(batch: 64, precision: nil).memory)
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
        }
    }
}
