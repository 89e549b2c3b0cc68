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
        var memoryBatch1: MemoryEstimate
        var memoryBatch64: MemoryEstimate
    }

    func run() throws {
        try reportingErrors {
            let model = try ModelFile.load(path: file)
            let network = Network(model: model)
            let layers = network.layers.enumerated().map { i, l in
                LayerInfo(index: i, op: l.name, input: l.inputShape, output: l.outputShape, parameters: l.parameterCount,
                          bytes: l.parameterCount * 4, flops: l.flops,
                          tensors: [l.weightName, l.biasName].compactMap { $0 }, precision: "fp32")
            }
            let pre = network.preprocessing
            let preText = pre.scales != nil ? "(x - mean) / std" : "x * \(pre.scale) + \(pre.shift)"
            let out = Output(file: file, fileBytes: model.fileSize, name: network.name, version: network.version,
                             input: network.inputShape, preprocessing: preText, labels: network.labels, layers: layers,
                             parameters: network.parameterCount, weightBytes: network.weightBytes,
                             flopsPerSample: layers.reduce(0) { $0 + $1.flops }, trainable: network.trainable,
                             memoryBatch1: ExecutionPlan.memoryEstimate(network: network, batch: 1),
                             memoryBatch64: ExecutionPlan.memoryEstimate(network: network, batch: 64))
            if json { printJSON(out); return }
            print("\(file): \(out.name) v\(out.version), \(out.fileBytes) bytes")
            print("input \(formatShape(out.input)), preprocessing \(preText), \(out.labels.count) classes: \(out.labels.prefix(16).joined(separator: " "))")
            if let t = out.trainable { print("trainable: \(t.joined(separator: ", "))") }
            print("")
            let rows = layers.map { l in
                ["\(l.index)", l.op, formatShape(l.input), formatShape(l.output), "\(l.parameters)", "\(l.bytes)", "\(l.flops)", l.precision]
            }
            print(table(["#", "op", "input", "output", "params", "bytes", "flops", "precision"], rows, rightAligned: [0, 4, 5, 6]))
            print("\ntotal: \(out.parameters) parameters, \(out.weightBytes) weight bytes, \(out.flopsPerSample) FLOPs per sample")
            print("plan memory: batch 1 \(out.memoryBatch1.total) bytes, batch 64 \(out.memoryBatch64.total) bytes (weights + workspace + activations)")
        }
    }
}
