import ArgumentParser
import Foundation
import ModelFile
import ONNXImport

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Convert an ONNX classifier into a model file the agent serves, quantizes and trains.",
        discussion: """
            The graph must be a chain of these ONNX operators, each reading the one
            before (a classifier as PyTorch, Keras or skl2onnx exports it):
              Gemm; MatMul and the Add of its bias       dense
              Conv (group 1, no dilation, even padding)  conv2d
              Relu, Clip(0), Clip(0, 6), LeakyRelu       relu, relu6, leakyrelu
              MaxPool, AveragePool (no padding)          maxpool2d, avgpool2d
              GlobalAveragePool                          globalavgpool
              Flatten, the Reshape that flattens         flatten
              BatchNormalization after Conv or Gemm      batchnorm (folded)
              Softmax over the classes, last             softmax
              leading Mul/Add/Sub/Div by constants       input scale, offset
              Identity, Dropout, Cast to float, Constant nothing
            Anything else stops the import with one line naming the node, its op
            and why, and nothing is written. The input is float [N, features] or
            [N, C, H, W] with a free batch dimension; the weights must be inside
            the .onnx file. The converted model passes the loader's validation
            before it is written.

            With several graph outputs (skl2onnx gives 'label' and
            'probabilities'), the only float one is imported, or the one --output
            names; the nodes it does not need are left out.

            Example:
              agentctl model import mnist.onnx --out mnist.safetensors --labels 0,1,2,3,4,5,6,7,8,9
              agentctl model predict mnist.safetensors --data rows.csv
            """
    )

    @Argument(help: ArgumentHelp("The ONNX model.", valueName: "MODEL.onnx")) var input: String
    @Option(help: ArgumentHelp("Where to write the model file.", valueName: "FILE")) var out: String
    @Option(help: ArgumentHelp("Class labels, comma-separated, one per output (default 0, 1, ...).", valueName: "A,B,...")) var labels: String?
    @Option(help: "The model's name in the manifest (default: the ONNX file's name).") var name: String?
    @Option(help: ArgumentHelp("The graph output to import (default: the only output, or the only float one).", valueName: "NAME")) var output: String?
    @Flag(help: "Print the report as JSON.") var json = false

    struct Report: Codable {
        var file: String
        var out: String
        var name: String
        var producer: String
        var opset: Int
        var irVersion: Int
        var input: [Int]
        var layers: [String]
        var parameters: Int
        var steps: [ONNXImporter.Step]
        var output: String
        var unusedNodes: Int
    }

    func run() throws {
        try reportingErrors {
            let labelList = labels.map { $0.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmingCharacters(in: .whitespaces) } }
            if let labelList, labelList.contains(where: \.isEmpty) {
                throw ValidationError("--labels has an empty label")
            }
            if let labelList, Set(labelList).count != labelList.count {
                throw ValidationError("--labels names a label twice")
            }
            let result = try ONNXImporter.load(path: input, name: name, labels: labelList, output: output)
            try ModelWriter.write(manifest: result.manifest, tensors: result.tensors, to: out)
            let parameters = result.tensors.filter { !$0.name.hasPrefix("input.") }.reduce(0) { $0 + $1.shape.reduce(1, *) }
            let report = Report(file: input, out: out, name: result.manifest.name, producer: result.producer, opset: result.opset,
                                irVersion: result.irVersion, input: result.manifest.input.shape,
                                layers: result.manifest.layers.map(\.op), parameters: parameters, steps: result.steps,
                                output: result.output, unusedNodes: result.unusedNodes)
            if json {
                printJSON(report)
                return
            }
            print("imported \(input) (\(result.producer.isEmpty ? "unknown producer" : result.producer), opset \(result.opset)) -> \(out)")
            print(table(["node", "op", "becomes"], result.steps.map { [$0.node, $0.opType, $0.becomes] }))
            print("input \(result.manifest.input.shape), output '\(result.output)', \(result.manifest.layers.count) layers, \(parameters) parameters")
            if result.unusedNodes > 0 {
                print("\(result.unusedNodes) nodes left out: output '\(result.output)' does not depend on them")
            }
        }
    }
}
